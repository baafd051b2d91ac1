"""`python -m services.sandbox payouts|travel`: one sandbox provider, configured by its
HOMEWARD_SANDBOX_* settings (port and store included), importing nothing of the operator CLI.
`homeward sandbox KIND` runs the same with command-line options and help; `homeward up` starts its
sandboxes this way so that they start quickly."""

import asyncio
import contextlib
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from services.runtime import logs

USAGE = "usage: python -m services.sandbox payouts|travel   (settings HOMEWARD_SANDBOX_*: `homeward sandbox --help`)"


def _serve(server: Coroutine[Any, Any, None]) -> None:
    import uvloop

    # uvicorn stops on SIGINT and SIGTERM by itself, then raises the signal again to exit as asked.
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(server)


def run_payouts(port: int | None = None, store: Path | None = None) -> None:
    """Runs the payout sandbox until SIGTERM or SIGINT; `port` and `store` override the settings."""
    from services.sandbox.payouts import serve
    from services.sandbox.settings import PayoutSandboxSettings

    settings = PayoutSandboxSettings()
    logs.configure("sandbox-payouts", settings.log_level)
    chosen_port = settings.sandbox_payout_port if port is None else port
    _serve(serve(settings, port=chosen_port, store_path=store or settings.store()))


def run_travel(port: int | None = None, store: Path | None = None) -> None:
    """Runs the travel sandbox until SIGTERM or SIGINT; `port` and `store` override the settings."""
    from services.sandbox.settings import TravelSandboxSettings
    from services.sandbox.travel import serve

    settings = TravelSandboxSettings()
    logs.configure("sandbox-travel", settings.log_level)
    chosen_port = settings.sandbox_travel_port if port is None else port
    _serve(serve(settings, port=chosen_port, store_path=store or settings.store()))


def main(argv: list[str]) -> int:
    runs = {"payouts": run_payouts, "travel": run_travel}
    if len(argv) != 1 or argv[0] not in runs:
        print(USAGE, file=sys.stderr)
        return 2
    runs[argv[0]]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
