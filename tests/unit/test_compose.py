"""Static checks of docker-compose.yml and deploy/Dockerfile (no Docker engine needed)."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import pytest
import yaml

from services.ops.configuration import readers
from services.runtime.settings import SERVICE_NAMES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus" / "prometheus.yml"

# Commands the containers rely on, used when services/cli.py does not exist yet.
FALLBACK_CLI_COMMANDS = frozenset({"run", "migrate"})
OFFICIAL_KAFKA_IMAGES = frozenset({"apache/kafka", "apache/kafka-native"})
SECRETS = (
    "HOMEWARD_DATA_KEY", "HOMEWARD_TRAVEL_DATA_KEY", "HOMEWARD_DISBURSEMENT_DATA_KEY", "HOMEWARD_IDENTITY_SECRET",
    "HOMEWARD_LEDGER_KEY", "HOMEWARD_ATTESTATION_KEYS", "HOMEWARD_INSTRUMENT_SECRET",
)  # fmt: skip
# Which service containers may hold which secret (of the user's environment, by its name there):
# each data key is its holder's own, and registration holds the readers' too, to wrap with.
SECRET_HOLDERS = {
    "HOMEWARD_IDENTITY_SECRET": {"registration"},
    "HOMEWARD_DATA_KEY": {"registration"},
    "HOMEWARD_TRAVEL_DATA_KEY": {"registration", "travel"},
    "HOMEWARD_DISBURSEMENT_DATA_KEY": {"registration", "disbursement"},
    "HOMEWARD_LEDGER_KEY": {"disbursement"},
    "HOMEWARD_ATTESTATION_KEYS": {"arrival"},
    "HOMEWARD_INSTRUMENT_SECRET": {"disbursement"},
}
OWN_DATA_KEY = {"travel": "HOMEWARD_TRAVEL_DATA_KEY", "disbursement": "HOMEWARD_DISBURSEMENT_DATA_KEY"}
"""A reader reads its own key as HOMEWARD_DATA_KEY; the environment holds it under its reader's name."""
SETTINGS_ENV_NAMES = frozenset(readers())


def _load_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


COMPOSE = _load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.split("=", 1) for item in environment)
        return {pair[0]: (pair[1] if len(pair) == 2 else None) for pair in pairs}
    return {key: (None if value is None else str(value)) for key, value in environment.items()}


def _database_url(service: dict[str, Any]) -> SplitResult:
    """A container's HOMEWARD_DATABASE_URL as compose hands it over: each `${NAME:?…}` stands for a
    value of the user's, written here as `NAME`."""
    value = _environment(service).get("HOMEWARD_DATABASE_URL") or ""
    return urlsplit(re.sub(r"\$\{(\w+)(?::[?-][^}]*)?\}", r"\1", value))


def _builds_homeward(service: dict[str, Any]) -> bool:
    build = service.get("build")
    if isinstance(build, str):
        return (ROOT / build / "Dockerfile").resolve() == DOCKERFILE
    if isinstance(build, dict):
        context = ROOT / str(build.get("context", "."))
        return (context / str(build.get("dockerfile", "Dockerfile"))).resolve() == DOCKERFILE
    return False


def _run_services() -> dict[str, dict[str, Any]]:
    """Containers whose command is `homeward run ...`."""
    return {name: svc for name, svc in SERVICES.items() if _command(svc)[:1] == ["run"]}


