"""Tracing across the services, through `homeward up` with the OTLP exporter on: the spans arrive
at an OTLP/HTTP receiver held in memory by the test, and one case's spans, from all four services
and their workers, share one trace id (derived from the case's correlation id)."""

import asyncio
import gzip
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from services.devstack.embedded import free_port
from services.runtime import tracing
from tests.e2e.conftest import Running, homeward_up
from tests.support import homeward_cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SPANS_SECONDS_MAX = 60.0
SERVICES = {"homeward-registration", "homeward-travel", "homeward-arrival", "homeward-disbursement"}


async def _case_of(traced: Running, correlationid: Any) -> str:
    runtime = json.loads(await asyncio.to_thread((traced.state_dir / "runtime.json").read_text))
    connection = await asyncpg.connect(runtime["database_url"])
    try:
        found: str = await connection.fetchval(
            "SELECT c.case_id::text FROM registration.applications a JOIN registration.cases c USING (application_id) "
            "WHERE a.correlationid = $1",
            correlationid,
        )
        return found
    finally:
        await connection.close()


class Receiver:
    """An OTLP/HTTP trace receiver that keeps every span in memory."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.take(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def take(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            attributes = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    with self.lock:
                        self.spans.append({
                            "service": attributes.get("service.name"), "name": span.name,
                            "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(), "links": len(span.links),
                        })  # fmt: skip

    def of_trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [span for span in self.spans if span["trace_id"] == trace_id]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()


@pytest.fixture(scope="module")
def traced(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    otel = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "200"}  # fmt: skip
    with homeward_up(tmp_path_factory.mktemp("traced"), env_extra=otel) as running:
        yield running


async def test_one_case_is_one_trace_across_the_four_services(traced: Running, receiver: Receiver) -> None:
    demo = homeward_cli("demo", "--participants", "20", "--state-dir", str(traced.state_dir), timeout_seconds=300)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    runtime = json.loads(await asyncio.to_thread((traced.state_dir / "runtime.json").read_text))
    connection = await asyncpg.connect(runtime["database_url"])
    try:
        correlationid = await connection.fetchval(
            "SELECT a.correlationid FROM registration.applications a JOIN registration.cases c USING (application_id) "
            "JOIN disbursement.payments p USING (case_id) WHERE p.status = 'disbursed' LIMIT 1"
        )
    finally:
        await connection.close()
    trace_id = f"{tracing.case_trace_id(correlationid):032x}"
    case_id = await _case_of(traced, correlationid)
    shown = homeward_cli("case", "show", case_id, "--json", "--state-dir", str(traced.state_dir))
    assert json.loads(shown.stdout)["trace_id"] == trace_id, "case show names the case's trace"
    deadline = time.monotonic() + SPANS_SECONDS_MAX
    while True:
        spans = receiver.of_trace(trace_id)
        names = {span["name"] for span in spans}
        if {span["service"] for span in spans} >= SERVICES and {"book flight", "pay stipend"} <= names:
            break
        assert time.monotonic() < deadline, (
            f"the case's trace has only {sorted((s['service'], s['name']) for s in spans)}"
        )
        await asyncio.sleep(0.5)
    for name in ("process registration.submitted.v1", "process registration.accepted.v1", "process travel.booked.v1",
                 "process arrival.evidence.v1", "process arrival.verified.v1"):  # fmt: skip
        assert name in names, f"no span {name!r} in the case's trace"
    ids = {span["span_id"] for span in spans}
    # What a service did because of another's event is the child of that service's span; what an
    # upstream app sent (a registration, evidence, a withdrawal request) starts a span of its own.
    inbound = ("process registration.submitted.v1", "process arrival.evidence.v1",
               "process case.withdrawal_requested.v1")  # fmt: skip
    children = [span for span in spans if span["name"] not in inbound]
    orphans = [(span["service"], span["name"]) for span in children if span["parent_span_id"] not in ids]
    assert not orphans, f"spans whose parent is not in the case's trace: {orphans}"
    # And each batch has a span of its own that links the events it applied.
    assert any(span["name"].startswith("process batch") and span["links"] > 0 for span in receiver.spans)
