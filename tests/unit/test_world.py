"""The world the demo, chaos and bench play speaks the public contract, though a run does not pay
for validating every message it sends."""

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from contracts.events import EVIDENCE_TOPIC, RegistrationSubmitted
from contracts.registry import envelope_adapter
from contracts.signing import SIGNATURE_HEADER, SIGNER_HEADER, decode_signature, verifies
from services.ops.world import (
    SHARES_WALLET,
    WITHDRAW_AFTER,
    WITHDRAW_BEFORE,
    Booking,
    EvidenceSigners,
    Tally,
    evidence_for,
    make_cohort,
)

COHORT = 200


def test_every_registration_of_a_cohort_is_a_valid_envelope() -> None:
    cohort = make_cohort(COHORT, random.Random(7))
    adapter = envelope_adapter(RegistrationSubmitted.TOPIC)
    for participant in cohort:
        envelope = adapter.validate_json(participant.envelope)
        assert envelope.data.application_id == participant.application_id


def test_two_cohorts_share_no_identity_document() -> None:
    """A second run against the same `up` must not be refused as duplicates of the first."""
    numbers = [
        {json.loads(p.envelope)["data"]["identity_document"]["number"] for p in make_cohort(COHORT, random.Random())}
        for _ in range(2)
    ]
    assert not numbers[0] & numbers[1]


def test_evidence_of_both_kinds_is_valid() -> None:
    booking = Booking(uuid4(), "HW123", datetime.now(UTC) + timedelta(hours=5))
    adapter = envelope_adapter(EVIDENCE_TOPIC)
    sources = set()
    rng = random.Random(3)
    signers = EvidenceSigners.generate("T")
    for _ in range(50):
        for record in evidence_for(booking, "HN", uuid4(), rng, signers):
            envelope = adapter.validate_json(record.value)
            assert str(envelope.data.case_id) == str(booking.case_id)
            sources.add(envelope.source)
            # Signed by the world's signer for the evidence's source, over the bytes sent.
            headers = dict(record.headers)
            signer_id, key = signers.keys[envelope.data.source]
            assert headers[SIGNER_HEADER] == signer_id.encode()
            signature = decode_signature(headers[SIGNATURE_HEADER])
            assert signature is not None and verifies(public_key_bytes(key), signature, record.value)
    assert sources == {"carrier", "participant-app", "partner-office"}


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_the_tally_is_finished_once_every_case_is_settled() -> None:
    tally = Tally()
    applications, cases = [uuid4(), uuid4()], [uuid4(), uuid4()]
    for application, case in zip(applications, cases, strict=True):
        tally.decided[application] = "accepted"
        tally.cases[case] = application
    tally.settled.add(cases[0])
    assert not tally.finished(2)
    tally.settled.add(cases[1])
    assert tally.finished(2)


def test_distinct_people_have_distinct_wallets_and_the_program_rules_add_their_few() -> None:
    cohort = make_cohort(1000, random.Random(7), program_rules=True)
    plans = Counter(participant.plan for participant in cohort)
    assert plans[WITHDRAW_BEFORE] == plans[WITHDRAW_AFTER] == plans[SHARES_WALLET] == 10
    assert all(p.expected == "accepted" for p in cohort if p.plan), "only eligible people have plans"
    wallets = Counter(json.dumps(p.payload["payout"], sort_keys=True) for p in cohort)
    shared = {wallet for wallet, count in wallets.items() if count > 1}
    sharers = [p for p in cohort if json.dumps(p.payload["payout"], sort_keys=True) in shared]
    assert len(shared) == 10 and len(sharers) == 20, "each sharer pays into one other person's wallet"
    assert Counter(p.plan for p in make_cohort(1000, random.Random(7))) == {None: 1000}, "off unless asked"
