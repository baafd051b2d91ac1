"""The v1 arrival verification policy: which evidence counts, and which combinations prove arrival."""

import itertools
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from services.arrival.domain import CaseFacts, Evidence, Verdict, counts, verify

WINDOW = timedelta(days=30)
DEPARTURE = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ARRIVAL = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
LANDED_AT = ARRIVAL + timedelta(minutes=10)
CASE = CaseFacts(
    destination_country="HN", flight_number="XH123", scheduled_departure=DEPARTURE, scheduled_arrival=ARRIVAL
)


def _evidence(source: str, observed_at: datetime = LANDED_AT, **fields: Any) -> Evidence:
    """Evidence received the moment it was observed, unless `received_at` says otherwise."""
    fields.setdefault("received_at", observed_at)
    fields.setdefault("country", "HN")
    return Evidence(evidence_id=uuid4(), source=source, observed_at=observed_at, **fields)


def office(checked: bool = True, **fields: Any) -> Evidence:
    return _evidence("partner_office", document_checked=checked, **fields)


def carrier(status: str = "landed", flight: str = "XH123", **fields: Any) -> Evidence:
    return _evidence("carrier", status=status, flight_number=flight, **fields)


def app(score: float = 0.94, **fields: Any) -> Evidence:
    return _evidence("participant_app", identity_match_score=score, **fields)


# The two ways to verify ----------------------------------------------------------------------------


def test_partner_office_with_document_checked_verifies_alone() -> None:
    record = office()

    assert verify(CASE, [record], WINDOW) == Verdict("partner_office", (record.evidence_id,))


def test_partner_office_without_document_check_does_not_verify() -> None:
    assert verify(CASE, [office(checked=False)], WINDOW) is None


def test_landed_booked_flight_and_app_match_verify_together() -> None:
    landed, check_in = carrier(), app(score=0.80)

    assert verify(CASE, [landed, check_in], WINDOW) == Verdict(
        "carrier_and_app", (landed.evidence_id, check_in.evidence_id)
    )


@pytest.mark.parametrize(
    "evidence",
    [
        pytest.param([carrier()], id="carrier-alone"),
        pytest.param([app()], id="app-alone"),
        pytest.param([carrier(status="boarded"), app()], id="boarded-not-landed"),
        pytest.param([carrier(flight="XH124"), app()], id="another-flight"),
        pytest.param([carrier(), app(score=0.79)], id="app-score-0.79"),
        pytest.param([carrier(), app(country="GT")], id="app-wrong-country"),
        pytest.param([carrier(country="GT"), app()], id="carrier-wrong-country"),
        pytest.param([office(country="GT")], id="office-wrong-country"),
    ],
)
def test_incomplete_or_wrong_evidence_does_not_verify(evidence: list[Evidence]) -> None:
    assert verify(CASE, evidence, WINDOW) is None


# When evidence counts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observed_at", "expected"),
    [
        (DEPARTURE - timedelta(seconds=1), False),
        (DEPARTURE, True),
        (ARRIVAL + WINDOW, True),
        (ARRIVAL + WINDOW + timedelta(seconds=1), False),
    ],
    ids=["before-departure", "at-departure", "window-end", "after-window"],
)
def test_evidence_counts_only_inside_departure_to_arrival_plus_window(observed_at: datetime, expected: bool) -> None:
    record = office(observed_at=observed_at)

    assert counts(record, CASE, WINDOW) is expected
    assert (verify(CASE, [record], WINDOW) is not None) is expected


def test_window_length_is_the_configured_one() -> None:
    record = office(observed_at=ARRIVAL + timedelta(days=10))

    assert verify(CASE, [record], timedelta(days=10)) is not None
    assert verify(CASE, [record], timedelta(days=9)) is None


@pytest.mark.parametrize(
    ("ahead", "expected"),
    [(timedelta(minutes=5), True), (timedelta(minutes=5, seconds=1), False), (timedelta(hours=3), False)],
    ids=["5-min-ahead", "just-over-5-min", "hours-ahead"],
)
def test_evidence_from_more_than_5_minutes_in_the_future_does_not_count(ahead: timedelta, expected: bool) -> None:
    record = office(observed_at=LANDED_AT, received_at=LANDED_AT - ahead)

    assert counts(record, CASE, WINDOW) is expected
    assert (verify(CASE, [record], WINDOW) is not None) is expected


def test_only_counted_evidence_is_combined() -> None:
    late_app = app(observed_at=ARRIVAL + WINDOW + timedelta(days=1))

    assert verify(CASE, [carrier(), late_app], WINDOW) is None


