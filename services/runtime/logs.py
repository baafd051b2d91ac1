"""structlog, configured once: JSON lines to stdout, one logger handed to FastStream too.

PII never reaches a log line: handlers log ids only; a processor drops any key named like a
personal field as a second line of defence; and a last one, over every text value and the
exception text alike, masks what still looks like personal data (e-mail addresses, E.164 phone
numbers, long runs of digits, the input values pydantic and PostgreSQL quote in their errors).
"""

import logging
import re
import sys
from collections.abc import MutableMapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TextIO
from uuid import UUID

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


# What personal data looks like in free text, for what a key-name list cannot see (an exception's
# message, a library's log line). A digit run inside a word or a UUID (hex groups joined by '-')
# is not matched, so ids and timestamps stay readable.
_LOOKS_PERSONAL = (
    (re.compile(r"input_value=.*?(?=, input_type=|\]$|$)", re.MULTILINE), "input_value=[redacted]"),
    (re.compile(r"(Key \([^)]*\)=\().*?(\))"), r"\1[redacted]\2"),
    (re.compile(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)+"), "[redacted: e-mail]"),
    (re.compile(r"(?<![\w+-])\+[1-9]\d{6,14}(?![\w-])"), "[redacted: phone]"),
    # Before the digit runs, which would take an IBAN's digits and leave its start. An IBAN (two
    # letters, two check digits, up to 30 letters and digits, in groups or not), and a
    # document number as passports and national ids write it (one to three capitals, 6 to 9 digits).
    (re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), "[redacted: account]"),
    (re.compile(r"\b[A-Z]{1,3}\d{6,9}\b"), "[redacted: document]"),
    (re.compile(r"(?<![\w.:+-])\d(?:[ -]?\d){8,}(?![\w.:-])"), "[redacted: digits]"),
)
PLAIN_VALUES = (bool, int, float, Decimal, UUID, datetime, date, type(None))
"""Values that cannot hold free text; anything else (bytes, an exception, an object) is masked as
the text the renderer would write for it."""
MASKED_TEXT_CHARS_MAX = 20_000
"""Longer texts (a huge exception) are cut before the patterns run, so a log line costs bounded time."""


def _mask(text: str) -> str:
    text = text[:MASKED_TEXT_CHARS_MAX]
    for pattern, replacement in _LOOKS_PERSONAL:
        text = pattern.sub(replacement, text)
    return text


def _masked(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return _mask(value)
    if isinstance(value, PLAIN_VALUES):
        return value
    if depth > REDACTION_DEPTH_MAX:
        return "[redacted: too deep]"
    if isinstance(value, dict):
        return {key: _masked(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked(item, depth + 1) for item in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return _mask(bytes(value).decode("utf-8", errors="replace"))
    return _mask(str(value))


def _mask_personal_text(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """The last line of defence, after the exception is rendered as text."""
    masked: dict[str, Any] = _masked(dict(event_dict))
    return masked


class OncePerCondition(logging.Filter):
    """For a person at a terminal: a library's warnings once per kind (logger and message
    template), with no repeats between progress bars; Homeward's own lines all come through."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("homeward") or record.name == "root":
            return True
        if record.levelno < logging.WARNING:
            return False
        condition = (record.name, str(record.msg))
        if condition in self.seen:
            return False
        if len(self.seen) < CONDITIONS_REMEMBERED_MAX:
            self.seen.add(condition)
        return True


CONDITIONS_REMEMBERED_MAX = 1000


def configure(
    service: str, level: str = "INFO", stream: TextIO = sys.stdout, *, human: bool = False
) -> structlog.stdlib.BoundLogger:
    """Route stdlib logging (FastStream, aiokafka) and structlog through one JSON renderer; with
    `human` (an operator's terminal), through one readable line each instead, libraries' warnings
    once per kind and nothing of theirs below a warning."""
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
                _mask_personal_text,
                # Ids (UUIDs), times and amounts are written as their text: a line below the level
                # never pays for turning them into text.
                structlog.dev.ConsoleRenderer(colors=stream.isatty())
                if human
                else structlog.processors.JSONRenderer(default=str),
            ],
        )
    )
    if human:
        handler.addFilter(OncePerCondition())
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
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # `report --html`: font cache notes
    structlog.contextvars.bind_contextvars(service=service)
    logger: structlog.stdlib.BoundLogger = structlog.get_logger("homeward")
    return logger
