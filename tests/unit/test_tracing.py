"""Tracing's pieces without a broker: when it is on, the W3C header it writes and reads, the ids
that keep a case in one trace; and that, off (the default), it does nothing."""

import re
from uuid import UUID, uuid4

from services.runtime import tracing

CORRELATION = UUID("0192f4c2-1111-7222-8333-444455556666")


def test_it_is_off_unless_the_standard_variables_ask() -> None:
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert not tracing.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})


def test_an_emitted_event_names_the_case_trace_and_the_span_that_handled_its_cause() -> None:
    cause, event = uuid4(), uuid4()
    header = tracing.traceparent("travel", CORRELATION, cause, event)
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", header)
    assert int(header.split("-")[1], 16) == tracing.case_trace_id(CORRELATION)
    assert int(header.split("-")[2], 16) == tracing.handling_span_id("travel", cause)
    assert tracing.handling_span_id("travel", cause) != tracing.handling_span_id("arrival", cause)
    parent, links = tracing.parent_of(header.encode(), CORRELATION)
    assert parent is not None and links == []


def test_a_ratio_sampler_keeps_a_share_of_uuid7_cases_too() -> None:
    """The low 64 bits a trace-id-ratio sampler reads are spread evenly, whatever the UUID version."""
    import uuid_utils

    low = [tracing.case_trace_id(UUID(str(uuid_utils.uuid7()))) & (2**64 - 1) for _ in range(2000)]
    assert 0.05 < sum(value < 2**64 // 10 for value in low) / len(low) < 0.15


def test_a_header_of_another_trace_is_a_link_and_a_malformed_one_nothing() -> None:
    other = f"00-{uuid4().hex}-{'ab' * 8}-01".encode()
    parent, links = tracing.parent_of(other, CORRELATION)
    assert parent is None and len(links) == 1
    trace_hex = f"{tracing.case_trace_id(CORRELATION):032x}"
    for bad in (b"", b"00-XYZ", f"00-{trace_hex.upper()}-{'AB' * 8}-01".encode(),
                f"ff-{trace_hex}-{'ab' * 8}-01".encode(), f"00-{trace_hex}-{'0' * 16}-01".encode(),
                f"00-{trace_hex}-{'ab' * 8}-01-extra".encode()):  # fmt: skip
        assert tracing.parent_of(bad, CORRELATION) == (None, []), bad


def test_off_the_spans_are_nothing_at_all() -> None:
    assert not tracing.enabled()
    with tracing.batch("travel", []), tracing.work("travel", "book flight", [(uuid4(), CORRELATION, None)]):
        pass
