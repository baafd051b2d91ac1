"""The durable store every sandbox provider keeps on its own side: one SQLite file, one
connection used by one thread at a time, and short `BEGIN IMMEDIATE` write transactions, so that
two requests with the same key (even from two processes on the same file) cannot both insert."""

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosql

SQLITE_BUSY_TIMEOUT_SECONDS = 5.0
"""How long a request waits for another writer (another process on the same file) to commit."""


class SqliteStore:
    def __init__(self, path: Path, sql: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(
            path, timeout=SQLITE_BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        self._connection.row_factory = sqlite3.Row
        self._connection.execute("PRAGMA journal_mode=WAL")
        # What the sandbox answered for must survive a power cut, like at a real provider.
        self._connection.execute("PRAGMA synchronous=FULL")
        self._connection.execute("PRAGMA foreign_keys=ON")
        self._queries: Any = aiosql.from_path(sql, "sqlite3", mandatory_parameters=False)
        self._queries.create_schema(self._connection)

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")
