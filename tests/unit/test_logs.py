"""Log lines are JSON, carry the service name, and never carry personal data."""

import io
import json
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
import structlog

from services.runtime.logs import configure

PII = {
    "given_name": "Zebulon",
    "phone": "+15555550199",
    "email": "zebulon@example.org",
    "account_number": "0012345678",
    "msisdn": "+50499887766",
    "document": "F1234567",
}


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Routes logging into a buffer and puts the global logging state back afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("aiokafka", "yoyo")}
    buffer = io.StringIO()
    try:
        yield buffer
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_personal_fields_are_redacted_and_the_service_is_named(stream: io.StringIO) -> None:
    logger = configure("registration", "INFO", stream=stream)

    logger.info("registration.accepted", case_id="c-1", **PII)

    [line] = _lines(stream)
    assert line["event"] == "registration.accepted"
    assert line["service"] == "registration"
    assert line["case_id"] == "c-1"
    assert line["level"] == "info"
    assert {key: line[key] for key in PII} == dict.fromkeys(PII, "[redacted]")
    for value in PII.values():
        assert value not in stream.getvalue()


def test_stdlib_loggers_write_the_same_json_lines(stream: io.StringIO) -> None:
    configure("travel", "INFO", stream=stream)

    logging.getLogger("faststream").warning("consumer restarted")

    [line] = _lines(stream)
    assert line["event"] == "consumer restarted"
    assert line["service"] == "travel"
    assert line["logger"] == "faststream"


def test_lines_below_the_level_are_dropped(stream: io.StringIO) -> None:
    logger = configure("arrival", "WARNING", stream=stream)

    logger.info("arrival.evidence_kept")
    logger.warning("arrival.window_expired", case_id="c-2")

    assert [line["event"] for line in _lines(stream)] == ["arrival.window_expired"]


def test_ids_are_written_as_their_text(stream: io.StringIO) -> None:
    """Handlers hand ids over as they are; only a line that is written turns them into text."""
    logger = configure("disbursement", "INFO", stream=stream)
    case_id = uuid4()

    logger.info("stipend.disbursed", case_id=case_id, amount=Decimal("1000.00"))

    [line] = _lines(stream)
    assert (line["case_id"], line["amount"]) == (str(case_id), "1000.00")


def test_exception_text_and_free_text_are_masked_where_they_look_personal(stream: io.StringIO) -> None:
    """The key-name list cannot see inside an exception's message or a library's line: a pattern
    backstop masks e-mail addresses, E.164 numbers, long digit runs and the inputs that pydantic
    and PostgreSQL quote, and leaves ids, times and amounts readable."""
    logger = configure("registration", "INFO", stream=stream)
    case_id = uuid4()
    try:
        raise ValueError(
            f"could not reach {PII['email']} or {PII['msisdn']}; account {PII['account_number']}; "
            "[type=string_too_long, input_value='Zebulon Quist', input_type=str]; "
            "DETAIL: Key (document)=(F1234567) already exists"
        )
    except ValueError:
        logger.exception("handler.failed", case_id=case_id, note=f"{PII['phone']} at 2026-12-01T10:00:00.123456+00:00")
    logging.getLogger("aiokafka").error("sent to %s", PII["email"])

    text = stream.getvalue()
    for value in (PII["email"], PII["msisdn"], PII["account_number"], PII["phone"], "Zebulon", "F1234567"):
        assert value not in text
    first, second = _lines(stream)
    assert first["case_id"] == str(case_id) and "2026-12-01T10:00:00.123456+00:00" in first["note"]
    assert "[redacted: e-mail]" in first["exception"] and "[redacted: phone]" in first["exception"]
    assert second["event"] == "sent to [redacted: e-mail]"


def test_values_that_are_not_text_are_masked_as_the_text_they_are_written_as(stream: io.StringIO) -> None:
    """Bytes, an exception object or any other value the renderer turns into text goes through the
    same backstop; so do IBANs and document numbers, which no key name announced."""
    logger = configure("travel", "INFO", stream=stream)
    case_id = uuid4()
    logger.warning(
        "provider.refused", case_id=case_id, amount=Decimal("1000.00"), attempt=2,
        body=b'{"email": "zebulon@example.org"}', error=ValueError("no account GB29 NWBK 6016 1331 9268 19"),
        seen={"HN12345678"}, detail="passport F1234567 and IBAN DE89370400440532013000 refused",
    )  # fmt: skip

    [line] = _lines(stream)
    text = stream.getvalue()
    for value in ("zebulon@example.org", "GB29 NWBK", "HN12345678", "F1234567", "DE89370400440532013000"):
        assert value not in text, value
    assert "[redacted: account]" in line["error"] and "[redacted: document]" in line["detail"]
    assert (line["case_id"], line["amount"], line["attempt"]) == (str(case_id), "1000.00", 2)
