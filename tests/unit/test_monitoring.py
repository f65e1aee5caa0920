# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""monitoring/: the Grafana dashboard is valid and, like the alert rules, asks only
for metrics (and labels) that the guard's exporter or tor's MetricsPort export.

The exporter's metrics and labels come from its own output on the recorded guards of
all three backends; tor's from a recorded MetricsPort page of tor 0.4.9.11 (an exit
with OfflineMasterKey, so the signing certificate's expiry is there too). The
alerts' behaviour is tested by `promtool test rules` (stage alerts)."""

import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml


def _load(path, name):
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# the exporter module, its recorded guards and the fakes that replay them
tm = _load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "roles", "test_metrics.py"), "metrics_tests")

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(TOP, "monitoring", "grafana", "torexit-hardening.json")
RULES = os.path.join(TOP, "monitoring", "prometheus", "torexit-hardening.rules.yml")

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
            "unless", "inf", "nan"}
PROMETHEUS_OWN = {"up": {"instance", "job"}}     # scrape health, set by Prometheus itself
TARGET_LABELS = {"instance", "job"}


def sample_labels(text):
    """{metric: set of label names} of Prometheus text-format samples."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$", line)
        assert m, line
        out.setdefault(m.group(1), set()).update(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(2) or ""))
    return out


def exporter_labels():
    out = {}
    for backend in ("nftables", "iptables", "ufw"):
        outputs = {"nftables": {tm.NFT_SETS: (0, tm.fixture("nft-sets.json"), "")},
                   "iptables": tm.with_(tm.iptables_outputs("ipt"), tm.NFT_SETS, tm.NO_TABLE),
                   "ufw": tm.with_(tm.iptables_outputs("ufw"), tm.NFT_SETS, tm.NO_TABLE)}[backend]
        state = tm.metrics.read_state(tm.fake_run(outputs), tm.replay_netlink())
        for name, labels in sample_labels(tm.metrics.render(state, now=1, took=0.1)).items():
            out.setdefault(name, set()).update(labels)
    # the firewall role's ORPort DoS rules (issue 18), read by the same exporter
    inbound = tm.metrics.read_inbound(tm.fake_run({tm.NFT_INBOUND_SETS: (0, tm.inbound_sets_json(), "")}),
                                      lambda: tm.FakeInboundLink({"dos_rate_hits": 1, "dos_blocked_hits": 2,
                                                                  "dos_concurrency_hits": 3}, {}))
    for name, labels in sample_labels(tm.metrics.render(None, now=1, took=0.1, inbound=inbound)).items():
        out.setdefault(name, set()).update(labels)
    assert set(out) == set(tm.metrics.HELP)   # the recordings show every metric the exporter has
    return out


KNOWN = dict(exporter_labels())
KNOWN.update(sample_labels(tm.fixture("tor-0.4.9.11-metricsport.txt")))


def referenced(expr):
    """(metric names, {metric: label names in its selector}, label names in by/on/...)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)            # strings (regexes, $variables)
    selectors = {}
    for name, body in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", text):
        selectors.setdefault(name, set()).update(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", body))
    grouping = set()
    for _kw, body in re.findall(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", text):
        grouping.update(x.strip() for x in body.split(",") if x.strip())
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = m.group(0)
        if word in KEYWORDS or text[m.end():].lstrip().startswith("("):
            continue                                            # functions and aggregations
        if re.match(r"^\d", word):
            continue
        names.add(word)
    return names, selectors, grouping


def check_expr(expr, where):
    names, selectors, grouping = referenced(expr)
    assert names, "%s: no metric in %r" % (where, expr)
    known = dict(KNOWN, **PROMETHEUS_OWN)
    unknown = names - set(known)
    assert not unknown, "%s: %s exported by neither the guard's exporter nor tor: %r" % (where, unknown, expr)
    available = set(TARGET_LABELS)
    for name in names:
        available |= known[name]
    for name, labels in selectors.items():
        assert labels <= known[name] | TARGET_LABELS, "%s: %s has no label %s" % (
            where, name, labels - known[name] - TARGET_LABELS)
    assert grouping <= available, "%s: labels %s on none of %s" % (where, grouping - available, names)
    return names, available


def dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def test_dashboard_is_valid_grafana_json():
    dash = dashboard()
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    names = [v["name"] for v in dash["templating"]["list"]]
    assert {"datasource", "instance", "tor_instance"} <= set(names)
    for p in panels(dash):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["targets"], "panel %r has no query" % p["title"]
        for t in p["targets"]:
            used = set(re.findall(r"\$(\w+)", t["expr"])) | set(re.findall(r"\$\{(\w+)\}", json.dumps(p)))
            assert used <= set(names), "panel %r uses an undefined variable: %s" % (p["title"], used - set(names))


def test_dashboard_asks_only_for_exported_metrics_and_labels():
    dash = dashboard()
    seen = set()
    for p in panels(dash):
        for t in p.get("targets", []):
            names, available = check_expr(t["expr"], "panel %r" % p["title"])
            seen |= names
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                assert label in available, "panel %r: legend label %s not in the result" % (p["title"], label)
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            check_expr(re.match(r"label_values\((.*), *\w+\)$", v["definition"]).group(1), "variable " + v["name"])
    # every metric of the guard's exporter has a panel
    assert set(tm.metrics.HELP) - seen == set()


def test_alert_rules_ask_only_for_exported_metrics_and_labels():
    with open(RULES) as f:
        rules = yaml.safe_load(f)
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert len(alerts) >= 9
    for rule in alerts:
        check_expr(rule["expr"], "alert " + rule["alert"])


@pytest.mark.parametrize("expr,bad", [
    ("rate(torexit_guard_blocks_total[5m])", "torexit_guard_blocks_total"),
    ('sum by (reason) (tor_relay_exit_dns_errors_total{reason="x"})', "tor_relay_exit_dns_errors_total"),
    ('sum(torexit_guard_bans{detector="x"})', "detector"),
    ("sum by (flavour) (tor_relay_streams_total)", "flavour"),
])
def test_the_check_catches_unknown_metrics_and_labels(expr, bad):
    with pytest.raises(AssertionError, match=bad):
        check_expr(expr, "test")


def test_dashboard_queries_are_valid_promql(tmp_path):
    """Every panel's query parses: promtool checks them as recording rules (the
    variables sit inside label matcher strings, where any text is valid)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/bootstrap-host.sh installs Debian's prometheus package"
    rules = [{"record": "dashboard:query_%d" % i, "expr": t["expr"]}
             for i, t in enumerate(t for p in panels(dashboard()) for t in p.get("targets", []))]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: %d rules found" % len(rules) in out.stdout
