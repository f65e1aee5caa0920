"""Run every stage of `make test`, time each, and end with one summary line.

A stage is a command. pytest stages write JUnit XML, so their individual tests
are counted; every other stage (a linter, a molecule scenario) counts as one
check. The last line reads `summary: N passed, N failed` and the exit code is
non-zero when anything failed.
"""
import argparse
import concurrent.futures
import glob
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(TOP, ".venv", "bin")
RESULTS = os.path.join(TOP, "tests", "output", "junit")


def pytest_stage(name, *paths):
    xml = os.path.join(RESULTS, name + ".xml")
    cmd = [os.path.join(VENV_BIN, "pytest"), "-q", "-rfEs", "--junitxml", xml] + list(paths)
    return {"name": name, "cmd": cmd, "junit": xml}


def molecule_stages(selected):
    stages = []
    for path in sorted(glob.glob(os.path.join(TOP, "molecule", "*", "molecule.yml"))):
        scenario = os.path.basename(os.path.dirname(path))
        if selected and scenario not in selected:
            continue
        stages.append({"name": "molecule:" + scenario, "parallel": True,
                       "cmd": [os.path.join(VENV_BIN, "molecule"), "test", "-s", scenario]})
    return stages


SETUP = [
    {"name": "host-packages", "cmd": ["bash", "scripts/bootstrap-host.sh"], "fatal": True},
    {"name": "venv", "cmd": ["bash", "scripts/venv.sh"], "fatal": True},
    {"name": "docker", "cmd": ["bash", "scripts/ensure-docker.sh"], "fatal": True},
    {"name": "images", "cmd": ["bash", "scripts/build-images.sh"], "fatal": True},
]


def all_stages(selected_scenarios):
    return SETUP + [
        {"name": "ruff", "cmd": [os.path.join(VENV_BIN, "ruff"), "check", "."]},
        {"name": "ansible-lint", "cmd": [os.path.join(VENV_BIN, "ansible-lint"), "--profile", "production"]},
        {"name": "sanity", "cmd": ["bash", "scripts/sanity.sh"]},
        {"name": "docs", "cmd": [os.path.join(VENV_BIN, "python"), "scripts/gen-docs.py", "--check"]},
        {"name": "build", "cmd": ["bash", "scripts/check-build.sh"]},
        {"name": "alerts", "cmd": ["bash", "scripts/check-alerts.sh"]},
        pytest_stage("unit", "tests/unit"),
        pytest_stage("integration", "tests/integration"),
    ] + molecule_stages(selected_scenarios)


def junit_counts(path):
    """Passed, failed and skipped counts of a junit file, and the failed tests'
    names with the first line of their message."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    names = []
    for case in root.iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            message = (bad.get("message") or "").strip().splitlines()
            names.append("%s::%s: %s" % (case.get("classname"), case.get("name"),
                                         message[0][:300] if message else bad.tag))
    return total - failed - skipped, failed, skipped, names


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", default=[],
                        help="run only the named stage (repeatable), e.g. unit or molecule:common")
    parser.add_argument("--skip", action="append", default=[], help="skip the named stage")
    parser.add_argument("--jobs", type=int, default=2, help="molecule scenarios run at the same time")
    args = parser.parse_args()

    scenarios = [s.split(":", 1)[1] for s in args.only if s.startswith("molecule:")]
    stages = all_stages(scenarios)
    if args.only:
        stages = [s for s in stages if s["name"] in args.only]
    stages = [s for s in stages if s["name"] not in args.skip]
    if args.only:  # set-up always runs first: the selected stages need it
        stages = [s for s in SETUP if s not in stages] + stages

    os.makedirs(RESULTS, exist_ok=True)
    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ["PATH"],
               ANSIBLE_COLLECTIONS_PATH=os.path.join(TOP, ".cache", "collections"),
               PY_COLORS="0", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", NO_COLOR="1")
    rows = []
    failed_tests = []  # named again after the summary: a long log's tail must say what failed

    def run(stage, quiet):
        """Run one stage; with quiet, keep its output and print it in one piece."""
        start = time.monotonic()
        if quiet:
            with tempfile.TemporaryFile(mode="w+") as log:
                rc = subprocess.call(stage["cmd"], cwd=TOP, env=env, stdout=log, stderr=subprocess.STDOUT)
                log.seek(0)
                output = log.read()
        else:
            print("\n=== stage %s: %s" % (stage["name"], " ".join(stage["cmd"])), flush=True)
            rc, output = subprocess.call(stage["cmd"], cwd=TOP, env=env), ""
        took = time.monotonic() - start
        if stage.get("junit") and os.path.exists(stage["junit"]):
            p, f, s, names = junit_counts(stage["junit"])
            failed_tests.extend(names)
            if rc not in (0, 5) and f == 0:  # pytest crashed before it could report
                f = 1
            os.remove(stage["junit"])
        else:
            p, f, s = (1, 0, 0) if rc == 0 else (0, 1, 0)
        if quiet:
            print("\n=== stage %s: %s\n%s" % (stage["name"], " ".join(stage["cmd"]), output), flush=True)
        row = (stage["name"], "ok" if f == 0 else "FAILED", p, f, s, took)
        print("=== stage %s: %s in %.0f s" % (stage["name"], row[1], took), flush=True)
        return row

    serial = [s for s in stages if not s.get("parallel")]
    parallel = [s for s in stages if s.get("parallel")]
    for stage in serial:
        rows.append(run(stage, quiet=False))
        if rows[-1][3] and stage.get("fatal"):
            print("=== setup stage %s failed; nothing else can run" % stage["name"], flush=True)
            parallel = []
            break
    if parallel:
        # Molecule scenarios mostly wait on containers and package scripts: two at
        # a time use a 2-core machine well and each keeps its own containers.
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            quiet = args.jobs > 1 and len(parallel) > 1
            rows.extend(pool.map(lambda st: run(st, quiet=quiet), parallel))
    passed = sum(r[2] for r in rows)
    failed = sum(r[3] for r in rows)
    skipped = sum(r[4] for r in rows)
    print("\n%-28s %-7s %6s %6s %7s %8s" % ("stage", "result", "passed", "failed", "skipped", "seconds"))
    for name, result, p, f, s, took in rows:
        print("%-28s %-7s %6d %6d %7d %8.0f" % (name, result, p, f, s, took))
    print("summary: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
    for name in failed_tests:
        print("failed: %s" % name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
