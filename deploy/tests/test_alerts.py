"""natsgate's alerts: the PrometheusRule of deploy/monitoring and the one the chart renders are
the same rules; promtool checks them and runs deploy/tests/alerts.test.yaml against each
(the rules are extracted from the rendered objects, so the tested rules are the shipped ones);
every alert has a firing and a silent case and a runbook section."""
from __future__ import annotations

import re

import pytest
import yaml

from conftest import ROOT, run

TESTS = ROOT / "deploy/tests/alerts.test.yaml"
RUNBOOK = ROOT / "docs/runbook.md"


def groups_of(docs) -> list[dict]:
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    return rule["spec"]["groups"]


def rules_of(docs) -> list[dict]:
    return [r for g in groups_of(docs) for r in g["rules"]]


@pytest.fixture(scope="module")
def chart_docs(helm) -> list[dict]:
    """The chart with its default values and the PrometheusRule on (ci/monitoring-values.yaml
    changes certExpiryDays; that rendering is validated in test_manifests.py)."""
    out = run(helm, "template", "natsgate", ROOT / "helm/natsgate", "--namespace", "natsgate",
              "--set", "metrics.prometheusRule.enabled=true").stdout
    return [d for d in yaml.safe_load_all(out) if d]


def alerts(renders) -> list[str]:
    return [r["alert"] for r in rules_of(renders["kustomize-monitoring"])]


def test_chart_and_kustomize_rules_are_the_same(renders, chart_docs):
    """Apart from the chart's selector on the release namespace, rule for rule."""
    def unscoped(rule):
        expr = re.sub(r'namespace="natsgate",?', "", rule["expr"]).replace("{}", "")
        return {**rule, "expr": expr}

    chart_rules = rules_of(chart_docs)
    assert [unscoped(r) for r in chart_rules] == rules_of(renders["kustomize-monitoring"])
    assert all('namespace="natsgate"' in r["expr"] for r in chart_rules), "every chart rule is namespaced"


@pytest.fixture(scope="module", params=["kustomize", "chart"])
def rules_dir(request, renders, chart_docs, tmp_path_factory):
    """A plain rules file extracted from the rendered PrometheusRule, beside the unit tests.
    In the chart every series is limited to the release namespace, so its alerts all carry a
    namespace label, absent() included: the expected labels get it where they lack it."""
    d = tmp_path_factory.mktemp(request.param)
    docs = chart_docs if request.param == "chart" else renders["kustomize-monitoring"]
    (d / "rules.yaml").write_text(yaml.safe_dump({"groups": groups_of(docs)}, sort_keys=False))
    tests = yaml.safe_load(TESTS.read_text())
    if request.param == "chart":
        for t in tests["tests"]:
            for case in t.get("alert_rule_test", []):
                for a in case.get("exp_alerts") or []:
                    a["exp_labels"].setdefault("namespace", "natsgate")
    (d / "alerts.test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    return d


def test_promtool_check_rules(promtool, rules_dir):
    run(promtool, "check", "rules", rules_dir / "rules.yaml")


def test_promtool_unit_tests(promtool, rules_dir):
    run(promtool, "test", "rules", rules_dir / "alerts.test.yaml")


def test_every_alert_fires_and_stays_silent_in_a_test(renders):
    cases = [c for t in yaml.safe_load(TESTS.read_text())["tests"] for c in t.get("alert_rule_test", [])]
    for name in alerts(renders):
        assert [c for c in cases if c["alertname"] == name and c.get("exp_alerts")], f"{name}: no firing case"
        assert [c for c in cases if c["alertname"] == name and not c.get("exp_alerts")], f"{name}: no silent case"


def test_every_alert_has_a_runbook_section(renders):
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)}
    for rule in rules_of(renders["kustomize-monitoring"]):
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/runbook.md#{rule['alert'].lower()}", rule["alert"]
        assert url.split("#")[1] in anchors, f"docs/runbook.md has no section {rule['alert']}"
        assert rule["labels"]["severity"] in ("warning", "critical")