def _cli_command_names() -> set[str]:
    try:
        cli = importlib.import_module("services.ops.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "services.ops.cli":
            raise  # the CLI exists but is broken: do not hide it behind the fallback
        return set(FALLBACK_CLI_COMMANDS)
    import typer

    command = typer.main.get_command(cli.app)
    # A group (click's or the one newer typer versions vendor) maps sub-command names to commands.
    subcommands = getattr(command, "commands", None)
    assert isinstance(subcommands, dict), "the homeward CLI should have sub-commands"
    return set(subcommands)


def _image_repository(image: str) -> str:
    image = image.split("@", 1)[0]
    last_slash = image.rfind("/")
    colon = image.rfind(":")
    return image[:colon] if colon > last_slash else image


def test_every_service_has_exactly_one_run_container() -> None:
    run_services = _run_services()
    assert sorted(_command(svc)[1] for svc in run_services.values()) == sorted(SERVICE_NAMES)
    for container, svc in run_services.items():
        command = _command(svc)
        assert len(command) == 2, f"{container}: command should be `run <service>`, got {command}"
        assert command[1] in SERVICE_NAMES
        assert container == command[1], f"container {container!r} runs {command[1]!r}"


def test_service_containers_use_the_homeward_image_and_wait_for_dependencies() -> None:
    assert DOCKERFILE.is_file()
    for container, svc in _run_services().items():
        assert _builds_homeward(svc), f"{container} is not built from deploy/Dockerfile"
        depends_on = svc.get("depends_on")
        assert isinstance(depends_on, dict), f"{container}: depends_on needs conditions"
        assert depends_on["kafka"]["condition"] == "service_healthy"
        assert depends_on["postgres"]["condition"] == "service_healthy"
        assert depends_on["migrate"]["condition"] == "service_completed_successfully"


def test_a_one_shot_job_sets_the_intake_retention_and_the_evidence_timestamps_before_services_start() -> None:
    topics = SERVICES["topics"]
    assert topics["image"].split(":")[0] in OFFICIAL_KAFKA_IMAGES
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert str(topics.get("restart", "no")) == "no"
    [script] = topics["command"]
    for topic in ("registration.submitted.v1", "registration.accepted.v1"):
        assert f"{topic} {topic}.dlq" in script
    assert "retention.ms=${HOMEWARD_INTAKE_RETENTION_MS:-604800000}" in script
    assert "message.timestamp.type=LogAppendTime" in script
    # Compose interpolates $NAME itself: the script's own variables are escaped.
    assert re.findall(r"(?<!\$)\$(?!\$|\{HOMEWARD_)\w+", script) == []
    for container, svc in _run_services().items():
        assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully", container


def test_migrate_is_a_one_shot_homeward_migrate() -> None:
    migrate = SERVICES["migrate"]
    assert _command(migrate) == ["migrate"]
    assert _builds_homeward(migrate)
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert str(migrate.get("restart", "no")) in {"no", "on-failure"}
    assert "HOMEWARD_DATABASE_URL" in _environment(migrate)


def test_container_commands_exist_in_the_cli() -> None:
    cli_commands = _cli_command_names()
    assert {"run", "migrate"} <= cli_commands
    for container, svc in SERVICES.items():
        if _builds_homeward(svc):
            command = _command(svc)
            assert command, f"{container} has no command"
            assert command[0] in cli_commands, f"{container}: unknown CLI command {command[0]!r}"


@pytest.mark.parametrize("container", sorted(SERVICES))
def test_homeward_variables_are_settings_fields(container: str) -> None:
    environment = _environment(SERVICES[container])
    unknown = {name for name in environment if name.startswith("HOMEWARD_")} - SETTINGS_ENV_NAMES
    assert not unknown, f"{container}: {sorted(unknown)} match no settings field of any process"


def test_homeward_containers_are_configured_only_by_homeward_variables() -> None:
    for container, svc in SERVICES.items():
        if _builds_homeward(svc):
            others = [name for name in _environment(svc) if not name.startswith("HOMEWARD_")]
            assert not others, f"{container}: non-HOMEWARD_ variables {others}"
    for container, svc in _run_services().items():
        environment = _environment(svc)
        assert environment.get("HOMEWARD_DATABASE_URL"), container
        assert environment.get("HOMEWARD_KAFKA_BOOTSTRAP"), container


def _references(svc: dict[str, Any]) -> set[str]:
    """The variables of the user's environment a container's environment is made of."""
    return {name for value in _environment(svc).values() for name in re.findall(r"\$\{(\w+)", value or "")}


def test_secrets_go_only_where_they_are_needed() -> None:
    for secret, holders in SECRET_HOLDERS.items():
        have = {name for name, svc in SERVICES.items() if secret in _references(svc)}
        assert have == holders, f"{secret} is given to {sorted(have)}, expected {sorted(holders)}"
    arrival = _environment(SERVICES["arrival"])
    assert "HOMEWARD_DATA_KEY" not in arrival
    assert "HOMEWARD_IDENTITY_SECRET" not in arrival


def test_secrets_come_from_the_users_environment() -> None:
    for container, svc in SERVICES.items():
        environment = _environment(svc)
        for secret in SECRETS:
            if secret in environment:
                value = environment[secret] or ""
                secret = OWN_DATA_KEY.get(container, secret) if secret == "HOMEWARD_DATA_KEY" else secret
                # Required interpolation: `${NAME:?message}`; never a literal key in the file.
                assert re.fullmatch(rf"\$\{{{secret}:\?[^}}]+\}}", value), (
                    f"{container}: {secret} must be `${{{secret}:?...}}`, got {value!r}"
                )


def test_kafka_is_official_single_node_kraft() -> None:
    kafka = SERVICES["kafka"]
    assert _image_repository(kafka["image"]) in OFFICIAL_KAFKA_IMAGES
    environment = _environment(kafka)
    roles = {role.strip() for role in (environment["KAFKA_PROCESS_ROLES"] or "").split(",")}
    assert roles == {"broker", "controller"}
    assert "KAFKA_ZOOKEEPER_CONNECT" not in environment
    node_id = environment["KAFKA_NODE_ID"]
    voters = (environment["KAFKA_CONTROLLER_QUORUM_VOTERS"] or "").split(",")
    assert [voter.split("@", 1)[0] for voter in voters] == [node_id]
    assert environment["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert environment[key] == "1", key
    assert environment["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "true"
    assert "healthcheck" in kafka and kafka["healthcheck"]["test"]


def test_services_reach_the_kafka_and_postgres_defined_here() -> None:
    kafka_env = _environment(SERVICES["kafka"])
    advertised = {
        listener.split("://", 1)[1] for listener in (kafka_env["KAFKA_ADVERTISED_LISTENERS"] or "").split(",")
    }
    postgres = SERVICES["postgres"]
    assert _image_repository(postgres["image"]) == "postgres"
    assert postgres["healthcheck"]["test"]
    assert any(str(volume).endswith(":/var/lib/postgresql/data") for volume in postgres["volumes"])
    pg_env = _environment(postgres)
    for container, svc in _run_services().items():
        environment = _environment(svc)
        for server in (environment["HOMEWARD_KAFKA_BOOTSTRAP"] or "").split(","):
            assert server in advertised, f"{container}: {server} is not advertised by kafka"
        url = _database_url(svc)
        assert url.hostname == "postgres"
        assert url.path.lstrip("/") == pg_env["POSTGRES_DB"]
        partitions = environment.get("HOMEWARD_TOPIC_PARTITIONS")
        if partitions is not None:
            assert partitions == kafka_env["KAFKA_NUM_PARTITIONS"]


def test_every_service_serves_http_where_prometheus_and_the_payout_provider_look() -> None:
    prometheus = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    targets = {target for job in prometheus["scrape_configs"] for group in job["static_configs"]
               for target in group["targets"]}  # fmt: skip
    expected = set()
    for container, svc in _run_services().items():
        environment = _environment(svc)
        port = environment.get("HOMEWARD_HTTP_PORT") or ""
        assert port.isdigit() and int(port) > 0, f"{container}: no HTTP port, so no /ready and no /metrics"
        assert environment.get("HOMEWARD_HTTP_HOST") == "0.0.0.0", (
            f"{container}: HTTP unreachable from other containers"
        )
        assert f"127.0.0.1:{port}/ready" in " ".join(svc["healthcheck"]["test"]), f"{container}: healthcheck"
        expected.add(f"{container}:{port}")
    assert targets == expected, "deploy/prometheus/prometheus.yml must scrape every service at its HTTP port"
    mounts = [str(volume) for volume in SERVICES["prometheus"]["volumes"]]
    assert any(mount.startswith("./deploy/prometheus/prometheus.yml:") for mount in mounts)
    callback = urlsplit(_environment(SERVICES["payout-sandbox"])["HOMEWARD_PAYOUT_CALLBACK_URL"] or "")
    disbursement = _environment(SERVICES["disbursement"])
    # The provider's callbacks arrive on a port of their own, apart from /health and /metrics.
    assert disbursement["HOMEWARD_CALLBACK_PORT"] != disbursement["HOMEWARD_HTTP_PORT"]
    assert (callback.hostname, str(callback.port), callback.path) == (
        "disbursement",
        disbursement["HOMEWARD_CALLBACK_PORT"],
        "/callbacks/payouts",
    )


def test_dockerfile_runs_the_cli_as_non_root() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0].startswith("FROM python:3.11-slim")
    entrypoints = [line for line in instructions if line.startswith("ENTRYPOINT ")]
    assert [json.loads(line.removeprefix("ENTRYPOINT ")) for line in entrypoints] == [["homeward"]]
    users = [line.split()[1].split(":")[0] for line in instructions if line.startswith("USER ")]
    assert users, "the image must switch to a non-root user"
    assert users[-1] not in {"root", "0"}


def test_travel_reaches_the_travel_sandbox_container() -> None:
    url = urlsplit(_environment(SERVICES["travel"])["HOMEWARD_TRAVEL_PROVIDER_URL"] or "")
    sandbox = SERVICES[url.hostname or ""]
    assert _command(sandbox)[:2] == ["sandbox", "travel"]
    assert _command(sandbox)[_command(sandbox).index("--port") + 1] == str(url.port)
    assert "HOMEWARD_DATA_KEY" not in _environment(sandbox), "the travel sandbox holds no program secret"


def test_each_service_logs_in_as_its_own_role_and_only_the_jobs_as_the_administrator() -> None:
    for container, svc in _run_services().items():
        url = _database_url(svc)
        assert (url.username, url.password) == (f"homeward_{container}", f"HOMEWARD_DB_PASSWORD_{container.upper()}")
    postgres = _environment(SERVICES["postgres"])
    for job in ("roles", "migrate"):
        url = _database_url(SERVICES[job])
        assert (url.username, url.password) == (postgres["POSTGRES_USER"], "HOMEWARD_POSTGRES_PASSWORD"), job
    administrators = {name for name, svc in SERVICES.items() if _database_url(svc).username == "postgres"}
    assert administrators == {"roles", "migrate"}


def test_the_roles_job_creates_the_roles_before_migrate_runs() -> None:
    roles = SERVICES["roles"]
    assert _command(roles) == ["roles"]
    assert _builds_homeward(roles)
    assert roles["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["depends_on"]["roles"]["condition"] == "service_completed_successfully"
    environment = _environment(roles)
    for login in (*SERVICE_NAMES, "operator"):
        assert (environment.get(f"HOMEWARD_DB_PASSWORD_{login.upper()}") or "").startswith(
            f"${{HOMEWARD_DB_PASSWORD_{login.upper()}:?"
        ), login
    postgres = _environment(SERVICES["postgres"])
    assert postgres["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    assert (postgres["POSTGRES_PASSWORD"] or "").startswith("${HOMEWARD_POSTGRES_PASSWORD:?")


SASL_SSL_OVERRIDE = ROOT / "deploy" / "compose.sasl-ssl.yml"


def test_the_sasl_ssl_override_leaves_no_plaintext_listener_open_to_other_containers() -> None:
    override = yaml.safe_load(SASL_SSL_OVERRIDE.read_text(encoding="utf-8"))
    kafka = _environment(override["services"]["kafka"])
    protocols = dict(pair.split(":") for pair in (kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"] or "").split(","))
    for listener in (kafka["KAFKA_LISTENERS"] or "").split(","):
        name, _, address = listener.partition("://")
        assert protocols[name] == "SASL_SSL" or address.startswith("127.0.0.1:"), listener
    assert "PlainLoginModule required" in (kafka["KAFKA_LISTENER_NAME_CLIENTS_PLAIN_SASL_JAAS_CONFIG"] or "")
    assert override["services"]["topics"]["network_mode"] == "service:kafka"


def test_the_sasl_ssl_override_gives_every_service_its_client_settings_as_files() -> None:
    override = yaml.safe_load(SASL_SSL_OVERRIDE.read_text(encoding="utf-8"))
    for service in SERVICE_NAMES:
        container = override["services"][service]
        environment = _environment(container)
        assert environment["HOMEWARD_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", service
        assert set(environment) <= SETTINGS_ENV_NAMES, service
        secrets = {path.removeprefix("/run/secrets/") for path in (
            environment["HOMEWARD_KAFKA_SSL_CA_FILE"], environment["HOMEWARD_KAFKA_SASL_PASSWORD_FILE"]
        )}  # fmt: skip
        assert secrets == set(container["secrets"]) <= set(override["secrets"]), service