# Order and duplicates ------------------------------------------------------------------------------------


def test_evidence_order_does_not_change_the_verdict() -> None:
    early_landed = carrier(observed_at=ARRIVAL)
    late_landed = carrier(observed_at=ARRIVAL + timedelta(hours=1))
    early_app = app(observed_at=ARRIVAL + timedelta(minutes=30))
    late_app = app(observed_at=ARRIVAL + timedelta(days=2))
    noise = [carrier(status="boarded", observed_at=DEPARTURE), app(score=0.5), office(checked=False)]
    pieces = [late_landed, early_app, *noise, late_app, early_landed]

    verdicts = {verify(CASE, order, WINDOW) for order in itertools.permutations(pieces)}

    assert verdicts == {Verdict("carrier_and_app", (early_landed.evidence_id, early_app.evidence_id))}


def test_evidence_observed_at_the_same_moment_is_chosen_deterministically() -> None:
    twins = [office(observed_at=LANDED_AT) for _ in range(4)]
    shuffler = random.Random(20261123)
    orders = [shuffler.sample(twins, len(twins)) for _ in range(20)]

    verdicts = {verify(CASE, order, WINDOW) for order in orders}

    assert len(verdicts) == 1
    assert verdicts.pop() == Verdict("partner_office", (min(twins, key=lambda e: str(e.evidence_id)).evidence_id,))


def test_partner_office_verdict_wins_over_carrier_and_app_in_any_order() -> None:
    record = office()
    pieces = [carrier(), app(), record]

    verdicts = {verify(CASE, order, WINDOW) for order in itertools.permutations(pieces)}

    assert verdicts == {Verdict("partner_office", (record.evidence_id,))}


def test_duplicate_evidence_does_not_change_the_verdict() -> None:
    landed, check_in = carrier(), app()

    assert verify(CASE, [landed, landed, check_in, check_in, landed], WINDOW) == verify(
        CASE, [landed, check_in], WINDOW
    )


def test_duplicates_of_one_piece_do_not_stand_in_for_the_missing_one() -> None:
    landed = carrier()
    redelivered = replace(landed, received_at=landed.received_at + timedelta(hours=1))

    assert verify(CASE, [landed, landed, redelivered], WINDOW) is None


@pytest.mark.parametrize(
    ("piece", "reason"),
    [
        (carrier(country="GT"), "wrong_country"),
        (carrier(observed_at=DEPARTURE - timedelta(minutes=1)), "before_departure"),
        (carrier(observed_at=ARRIVAL + WINDOW + timedelta(seconds=1)), "after_window"),
        (carrier(received_at=LANDED_AT - timedelta(hours=1)), "from_the_future"),
        (office(checked=False), "document_not_checked"),
        (carrier(status="delayed"), "not_landed"),
        (carrier(flight="XH999"), "other_flight"),
        (app(score=0.79), "score_too_low"),
        (app(score=0.80), None),
        (carrier(), None),
        (office(), None),
    ],
)
def test_why_evidence_cannot_serve_the_policy(piece: Evidence, reason: str | None) -> None:
    """`homeward case show` says why a piece did not count, in the policy's words."""
    from services.arrival.domain import not_counted

    assert not_counted(piece, CASE, WINDOW) == reason


def test_the_reasons_agree_with_what_counts() -> None:
    """Outside the country, the window or the present (a reason of the first kind) is exactly what
    `counts` refuses; and a piece with no reason at all serves its rule in `verify`."""
    from services.arrival.domain import FROM_THE_FUTURE, not_counted

    rng = random.Random(11)
    outside = {"wrong_country", "before_departure", "after_window", FROM_THE_FUTURE}
    for _ in range(2000):
        observed = ARRIVAL + timedelta(hours=rng.uniform(-12, 24 * 35))
        received = observed + timedelta(minutes=rng.uniform(-20, 20))
        piece = rng.choice([carrier(status=rng.choice(["landed", "delayed"]), flight=rng.choice(["XH123", "XH9"])),
                            app(score=rng.uniform(0.5, 1.0)), office(checked=rng.random() < 0.7)])  # fmt: skip
        piece = replace(piece, observed_at=observed, received_at=received, country=rng.choice(["HN", "HN", "GT"]))
        reason = not_counted(piece, CASE, WINDOW)
        assert counts(piece, CASE, WINDOW) == (reason not in outside)
        if reason is None and piece.source == "partner_office":
            assert verify(CASE, [piece], WINDOW) is not None
