"""`python -m services.runtime SERVICE`: one service process, importing only the runtime and that
service. `homeward run SERVICE` does the same through the operator CLI, which also loads every
operator command; `homeward up` starts its processes this way, because on two cores six
processes starting at once wait for each other's imports."""

import asyncio
import gc
import sys

from services.runtime import logs, reachability, tracing
from services.runtime.settings import SERVICE_NAMES, HomewardSettings, Infrastructure

USAGE = f"usage: python -m services.runtime SERVICE   (one of: {', '.join(SERVICE_NAMES)})"


GC_YOUNG_THRESHOLD = 10_000
"""Container objects allocated and not yet freed before the youngest generation is collected;
Python's default is 700. A batch of events holds thousands of them at once (its records,
envelopes and rows), so at the default a collection runs several times a batch and walks objects
still in use."""


def _quiet_collector() -> None:
    """Keeps the cyclic garbage collector off what the process built to start (modules, contract
    schemas, queries): they are collected once, then frozen, so the oldest generation's passes walk
    only what came after; and the youngest is collected less often. Measured in a 20,000-case
    `bench e2e`: the services' collections took 3.7 CPU seconds of 33 (11%), 0.5 after."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


def run_service(service: str) -> None:
    """Runs one service until SIGTERM or SIGINT, on uvloop, logging as its settings say. What it
    needs and cannot have (a setting, the database, the broker) ends it with exit code 1 and one
    line naming what is missing and where to look, never a traceback."""
    import uvloop

    from services.runtime.service import create_app

    logs.configure(service, HomewardSettings().log_level)
    try:
        tracing.configure(service)  # only where the OTEL_* variables ask for traces
    except Exception:  # a tracing misconfiguration leaves the service running, untraced
        logs.configure(service, HomewardSettings().log_level).warning("tracing.not_configured", exc_info=True)
    settings = Infrastructure()
    try:
        app = create_app(service)
        _quiet_collector()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(app.run())
    except reachability.errors() as error:
        raise SystemExit(f"{service}: {reachability.describe(error, settings)}") from None
    finally:
        tracing.shutdown()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in SERVICE_NAMES:
        print(USAGE, file=sys.stderr)
        return 2
    run_service(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
