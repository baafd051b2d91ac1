"""structlog, configured once: JSON lines to stdout, one logger handed to FastStream too.

PII never reaches a log line: handlers log ids only, and a last processor drops
any key named like a personal field as a second line of defence.
"""

import logging
import sys
from typing import Any, TextIO

import structlog

PII_KEYS = frozenset(
    {
        "given_name", "family_name", "name", "date_of_birth", "number", "document",
        "phone", "email", "msisdn", "account_number", "account_name", "payload", "data",
        "body", "sealed",
    }
)  # fmt: skip


REDACTION_DEPTH_MAX = 8


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > REDACTION_DEPTH_MAX:
        return "[redacted: too deep]"
    if isinstance(value, dict):
        return {key: "[redacted]" if key in PII_KEYS else _redact(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item, depth + 1) for item in value]
    return value


def _drop_pii(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Redacts every value whose key is named like personal data, at any depth."""
    redacted: dict[str, Any] = _redact(event_dict)
    return redacted


def configure(service: str, level: str = "INFO", stream: TextIO = sys.stdout) -> structlog.stdlib.BoundLogger:
    """Route stdlib logging (FastStream, aiokafka) and structlog through one JSON renderer."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_pii,
    ]
    structlog.configure(
        # A line below the level is dropped first, before any work is done on it: the per-event
        # DEBUG lines cost next to nothing at INFO.
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                # Ids (UUIDs), times and amounts are written as their text: a line below the level
                # never pays for turning them into text.
                structlog.processors.JSONRenderer(default=str),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka is chatty at INFO about group membership; warnings still come through.
    # FastStream installs its own console handlers on import; route them through ours instead.
    for name in ("faststream", "faststream.access"):
        library_logger = logging.getLogger(name)
        library_logger.handlers.clear()
        library_logger.propagate = True
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("yoyo").setLevel(logging.WARNING)
    # httpx logs every request at INFO without case ids; failures surface through our own lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    structlog.contextvars.bind_contextvars(service=service)
    logger: structlog.stdlib.BoundLogger = structlog.get_logger("homeward")
    return logger
