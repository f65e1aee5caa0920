# torexit.hardening: the two commands a new operator needs are `make demo` and
# `make test`. Both install what they need (Debian packages, .venv, Docker daemon,
# local base images) and can be run again: caches make the second run fast.
SHELL := /bin/bash
PY := python3
VENV := .venv/bin
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.cache/collections
export PATH := $(CURDIR)/$(VENV):$(PATH)

.PHONY: test demo demo-full demo-clean bench setup lint sanity unit integration molecule docs build clean

## Everything that proves the collection works; ends with `summary: N passed, N failed`.
test:
	$(PY) scripts/run-tests.py

## Set-up only: Debian packages, .venv, Docker daemon, base images.
setup:
	bash scripts/bootstrap-host.sh
	bash scripts/venv.sh
	bash scripts/ensure-docker.sh
	bash scripts/build-images.sh

lint:
	$(PY) scripts/run-tests.py --only ruff --only ansible-lint
sanity:
	$(PY) scripts/run-tests.py --only sanity
unit:
	$(PY) scripts/run-tests.py --only unit
integration:
	$(PY) scripts/run-tests.py --only integration
## One scenario: make molecule-common
molecule-%:
	$(PY) scripts/run-tests.py --only molecule:$*

## Regenerate the README's variable tables from meta/argument_specs.yml.
docs: setup
	$(VENV)/python scripts/gen-docs.py

build: setup
	ansible-galaxy collection build --force --output-path results .

## Abuse lab: namespaces, scenarios, guard vs. seed rules; writes results/bench/.
bench: setup
	bash tests/bench/run.sh

## Lab fleet: relay containers, harden-exit.yml, abuse drill, summary table.
## RELAYS=N (4-40) for a larger fleet; every run adds a line to results/demo-scaling.tsv.
demo: setup
	RELAYS_COUNT=$(or $(RELAYS),4) bash demo/run.sh

## The demo plus dry runs (fresh and hardened fleet) and the undo playbook.
demo-full: setup
	RELAYS_COUNT=$(or $(RELAYS),4) DEMO_EXTRA="fresh-check check undo" bash demo/run.sh

demo-clean:
	bash demo/clean.sh

clean: demo-clean
	rm -rf .cache/sanity tests/output results
