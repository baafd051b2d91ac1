"""What a process says when the database or the broker cannot be reached: one line for an
operator (which part, at which address, what to check), never a traceback."""

from services.runtime.settings import Infrastructure


def errors() -> tuple[type[BaseException], ...]:
    """A database or broker that cannot be reached, or that refuses the service's login."""
    import socket

    import asyncpg
    import psycopg
    from aiokafka.errors import KafkaConnectionError

    # Connection errors only: another OSError (a port in use, a missing CA file) is not the
    # database's address, and keeps its own message.
    return (ConnectionError, socket.gaierror, TimeoutError, asyncpg.PostgresConnectionError,
            asyncpg.InvalidAuthorizationSpecificationError, psycopg.OperationalError, KafkaConnectionError)  # fmt: skip


def describe(error: BaseException, settings: Infrastructure) -> str:
    """One line for an operator: which part could not be reached, at which address, and what to check."""
    from aiokafka.errors import KafkaConnectionError

    from services.runtime.settings import masked_url

    reason = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, KafkaConnectionError):
        return (f"cannot reach the Kafka broker at {settings.kafka_bootstrap} ({reason}); "
                "check HOMEWARD_KAFKA_BOOTSTRAP and that the broker runs")  # fmt: skip
    where = masked_url(settings.database_url) if settings.database_url else "(HOMEWARD_DATABASE_URL unset)"
    return (f"cannot reach PostgreSQL at {where} ({reason}); check HOMEWARD_DATABASE_URL, its password, "
            "and that the server runs")  # fmt: skip
