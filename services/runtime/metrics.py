"""What each service counts, for operators: Prometheus metrics (prometheus_client) served at
`/metrics` beside `/health` and `/ready`.

Counters move only after the database commit that made them true, so a rolled-back batch counts
nothing. Labels are topics, outcomes and error codes: never a participant's data, never an id.
"""

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.responses import Response

EVENTS = Counter(
    "homeward_events", "Inbound events, by topic and what became of them (applied, duplicate, dead_lettered)",
    ["topic", "outcome"],
)  # fmt: skip
DEAD_LETTERS = Counter(
    "homeward_dead_letters", "Inbound events copied to their dead-letter topic, by error code", ["topic", "code"]
)
BATCH_SECONDS = Histogram(
    "homeward_batch_seconds", "Time to apply one consumed batch in one transaction (inbox, handlers, outbox)"
)
PUBLISHED = Counter("homeward_outbox_published", "Outbox events the relay published, by topic", ["topic"])
PARKED = Counter("homeward_outbox_parked", "Outbox rows the broker refused for good, by topic", ["topic"])
RELAY_FAILURES = Counter("homeward_relay_failures", "Relay passes that failed and will be retried")
ERASED_CASES = Counter(
    "homeward_erased_cases", "Closed cases whose personal data was erased here (keys destroyed, copies removed)"
)
REDRIVEN = Counter("homeward_redriven_cases", "Stalled cases whose hand-over events were queued again")
UNREADABLE_BATCHES = Counter(
    "homeward_unreadable_batches", "Record batches stepped over because no library here reads them "
    "(codec_unavailable) or their bytes are damaged (corrupt_batch); `homeward dlq unreadable` lists them",
    ["topic", "reason"],
)  # fmt: skip
UNREADABLE_RECORDS = Counter(
    "homeward_unreadable_records", "Offsets inside the unreadable batches stepped over", ["topic"]
)
PAYOUTS = Counter(
    "homeward_payouts", "Payout attempts at the provider, by outcome (paid, declined, returned, unresolved, refused)",
    ["outcome"],
)  # fmt: skip
BOOKINGS = Counter(
    "homeward_bookings", "Booking attempts at the travel provider, by outcome (booked, retry, failed)", ["outcome"]
)
CANCELLATIONS = Counter(
    "homeward_cancellations", "Ticket cancellations of withdrawn cases at the travel provider, by outcome "
    "(cancelled, due: tried again later, failed: an operator has to look)", ["outcome"],
)  # fmt: skip

# Read at each scrape (the database's and the consumer's view at that moment).
CONSUMER_LAG = Gauge(
    "homeward_consumer_lag", "Records on an assigned partition not yet consumed (high-water mark minus position)",
    ["topic", "partition"],
)  # fmt: skip
OUTBOX_UNSENT = Gauge("homeward_outbox_unsent", "Outbox events waiting for the relay")
OUTBOX_OLDEST_UNSENT_SECONDS = Gauge("homeward_outbox_oldest_unsent_seconds", "Age of the oldest event waiting")
OUTBOX_PARKED = Gauge("homeward_outbox_parked_rows", "Outbox rows parked now (`homeward dlq parked`)")
PAYMENTS_WAITING = Gauge(
    "homeward_payments_waiting",
    "Stipends reserved and waiting for the provider or held for want of budget; callbacks not yet applied",
    ["status"],
)  # fmt: skip
BUDGET_AVAILABLE = Gauge("homeward_budget_available", "Program budget not yet spent or reserved, in its currency")
READY = Gauge(
    "homeward_ready", "Whether each readiness check passes at the scrape (1) or not (0): database, broker, consuming",
    ["check"],
)  # fmt: skip
OPEN_CASES = Gauge("homeward_open_cases", "Cases handed downstream and not yet seen to move on (re-drive candidates)")


def exposition() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
