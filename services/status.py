"""`homeward status`: what `homeward up` supervises, and whether each part is healthy."""

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from services.runtime.supervisor import STATUS_FILE, Runtime

PROBE_TIMEOUT_SECONDS = 2.0
PIPED_WIDTH = 160


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
        started = process.get("started_at")
        process["uptime_seconds"] = round(now - started, 1) if started else None
    if as_json:
        print(json.dumps({"runtime": runtime.__dict__, "processes": processes}, indent=2))
    else:
        table = Table(title=f"homeward up (pid {runtime.pid}) kafka={runtime.kafka}")
        for column in ("process", "pid", "uptime", "restarts", "health"):
            table.add_column(column)
        for process in processes:
            uptime = process["uptime_seconds"]
            table.add_row(process["name"], str(process.get("pid") or "-"),
                          f"{uptime:,.0f} s" if uptime is not None else "-",
                          str(process.get("restarts", "-")), process["health"])  # fmt: skip
        Console(width=None if sys.stdout.isatty() else PIPED_WIDTH).print(table)
    healthy = {"ready", "ok", "running"}
    return 0 if all(process["health"] in healthy for process in processes) else 1
