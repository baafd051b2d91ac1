"""What `homeward up` reads: where the database and broker are (unset: embedded), where it keeps
its state, how many partitions its topics get, and where the sandbox providers listen and store."""

from pathlib import Path

from pydantic import Field

from services.runtime.settings import Infrastructure, KafkaSecurity, StateDirectory

REPLICAS_MAX = 8
"""Processes per service: beyond the partition count a replica only waits, and on two cores even
four of each (sixteen processes) mostly compete for the same CPU."""


class DevstackSettings(Infrastructure, KafkaSecurity, StateDirectory):
    kafka_port: int = Field(default=19092, description="Port of the embedded broker")
    topic_partitions: int = Field(
        default=3,
        ge=1,
        le=1024,
        description="Partitions per topic created by `up` (at least the replicas of a service, or some would idle)",
    )
    service_replicas: int = Field(
        default=1, ge=1, le=REPLICAS_MAX, description="Processes of each service `up` runs, in one consumer group"
    )
    intake_retention_ms: int = Field(
        default=7 * 24 * 3600 * 1000,
        ge=60_000,
        description="How long the broker keeps registration.submitted.v1, registration.accepted.v1 and their "
        ".dlq (personal data; sealed parts with wrapped keys): `dlq replay` works within it",
    )
    sandbox_payout_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the sandbox payout provider; 0 picks a free one"
    )
    sandbox_payout_store: Path | None = Field(default=None, description="SQLite file of the sandbox payout provider")
    sandbox_travel_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the sandbox travel provider; 0 picks a free one"
    )
    sandbox_travel_store: Path | None = Field(default=None, description="SQLite file of the sandbox travel provider")
