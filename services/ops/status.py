"""`homeward status`: what `homeward up` supervises, and whether each part is healthy."""

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from services.devstack.running import STATUS_FILE, Runtime
from services.ops.common import console, human_duration, json_value
from services.runtime.settings import masked_url

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


def _document(runtime: Runtime, processes: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """`status --json`: database URLs with their passwords masked, RFC 3339 times, ages in ms."""
    shown = dict(runtime.__dict__)
    shown["database_url"] = masked_url(runtime.database_url)
    shown["database_urls"] = {login: masked_url(url) for login, url in (runtime.database_urls or {}).items()}
    listed = []
    for process in processes:
        entry = {name: value for name, value in process.items() if name not in ("started_at", "uptime_seconds")}
        started = process.get("started_at")
        entry["started_at"] = json_value(datetime.fromtimestamp(started, UTC)) if started else None
        entry["uptime_ms"] = int((now - started) * 1000) if started else None
        listed.append(entry)
    return {"runtime": shown, "processes": listed}


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
        print(json.dumps(_document(runtime, processes, now), indent=2))
    else:
        table = Table(title=f"homeward up (pid {runtime.pid}) kafka={runtime.kafka}", title_justify="left")
        for column in ("process", "pid", "uptime", "restarts", "health"):
            table.add_column(column, overflow="fold")
        table.add_column("events in", justify="right")
        for process in processes:
            uptime = process["uptime_seconds"]
            events = process["events"]
            counts = " / ".join(f"{events[outcome]:,}" for outcome in EVENT_OUTCOMES) if events else "-"
            table.add_row(process["name"], str(process.get("pid") or "-"),
                          human_duration(uptime) if uptime is not None else "-",
                          str(process.get("restarts", "-")), process["health"], counts)  # fmt: skip
        table.caption = "events in: applied / duplicate / dead-lettered since the process started"
        console().print(table)
    healthy = {"ready", "ok", "running"}
    return 0 if all(process["health"] in healthy for process in processes) else 1
