"""Arrival's evidence handler over a run of evidence, against an in-memory stand-in for its SQL:
the run is decided exactly as if its events came one at a time."""

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from contracts.registry import envelope_adapter
from services.arrival.handlers import Policy, handle_evidence
from services.runtime.uow import ServiceDatabase, UnitOfWork
from tests.unit.factories import envelope, evidence_data

EVIDENCE = "arrival.evidence.v1"
VERIFIED = "arrival.verified.v1"
WINDOW = timedelta(hours=72)
DEPARTURE = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class FakeArrivalQueries:
    def __init__(self, case_id: UUID) -> None:
        self.case = {"case_id": case_id, "correlationid": uuid4(), "destination_country": "HN",
                     "flight_number": "XH123", "scheduled_departure": DEPARTURE,
                     "scheduled_arrival": DEPARTURE + timedelta(hours=5)}  # fmt: skip
        self.evidence: dict[UUID, dict[str, Any]] = {}
        self.decided: dict[UUID, str] = {}

    async def remember_evidence(self, connection: Any, **columns: list[Any]) -> Any:
        for index, evidence_id in enumerate(columns["evidence_ids"]):
            if evidence_id in self.evidence:
                continue
            self.evidence[evidence_id] = {
                "case_id": columns["case_ids"][index], "evidence_id": evidence_id, "source": columns["sources"][index],
                "observed_at": columns["observed_ats"][index], "received_at": datetime.now(UTC),
                "country": columns["countries"][index], "identity_match_score": columns["identity_match_scores"][index],
                "flight_number": columns["flight_numbers"][index], "status": columns["statuses"][index],
                "document_checked": columns["documents_checked"][index],
            }  # fmt: skip
            yield {"evidence_id": evidence_id}

    async def undecided_cases(self, connection: Any, *, case_ids: list[UUID]) -> Any:
        if self.case["case_id"] in case_ids and self.case["case_id"] not in self.decided:
            yield self.case

    async def evidence_for_cases(self, connection: Any, *, case_ids: list[UUID]) -> Any:
        for row in self.evidence.values():
            if row["case_id"] in case_ids:
                yield row

    async def decide(self, connection: Any, *, case_ids: list[UUID], rules: list[str], **_: Any) -> Any:
        for case_id, rule in zip(case_ids, rules, strict=True):
            if case_id not in self.decided:
                self.decided[case_id] = rule
                yield {"case_id": case_id}


def _event(data: dict[str, Any]) -> Any:
    return envelope_adapter(EVIDENCE).validate_python(envelope(EVIDENCE, data))


async def test_the_event_that_completes_the_policy_is_the_cause_and_a_repeat_counts_once() -> None:
    case_id = uuid4()
    queries = FakeArrivalQueries(case_id)
    observed = (DEPARTURE + timedelta(hours=6)).isoformat()
    carrier = _event(evidence_data("carrier", case_id=str(case_id), observed_at=observed))
    app = _event(evidence_data("participant_app", case_id=str(case_id), observed_at=observed))
    uow = UnitOfWork(ServiceDatabase(None, "arrival", None), connection=object())  # type: ignore[arg-type]

    await handle_evidence([carrier, carrier, app, app], uow, queries=queries, policy=Policy(WINDOW))

    [row] = uow.pending
    assert row.topic == VERIFIED
    verified = envelope_adapter(VERIFIED).validate_json(row.value)
    assert verified.causationid == app.id, "decided by the check-in, as if the events came one by one"
    assert verified.data.rule == "carrier_and_app"
    assert set(verified.data.evidence_ids) == {carrier.data.evidence_id, app.data.evidence_id}
    assert len(queries.evidence) == 2
