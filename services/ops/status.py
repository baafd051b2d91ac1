"""`homeward status`: what `homeward up` supervises, and whether each part is healthy."""

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from services.devstack.running import STATUS_FILE, Runtime
from services.ops.common import console

PROBE_TIMEOUT_SECONDS = 2.0
EVENT_OUTCOMES = ("applied", "duplicate", "dead_lettered")


def _health(process: dict[str, Any]) -> str:
    if not process.get("alive"):
        return "down"
    if process.get("embedded"):
        return "running"
    url = process.get("health_url")
    if not url:
        return "running"
    path = "/health" if process["name"].startswith("sandbox") else "/ready"
    try:
        response = httpx.get(f"{url}{path}", timeout=PROBE_TIMEOUT_SECONDS)
    except httpx.HTTPError:
        return "unreachable"
    if response.status_code == 200:
        return "ready" if path == "/ready" else "ok"
    failing = [name for name, ok in response.json().get("checks", {}).items() if not ok]
    return f"not ready ({', '.join(failing)})"


def _events(process: dict[str, Any]) -> dict[str, int] | None:
    """A service's inbound events by outcome since it last started, from its /metrics."""
    url = process.get("health_url")
    if not process.get("alive") or not url or process["name"].startswith("sandbox"):
        return None
    try:
        response = httpx.get(f"{url}/metrics", timeout=PROBE_TIMEOUT_SECONDS)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    counts = dict.fromkeys(EVENT_OUTCOMES, 0)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "homeward_events_total" and sample.labels.get("outcome") in counts:
                counts[sample.labels["outcome"]] += int(sample.value)
    return counts


def show(state_dir: Path, *, as_json: bool) -> int:
    """Prints the status table (or JSON); returns 1 when nothing runs or a part is unhealthy."""
    runtime = Runtime.read(state_dir)
    path = state_dir / STATUS_FILE
    if runtime is None or not path.exists():
        print(f"no running `homeward up` in {state_dir}; start one with `homeward up`", file=sys.stderr)
        return 1
    processes: list[dict[str, Any]] = json.loads(path.read_text())["processes"]
    now = time.time()
    for process in processes:
        process["health"] = _health(process)
        process["events"] = _events(process)
        started = process.get("started_at")
        process["uptime_seconds"] = round(now - started, 1) if started else None
    if as_json:
        print(json.dumps({"runtime": runtime.__dict__, "processes": processes}, indent=2))
    else:
        table = Table(title=f"homeward up (pid {runtime.pid}) kafka={runtime.kafka}")
        for column in ("process", "pid", "uptime", "restarts", "health"):
            table.add_column(column)
        for outcome in EVENT_OUTCOMES:
            table.add_column(outcome.replace("_", " "), justify="right")
        for process in processes:
            uptime = process["uptime_seconds"]
            events = process["events"]
            counts = [f"{events[outcome]:,}" if events else "-" for outcome in EVENT_OUTCOMES]
            table.add_row(process["name"], str(process.get("pid") or "-"),
                          f"{uptime:,.0f} s" if uptime is not None else "-",
                          str(process.get("restarts", "-")), process["health"], *counts)  # fmt: skip
        table.caption = "events: inbound since the process started (its /metrics)"
        console().print(table)
    healthy = {"ready", "ok", "running"}
    return 0 if all(process["health"] in healthy for process in processes) else 1
