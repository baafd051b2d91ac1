"""OpenTelemetry tracing across the services: one case is one trace, from `registration.submitted.v1`
to `stipend.disbursed.v1`, whichever services and workers it passes through.

Off by default. It is on when the standard variables ask for it: `OTEL_TRACES_EXPORTER` (`otlp`,
`console`) or an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`);
`OTEL_SDK_DISABLED=true` keeps it off. The SDK reads the rest itself (`OTEL_TRACES_SAMPLER`,
`OTEL_BSP_*`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`, default `homeward-<service>`).

How one case stays one trace without any service storing a trace context:

- the case's trace id is derived from its `correlationid` (the same on every event of the case);
- the span in which a service handles an event has an id derived from the service and the
  event's envelope id; every event a service emits carries a W3C `traceparent` header naming the
  span in which that service handled the emitted event's cause (its `causationid`), so the next
  service's span is that span's child, and a worker that acts on a stored cause later (a booking,
  a payout) is its child too;
- a batch gets a span of its own (its own trace) that links every event's span: the trace of the
  batch shows what was applied together, the trace of the case shows the case.

With tracing off the tracer is OpenTelemetry's no-op one: each call below costs a function call.
The id derivation is hand-written (a hash of the service and the envelope id) because the SDK
offers no way to choose a span's id but an IdGenerator, which `_chosen_ids` makes.
"""

import contextlib
import hashlib
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any
from uuid import UUID

import structlog
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags

from services.runtime.messages import Decoded, Undeliverable

TRACEPARENT = "traceparent"
TRACER_NAME = "homeward"
ENABLING = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
BATCH_LINKS_MAX = 128
"""Links a batch span carries at most (OpenTelemetry's default limit is 128)."""

_chosen: ContextVar[tuple[int, int] | None] = ContextVar("homeward_chosen_ids", default=None)
_enabled = False
_failures_said = False


def enabled() -> bool:
    return _enabled


def wanted(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether the standard OTEL_* variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter) or any(environ.get(name) for name in ENABLING)


def configure(service: str) -> bool:
    """Installs the SDK's tracer provider for this process when tracing is wanted; says if it did."""
    global _enabled
    if not wanted():
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or f"homeward-{service}"})
    provider = TracerProvider(resource=resource, id_generator=_chosen_ids())
    exporters: list[SpanExporter] = []
    for name in (os.environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(","):
        if name.strip() == "console":
            exporters.append(ConsoleSpanExporter())
        elif name.strip() == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
    if not exporters:
        structlog.get_logger("homeward.tracing").warning(
            "tracing.no_exporter", asked=os.environ.get("OTEL_TRACES_EXPORTER"), known="otlp, console"
        )
        return False
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def shutdown() -> None:
    """Exports what is still buffered (a service calls it as it stops)."""
    provider = trace.get_tracer_provider()
    with contextlib.suppress(Exception):
        provider.shutdown()  # type: ignore[attr-defined]


def _chosen_ids() -> Any:
    """The SDK's id generator, taking the ids a span is to have from `_chosen` when set (the SDK
    is imported only where tracing is on)."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class ChosenIds(RandomIdGenerator):
        def generate_span_id(self) -> int:
            chosen = _chosen.get()
            return chosen[1] if chosen is not None else super().generate_span_id()

        def generate_trace_id(self) -> int:
            chosen = _chosen.get()
            return chosen[0] if chosen is not None else super().generate_trace_id()

    return ChosenIds()


def case_trace_id(correlationid: UUID) -> int:
    """The case's trace id: the BLAKE2b-128 of its correlation id, not its bits, so that a
    trace-id-ratio sampler (which reads the low 64 bits) samples UUIDv4 and v7 cases alike, and
    every service decides the same for one case (`homeward case show` prints it)."""
    return int.from_bytes(hashlib.blake2b(correlationid.bytes, digest_size=16).digest()) or 1


def handling_span_id(service: str, event_id: UUID) -> int:
    """The id of the span in which `service` handled the event `event_id`."""
    digest = hashlib.blake2b(f"{service}:{event_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest) or 1


def traceparent(service: str, correlationid: UUID, causationid: UUID | None, event_id: UUID) -> str:
    """The `traceparent` of an event `service` emits: the case's trace, the span in which this
    service handled the event's cause (or, for an event with none, the event's own)."""
    span_id = handling_span_id(service, causationid or event_id)
    return f"00-{case_trace_id(correlationid):032x}-{span_id:016x}-01"


def parent_of(header: bytes | None, correlationid: UUID) -> tuple[Any | None, list[Link]]:
    """The parent context a `traceparent` header names, when it is of this case's trace; a header of
    another trace (an upstream app's own) becomes a link instead."""
    remote = _parsed(header)
    if remote is None:
        return None, []
    if remote.trace_id == case_trace_id(correlationid):
        return trace.set_span_in_context(NonRecordingSpan(remote)), []
    return None, [Link(remote)]


TRACEPARENT_FORMAT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
"""W3C Trace Context, version 00, exactly: lower-case hex, nothing after the flags."""


def _parsed(header: bytes | None) -> SpanContext | None:
    if not header:
        return None
    match = TRACEPARENT_FORMAT.fullmatch(header.decode(errors="replace").strip())
    if match is None:
        return None
    trace_id, span_id, flags = (int(part, 16) for part in match.groups())
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & TraceFlags.SAMPLED))


