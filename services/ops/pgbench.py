"""pgbench beside Homeward's benchmarks: the server's plain write-transaction rate, measured in
the same run, in a throwaway database on the same server, so a figure has its baseline."""

import asyncio
import os
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import asyncpg

PGBENCH_SECONDS_DEFAULT = 10
PGBENCH_SECONDS_MAX = 3600
PGBENCH_SCALE = 1
PGBENCH_THREADS_MAX = 2
# pgbench -i and connection setup come on top of the timed run.
PGBENCH_GRACE_SECONDS = 120
CONNECT_TIMEOUT_SECONDS = 30.0
COMMAND_TIMEOUT_SECONDS = 60.0
OUTPUT_TAIL_CHARS = 2000
DATABASE_PREFIX = "homeward_bench_"
TPS_LINE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)


def database_url_for(server_url: str, database: str) -> str:
    """The URL of another database on the same server."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def execute(database_url: str, statement: str) -> None:
    # CREATE and DROP DATABASE cannot run in a transaction; asyncpg's execute opens none.
    connection = await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        await connection.execute(statement, timeout=COMMAND_TIMEOUT_SECONDS)
    finally:
        await connection.close()


async def pgbench_tps(bin_dir: Path, bench_url: str, clients: int, seconds: int) -> float:
    """pgbench's simple-update transactions per second (without connection time) on the bench database."""
    parts = urlsplit(bench_url)
    target = [
        *(["-h", parts.hostname] if parts.hostname else []),
        *(["-p", str(parts.port)] if parts.port else []),
        *(["-U", parts.username] if parts.username else []),
        parts.path.lstrip("/"),
    ]
    environment = {**os.environ, "PGPASSWORD": parts.password} if parts.password else None
    pgbench = str(bin_dir / "pgbench")
    await _command([pgbench, "-i", "-q", "-s", str(PGBENCH_SCALE), *target], environment, PGBENCH_GRACE_SECONDS)
    threads = min(PGBENCH_THREADS_MAX, clients)
    run = [pgbench, "-N", "-c", str(clients), "-j", str(threads), "-T", str(seconds), "-M", "prepared", *target]
    output = await _command(run, environment, seconds + PGBENCH_GRACE_SECONDS)
    found = TPS_LINE.search(output)
    if found is None:
        raise RuntimeError(f"pgbench printed no tps line:\n{output[-OUTPUT_TAIL_CHARS:]}")
    return float(found.group(1))


async def _command(arguments: list[str], environment: dict[str, str] | None, timeout_seconds: float) -> str:
    process = await asyncio.create_subprocess_exec(
        *arguments,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=environment,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout_seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"{Path(arguments[0]).name} did not finish within {timeout_seconds} s") from None
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{Path(arguments[0]).name} exited with {process.returncode}:\n{text[-OUTPUT_TAIL_CHARS:]}")
    return text


async def throwaway_tps(bin_dir: Path, server_url: str, clients: int, seconds: int) -> float:
    """pgbench -N in a database of its own on the server of `server_url`, dropped afterwards."""
    name = f"{DATABASE_PREFIX}pgbench_{uuid4().hex[:12]}"
    await execute(server_url, f'CREATE DATABASE "{name}"')
    try:
        return await pgbench_tps(bin_dir, database_url_for(server_url, name), clients, seconds)
    finally:
        await execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
