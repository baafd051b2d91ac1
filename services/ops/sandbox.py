"""`homeward sandbox …`: the stand-ins for the remote providers, each its own HTTP server and store."""

from pathlib import Path
from typing import Annotated

import typer

sandbox_app = typer.Typer(help="Sandbox providers that behave like the real remote ones.", no_args_is_help=True)


@sandbox_app.command("payouts")
def sandbox_payouts(
    port: Annotated[
        int | None, typer.Option(help="Port on 127.0.0.1, 0 picks a free one (env HOMEWARD_SANDBOX_PAYOUT_PORT)")
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(
            help="SQLite file keeping the payouts (env HOMEWARD_SANDBOX_PAYOUT_STORE, "
            "default <state dir>/sandbox/payouts.sqlite3)"
        ),
    ] = None,
) -> None:
    """Run the sandbox payout provider (an HTTP server).

    Run the sandbox payout provider: an HTTP server that pays once per Idempotency-Key, keeps its
    payouts in its own SQLite file and sends signed callbacks. Prints `sandbox payouts listening on
    http://127.0.0.1:PORT` once it accepts connections; Ctrl-C or SIGTERM stops it.

    \b
    Fault injection (POST /payouts and POST /payout-batches only; rates are shares from 0 to 1;
    a batch is answered 503 or late as a whole, each item declined or returned on its own draw):
      HOMEWARD_SANDBOX_PAYOUT_LATENCY_MS          pause before every answer
      HOMEWARD_SANDBOX_PAYOUT_ERROR_RATE          answer 503 and record nothing
      HOMEWARD_SANDBOX_PAYOUT_AMBIGUOUS_RATE      pay, then answer only after the ambiguous delay
      HOMEWARD_SANDBOX_PAYOUT_AMBIGUOUS_DELAY_MS  that delay (default 10000), so the client times out
      HOMEWARD_SANDBOX_PAYOUT_DECLINE_RATE        record the payout as declined, for good
      HOMEWARD_SANDBOX_PAYOUT_RETURN_RATE         pay, then return the money after the return delay
      HOMEWARD_SANDBOX_PAYOUT_RETURN_DELAY_MS     that delay (default 2000)
      HOMEWARD_SANDBOX_PAYOUT_SEED                seed of the fault draws, for repeatable runs

    \b
    Callbacks (payout.settled, payout.declined, payout.returned), POSTed in signed batches
    {"notifications": [...]} of up to 100:
      HOMEWARD_PAYOUT_CALLBACK_URL     where they are POSTed (unset: recorded, not sent)
      HOMEWARD_PAYOUT_CALLBACK_SECRET  HMAC-SHA256 key of the X-Homeward-Signature header

    Example: `homeward sandbox payouts --port 8081`."""
    from services.sandbox.__main__ import run_payouts

    run_payouts(port, store)


@sandbox_app.command("travel")
def sandbox_travel(
    port: Annotated[
        int | None, typer.Option(help="Port on 127.0.0.1, 0 picks a free one (env HOMEWARD_SANDBOX_TRAVEL_PORT)")
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(
            help="SQLite file keeping the tickets (env HOMEWARD_SANDBOX_TRAVEL_STORE, "
            "default <state dir>/sandbox/travel.sqlite3)"
        ),
    ] = None,
) -> None:
    """Run the sandbox travel provider (an HTTP server).

    Run the sandbox travel provider: an HTTP server that issues one ticket per Idempotency-Key
    and keeps its tickets (never the travellers' names) in its own SQLite file. Prints `sandbox
    travel listening on http://127.0.0.1:PORT` once it accepts connections; Ctrl-C or SIGTERM stops it.

    \b
    Behaviour (POST /bookings only; the rate is a share from 0 to 1):
      HOMEWARD_SANDBOX_TRAVEL_FAILURE_RATE             answer 503 and book nothing
      HOMEWARD_SANDBOX_FLIGHT_DEPARTURE_DELAY_SECONDS  flights depart this long after booking
      HOMEWARD_SANDBOX_FLIGHT_DURATION_SECONDS         and land this long after departure

    Example: `homeward sandbox travel --port 8082`."""
    from services.sandbox.__main__ import run_travel

    run_travel(port, store)