@contextlib.contextmanager
def batch(service: str, items: Sequence[Decoded | Undeliverable]) -> Iterator[None]:
    """Spans for a batch: each event's in its case's trace, and the batch's own linking them. They
    end when the block does (after the commit), so a span's time is the batch's. Tracing never
    fails a batch: spans that cannot be made are left out, and said once in the log."""
    if not _enabled:
        yield
        return
    spans: list[Span] = []
    batch_span: Any = contextlib.nullcontext()
    try:
        tracer = trace.get_tracer(TRACER_NAME)
        spans = [_handling(tracer, service, item) for item in items if isinstance(item, Decoded)]
        spans += [
            _refusing(tracer, service, item)
            for item in items
            if isinstance(item, Undeliverable) and item.event_id is not None and item.correlationid is not None
        ]
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.batch.message_count": len(items),
            "messaging.destination.name": ",".join(sorted({i.record.topic for i in items})),
        }
        links = [Link(span.get_span_context()) for span in spans[:BATCH_LINKS_MAX]]
        batch_span = tracer.start_as_current_span(f"process batch {service}", kind=SpanKind.CONSUMER, links=links,
                                                  attributes=attributes)  # fmt: skip
    except Exception:
        _failed_once("tracing.batch_spans_failed")
    try:
        with batch_span:
            yield
    finally:
        _end(spans)


def _end(spans: list[Span]) -> None:
    for span in spans:
        with contextlib.suppress(Exception):
            span.end()


def _failed_once(event: str) -> None:
    global _failures_said
    if not _failures_said:
        _failures_said = True
        structlog.get_logger("homeward.tracing").warning(event, exc_info=True)


def _handling(tracer: trace.Tracer, service: str, item: Decoded) -> Span:
    envelope, topic = item.envelope, item.record.topic
    parent, links = parent_of(item.record.header(TRACEPARENT), envelope.correlationid)
    attributes: dict[str, Any] = {"messaging.system": "kafka", "messaging.destination.name": topic,
                                  "messaging.message.id": str(envelope.id), "homeward.service": service}  # fmt: skip
    case_id = getattr(envelope.data, "case_id", None)
    if case_id is not None:
        attributes["homeward.case_id"] = str(case_id)
    token = _chosen.set((case_trace_id(envelope.correlationid), handling_span_id(service, envelope.id)))
    try:
        return tracer.start_span(f"process {topic}", context=parent, kind=SpanKind.CONSUMER, links=links,
                                 attributes=attributes)  # fmt: skip
    finally:
        _chosen.reset(token)


def _refusing(tracer: trace.Tracer, service: str, item: Undeliverable) -> Span:
    """The span of a record refused with an id still readable: its rejection event names it."""
    assert item.event_id is not None and item.correlationid is not None
    attributes = {
        "messaging.system": "kafka",
        "messaging.destination.name": item.record.topic,
        "messaging.message.id": str(item.event_id),
        "homeward.service": service,
        "error.type": item.code,
    }
    token = _chosen.set((case_trace_id(item.correlationid), handling_span_id(service, item.event_id)))
    try:
        return tracer.start_span(f"dead-letter {item.record.topic}", kind=SpanKind.CONSUMER, attributes=attributes)
    finally:
        _chosen.reset(token)


@contextlib.contextmanager
def work(service: str, name: str, items: Iterable[tuple[UUID, UUID, UUID | None]]) -> Iterator[None]:
    """Spans for a worker's pass (a booking, a payout): each item `(case id, correlation id, cause
    event id)` gets one in its case's trace, the child of the span in which this service handled
    its cause. Like `batch`, it never fails the pass."""
    if not _enabled:
        yield
        return
    spans: list[Span] = []
    try:
        tracer = trace.get_tracer(TRACER_NAME)
        for case_id, correlationid, cause in items:
            attributes = {"homeward.service": service, "homeward.case_id": str(case_id)}
            if cause is None:  # a root in the case's trace
                token = _chosen.set((case_trace_id(correlationid), random.getrandbits(64) or 1))
                try:
                    spans.append(tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes))
                finally:
                    _chosen.reset(token)
                continue
            remote = SpanContext(case_trace_id(correlationid), handling_span_id(service, cause), is_remote=True,
                                 trace_flags=TraceFlags(TraceFlags.SAMPLED))  # fmt: skip
            parent = trace.set_span_in_context(NonRecordingSpan(remote))
            spans.append(tracer.start_span(name, context=parent, kind=SpanKind.CLIENT, attributes=attributes))
    except Exception:
        _failed_once("tracing.work_spans_failed")
    try:
        yield
    finally:
        _end(spans)
