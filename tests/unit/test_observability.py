"""The dashboard and the alerts speak of metrics the services really export: every metric name
and label in every panel's and every alert's expression exists; the alert rules pass promtool
(its check and its unit tests, where Debian's `prometheus` package put it); every alert has a
runbook section."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from services.runtime import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "homeward.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
RUNBOOK = ROOT / "docs" / "operations.md"
METRIC = re.compile(r"\b(homeward_[a-z_]+)\b")
SELECTOR_LABELS = re.compile(r"\b(homeward_[a-z_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\bby \(([^)]*)\)")
PROMETHEUS_LABELS = {"instance", "job", "le"}
ASKED_OF_THE_DASHBOARD = {
    "homeward_events_total", "homeward_consumer_lag", "homeward_outbox_unsent", "homeward_outbox_oldest_unsent_seconds",
    "homeward_dead_letters_total", "homeward_payouts_total", "homeward_payments_waiting", "homeward_budget_available",
    "homeward_batch_seconds_bucket",
}  # fmt: skip


def exported() -> dict[str, set[str]]:
    """Every sample name Homeward's metrics (services/runtime/metrics.py) expose, with its labels."""
    names: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        labels = set(value._labelnames)
        if value._type == "counter":
            names[f"{value._name}_total"] = labels
        elif value._type == "histogram":
            names |= {f"{value._name}_bucket": labels | {"le"}, f"{value._name}_sum": labels,
                      f"{value._name}_count": labels}  # fmt: skip
        else:
            names[value._name] = labels
    return names


def expressions() -> dict[str, str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    found = {f"panel {panel['title']!r} {target['refId']}": target["expr"]
             for panel in panels for target in panel["targets"]}  # fmt: skip
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        found |= {f"alert {rule['alert']}": rule["expr"] for rule in group["rules"]}
    return found


def test_every_expression_names_exported_metrics_and_labels() -> None:
    names = exported()
    for where, expr in expressions().items():
        used = set(METRIC.findall(expr))
        assert used or "up{" in expr, f"{where} names no Homeward metric"
        for name in used:
            assert name in names, f"{where}: {name} is not exported (exported: {sorted(names)})"
        for name, selector in SELECTOR_LABELS.findall(expr):
            for label in re.findall(r"(\w+)\s*[=!~]", selector):
                assert label in names[name] | PROMETHEUS_LABELS, f"{where}: {name} has no label {label}"
        for grouping in GROUPING.findall(expr):
            for label in (part.strip() for part in grouping.split(",")):
                labelled = set().union(*(names[name] for name in used)) if used else set()
                assert label in labelled | PROMETHEUS_LABELS, f"{where}: no metric here has a label {label}"


def test_the_dashboard_shows_what_operators_watch() -> None:
    shown = set().union(
        *(set(METRIC.findall(expr)) for where, expr in expressions().items() if where.startswith("panel"))
    )
    assert ASKED_OF_THE_DASHBOARD <= shown
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "homeward" and all(
        panel["datasource"]["uid"] == "prometheus" for panel in dashboard["panels"]
    )


def test_every_alert_has_its_runbook_section() -> None:
    runbook = RUNBOOK.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-") for heading in
               re.findall(r"^## (.+)$", runbook, flags=re.MULTILINE)}  # fmt: skip
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            url = rule["annotations"]["runbook_url"]
            assert url == f"docs/operations.md#{rule['alert'].lower()}", rule["alert"]
            assert rule["alert"].lower() in anchors, f"docs/operations.md has no section ## {rule['alert']}"
            assert rule["labels"]["severity"] in {"page", "ticket"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) is not installed")
def test_promtool_checks_the_rules_and_their_unit_tests() -> None:
    checked = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(["promtool", "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
