"""Registration handlers against an in-memory stand-in for their SQL, with the real unit of work.

Nothing is flushed: the assertions read the events the handler queued in `uow.pending`.
"""

import json
import os
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from contracts.registry import envelope_adapter
from services.registration.handlers import Keys, handle_invalid_submission, handle_submitted
from services.runtime import casekeys, crypto
from services.runtime.messages import Undeliverable, decode
from services.runtime.uow import ServiceDatabase, UnitOfWork
from tests.unit.factories import envelope, record, submission

SUBMITTED = "registration.submitted.v1"
ACCEPTED = "registration.accepted.v1"
REJECTED = "registration.rejected.v1"
NAME_CANARY = "Zebulon"


class FakeRegistrationQueries:
    """The named queries of registration.sql, kept in dicts; called like aiosql: (connection, **params)."""

    def __init__(self) -> None:
        self.applications: dict[UUID, dict[str, Any]] = {}
        self.identity_claims: dict[str, UUID] = {}
        self.cases: dict[UUID, dict[str, Any]] = {}

    # Selects yield rows, as aiosql's do.

    async def claim_applications(
        self, connection: Any, *, application_ids: list[UUID], correlationids: list[UUID]
    ) -> AsyncIterator[dict[str, Any]]:
        for application_id, correlationid in zip(application_ids, correlationids, strict=True):
            if application_id not in self.applications:
                self.applications[application_id] = {"correlationid": correlationid, "outcome_topic": None}
                yield {"application_id": application_id}

    async def application_outcomes(
        self, connection: Any, *, application_ids: list[UUID]
    ) -> AsyncIterator[dict[str, Any]]:
        for application_id in dict.fromkeys(application_ids):
            row = self.applications[application_id]
            yield {"application_id": application_id, "outcome_topic": row["outcome_topic"],
                   "outcome_data": row["outcome_data"], "correlationid": row["correlationid"]}  # fmt: skip

    async def record_outcomes(
        self, connection: Any, *, application_ids: list[UUID], outcome_topics: list[str], outcome_data: list[str]
    ) -> None:
        for application_id, topic, data in zip(application_ids, outcome_topics, outcome_data, strict=True):
            # Stored as jsonb: what comes back is what JSON can carry.
            self.applications[application_id].update(outcome_topic=topic, outcome_data=json.loads(data))

    async def claim_identities(
        self, connection: Any, *, identity_keys: list[str], case_ids: list[UUID]
    ) -> AsyncIterator[dict[str, Any]]:
        for identity_key, case_id in zip(identity_keys, case_ids, strict=True):
            if identity_key not in self.identity_claims:
                self.identity_claims[identity_key] = case_id
                yield {"identity_key": identity_key, "case_id": case_id}

    async def identity_holders(self, connection: Any, *, identity_keys: list[str]) -> AsyncIterator[dict[str, Any]]:
        for identity_key in identity_keys:
            if identity_key in self.identity_claims:
                yield {"identity_key": identity_key, "case_id": self.identity_claims[identity_key]}

    async def open_cases(
        self, connection: Any, *, case_ids: list[UUID], application_ids: list[UUID], identity_keys: list[str],
        sealed: list[str], consent_versions: list[str], consented_ats: list[Any],
    ) -> None:  # fmt: skip
        for case_id, application_id, identity_key, one_sealed, version, consented_at in zip(
            case_ids, application_ids, identity_keys, sealed, consent_versions, consented_ats, strict=True
        ):
            assert case_id not in self.cases
            self.cases[case_id] = {"application_id": application_id, "identity_key": identity_key,
                                   "sealed": one_sealed, "consent": (version, consented_at)}  # fmt: skip


def _keys() -> Keys:
    readers = {purpose: crypto.Keyring(os.urandom(32)) for purpose in (casekeys.TRAVELER, casekeys.PAYOUT)}
    return Keys(identity_secret=os.urandom(32), readers=readers)


def _uow() -> UnitOfWork:
    return UnitOfWork(ServiceDatabase(None, "registration", None), connection=object())  # type: ignore[arg-type]


def _event(data: dict[str, Any]) -> Any:
    return envelope_adapter(SUBMITTED).validate_python(envelope(SUBMITTED, data))


def _emitted(uow: UnitOfWork) -> list[dict[str, Any]]:
    """The queued events as integrators will read them: JSON envelopes that satisfy the contract."""
    documents = []
    for row in uow.pending:
        document = json.loads(row.value)
        assert row.topic == document["type"]
        assert row.key == document["subject"]
        envelope_adapter(row.topic).validate_python(document)
        documents.append(document)
    return documents


async def _submit(data: dict[str, Any], queries: FakeRegistrationQueries, keys: Keys) -> tuple[Any, dict[str, Any]]:
    event, uow = _event(data), _uow()
    await handle_submitted([event], uow, queries=queries, keys=keys)
    [emitted] = _emitted(uow)
    return event, emitted


async def _submit_run(
    runs: list[dict[str, Any]], queries: FakeRegistrationQueries, keys: Keys
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Several submissions as one run (one batch of the topic), in order."""
    events, uow = [_event(data) for data in runs], _uow()
    await handle_submitted(events, uow, queries=queries, keys=keys)
    return events, _emitted(uow)


# Accepted ------------------------------------------------------------------------------------------


async def test_valid_submission_opens_a_case_and_emits_accepted() -> None:
    queries, keys = FakeRegistrationQueries(), _keys()
    data = submission(person__given_name=NAME_CANARY)

    event, accepted = await _submit(data, queries, keys)

    payload = accepted["data"]
    case_id = UUID(payload["case_id"])
    assert accepted["type"] == ACCEPTED
    assert accepted["source"] == "homeward/registration"
    assert accepted["correlationid"] == str(event.correlationid)
    assert accepted["causationid"] == str(event.id)
    assert accepted["subject"] == payload["case_id"]
    assert payload["application_id"] == data["application_id"]
    assert (payload["origin_airport"], payload["destination_country"], payload["destination_airport"]) == (
        "IAH",
        "HN",
        "TGU",
    )
    assert len(payload["identity_key"]) == 64 and int(payload["identity_key"], 16) >= 0
    assert NAME_CANARY not in payload["sealed"]
    assert NAME_CANARY not in json.dumps(accepted)
    assert list(queries.cases) == [case_id]
    for purpose in (casekeys.TRAVELER, casekeys.PAYOUT):
        part = casekeys.take(payload["sealed"], purpose)
        opened = casekeys.open_taken(keys.readers[purpose], part, case_id=str(case_id), purpose=purpose)
        assert opened["given_name"] == NAME_CANARY


# Rejected -------------------------------------------------------------------------------------------


async def test_ineligible_submission_emits_rejected_with_the_code_and_opens_no_case() -> None:
    queries = FakeRegistrationQueries()
    data = submission(destination__country="US")

    event, rejected = await _submit(data, queries, _keys())

    assert rejected["type"] == REJECTED
    assert rejected["correlationid"] == str(event.correlationid)
    assert rejected["causationid"] == str(event.id)
    assert rejected["data"]["application_id"] == data["application_id"]
    assert [(r["code"], r["field"]) for r in rejected["data"]["reasons"]] == [
        ("ineligible_destination", "destination.country")
    ]
    assert rejected["data"]["duplicate_of_case_id"] is None
    assert queries.cases == {}
    assert queries.identity_claims == {}


async def test_every_broken_eligibility_rule_is_a_reason() -> None:
    data = submission(consent__data_processing=False, person__date_of_birth="2015-01-01")

    _, rejected = await _submit(data, FakeRegistrationQueries(), _keys())

    assert [r["code"] for r in rejected["data"]["reasons"]] == ["consent_missing", "ineligible_age"]


async def test_same_document_on_another_application_is_a_duplicate_of_the_first_case() -> None:
    queries, keys = FakeRegistrationQueries(), _keys()
    _, first = await _submit(submission(identity_document__number="F 123-4567"), queries, keys)
    second_data = submission(identity_document__number="f1234567", person__given_name="Ana María")

    _, second = await _submit(second_data, queries, keys)

    first_case_id = first["data"]["case_id"]
    assert second["type"] == REJECTED
    assert second["data"]["application_id"] == second_data["application_id"]
    assert [r["code"] for r in second["data"]["reasons"]] == ["duplicate_registration"]
    assert second["data"]["duplicate_of_case_id"] == first_case_id
    assert [str(case_id) for case_id in queries.cases] == [first_case_id]


async def test_same_number_from_another_issuing_country_is_another_person() -> None:
    queries, keys = FakeRegistrationQueries(), _keys()
    await _submit(submission(identity_document__number="F1234567"), queries, keys)

    _, second = await _submit(
        submission(identity_document__number="F1234567", identity_document__issuing_country="GT"), queries, keys
    )

    assert second["type"] == ACCEPTED
    assert len(queries.cases) == 2


# Resubmission of one application id ---------------------------------------------------------------------


async def test_resubmitted_application_gets_the_first_acceptance_again_without_a_new_case() -> None:
    queries, keys = FakeRegistrationQueries(), _keys()
    data = submission()
    first_event, first = await _submit(data, queries, keys)

    retry_event, again = await _submit(data, queries, keys)

    assert retry_event.id != first_event.id
    assert again["type"] == ACCEPTED
    assert again["data"] == first["data"]
    assert again["correlationid"] == str(first_event.correlationid)
    assert again["causationid"] == str(retry_event.id)
    assert len(queries.cases) == 1


async def test_resubmitted_application_gets_the_first_rejection_again_even_if_now_eligible() -> None:
    queries, keys = FakeRegistrationQueries(), _keys()
    data = submission(consent__data_processing=False)
    _, first = await _submit(data, queries, keys)

    _, again = await _submit({**data, "consent": {"data_processing": True, "version": "2025-05"}}, queries, keys)

    assert again["type"] == REJECTED
    assert again["data"] == first["data"]
    assert queries.cases == {}


# Invalid submissions -------------------------------------------------------------------------------------


def _invalid(data: dict[str, Any]) -> tuple[dict[str, Any], Undeliverable]:
    document = envelope(SUBMITTED, data)
    bad = decode(record(SUBMITTED, document, offset=5))
    assert isinstance(bad, Undeliverable)
    return document, bad


async def test_invalid_submission_with_a_readable_application_id_is_rejected_as_invalid_payload() -> None:
    queries, uow = FakeRegistrationQueries(), _uow()
    document, bad = _invalid(submission(identity_document__expires_on="+15555550199"))

    await handle_invalid_submission(bad, uow, queries=queries)

    [rejected] = _emitted(uow)
    [reason] = rejected["data"]["reasons"]
    assert rejected["type"] == REJECTED
    assert rejected["data"]["application_id"] == document["data"]["application_id"]
    assert (reason["code"], reason["field"]) == ("invalid_payload", "identity_document.expires_on")
    assert "+15555550199" not in reason["message"]
    assert rejected["correlationid"] == document["correlationid"]
    assert rejected["causationid"] == document["id"]
    assert queries.cases == {}


async def test_corrected_resubmission_after_invalid_payload_repeats_the_first_outcome() -> None:
    queries, keys = FakeRegistrationQueries(), _keys()
    data = submission()
    _, bad = _invalid({**data, "passport_no": "X1234567"})
    uow = _uow()
    await handle_invalid_submission(bad, uow, queries=queries)
    [first] = _emitted(uow)

    _, again = await _submit(data, queries, keys)

    assert again["type"] == REJECTED
    assert again["data"] == first["data"]
    assert queries.cases == {}


async def test_invalid_submission_without_an_application_id_gets_no_answer() -> None:
    queries, uow = FakeRegistrationQueries(), _uow()
    bad = decode(record(SUBMITTED, b"{not json", offset=6))
    assert isinstance(bad, Undeliverable)

    await handle_invalid_submission(bad, uow, queries=queries)

    assert uow.pending == []
    assert queries.applications == {}


async def test_invalid_envelope_with_a_readable_application_id_is_answered_on_a_new_correlation() -> None:
    queries, uow = FakeRegistrationQueries(), _uow()
    data = submission()
    document = envelope(SUBMITTED, data, correlationid=None)
    document["correlationid"] = "not-a-uuid"
    bad = decode(record(SUBMITTED, document, offset=7))
    assert isinstance(bad, Undeliverable) and bad.application_id == UUID(data["application_id"])

    await handle_invalid_submission(bad, uow, queries=queries)

    [rejected] = _emitted(uow)
    [reason] = rejected["data"]["reasons"]
    assert (reason["code"], reason["field"]) == ("invalid_payload", "correlationid")
    assert rejected["correlationid"] == str(queries.applications[UUID(data["application_id"])]["correlationid"])


# A run of submissions in one batch ------------------------------------------------------------------


async def test_a_run_is_decided_in_order_as_if_one_at_a_time() -> None:
    """In one run: a person and their duplicate, the same application twice, an ineligible one."""
    queries, keys = FakeRegistrationQueries(), _keys()
    person = submission(identity_document__number="F1234567")
    duplicate = submission(identity_document__number="F 123-4567")
    ineligible = submission(destination__country="US")

    events, emitted = await _submit_run([person, duplicate, person, ineligible], queries, keys)

    assert [document["type"] for document in emitted] == [ACCEPTED, REJECTED, ACCEPTED, REJECTED]
    accepted, refused, again, not_eligible = emitted
    assert refused["data"]["duplicate_of_case_id"] == accepted["data"]["case_id"]
    assert again["data"] == accepted["data"]
    assert again["correlationid"] == str(events[0].correlationid)
    assert again["causationid"] == str(events[2].id)
    assert [r["code"] for r in not_eligible["data"]["reasons"]] == ["ineligible_destination"]
    assert [str(case_id) for case_id in queries.cases] == [accepted["data"]["case_id"]]
    # A later batch gets the recorded outcomes back.
    _, later = await _submit(duplicate, queries, keys)
    assert later["data"] == refused["data"]
