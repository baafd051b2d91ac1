"""Wake-ups instead of polls: a PostgreSQL LISTEN, so a loop (the outbox relay, a worker) runs
when a commit gave it work rather than every few milliseconds in case one did. One connection
listens on every channel a service's loops wait on.

PostgreSQL delivers a NOTIFY only when the transaction that sent it commits, so a wake-up never
arrives before the work is visible. Nothing depends on it arriving: the waiter also wakes after a
fallback pause, and while the listening connection is down (the database restarting) the loop
simply runs at that pace until the listener is back.
"""

import asyncio
import contextlib
from typing import Any

import asyncpg
import structlog

from services.runtime.db import TRANSIENT_ERRORS

RECONNECT_BACKOFF_SECONDS = 0.5
RECONNECT_BACKOFF_SECONDS_MAX = 10.0
CONNECT_TIMEOUT_SECONDS = 10.0
LIVENESS_CHECK_SECONDS = 5.0

logger = structlog.get_logger("homeward.wakeup")


class Signal:
    """Set by a notification on one channel; `wait` returns when woken, stopping, or after a pause."""

    def __init__(self) -> None:
        self._woken = asyncio.Event()

    def wake(self, *_: Any) -> None:
        self._woken.set()

    async def wait(self, stopping: asyncio.Event, timeout_seconds: float) -> None:
        """Returns once woken (and clears the wake-up), once stopping, or after `timeout_seconds`."""
        woken = asyncio.ensure_future(self._woken.wait())
        stopped = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({woken, stopped}, timeout=timeout_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            stopped.cancel()
        self._woken.clear()


class Wakeup(Signal):
    """The listener of a service, itself the signal of its first channel (the outbox's);
    `signal(channel)` adds another channel, heard on the same connection."""

    def __init__(self, database_url: str, channel: str) -> None:
        super().__init__()
        self.database_url = database_url
        self.channel = channel
        self.signals: dict[str, Signal] = {channel: self}
        self.listening = False
        self.sessions = 0
        """How many times a listening connection was opened (for operators and tests)."""

    def signal(self, channel: str) -> Signal:
        """The signal of `channel`; ask before `listen` starts."""
        return self.signals.setdefault(channel, Signal())

    async def listen(self, stopping: asyncio.Event) -> None:
        """Keeps a LISTEN connection open until stopping; reconnects with a doubling pause when it drops."""
        backoff = RECONNECT_BACKOFF_SECONDS
        while not stopping.is_set():
            try:
                connection = await asyncpg.connect(self.database_url, timeout=CONNECT_TIMEOUT_SECONDS)
            except TRANSIENT_ERRORS:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), backoff)
                backoff = min(RECONNECT_BACKOFF_SECONDS_MAX, backoff * 2)
                continue
            backoff = RECONNECT_BACKOFF_SECONDS
            await self._listen_on(connection, stopping)

    async def _listen_on(self, connection: asyncpg.Connection, stopping: asyncio.Event) -> None:
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _: lost.set())
            for channel, signal in self.signals.items():
                await connection.add_listener(channel, signal.wake)
            self.listening, self.sessions = True, self.sessions + 1
            # Whatever was committed while nobody listened is picked up by one pass now.
            for signal in self.signals.values():
                signal.wake()
            # The termination callback is the signal; the check is for a loss it missed.
            while not (stopping.is_set() or lost.is_set() or connection.is_closed()):
                await _first(stopping.wait(), lost.wait(), asyncio.sleep(LIVENESS_CHECK_SECONDS))
        except TRANSIENT_ERRORS:
            logger.warning("wakeup.listener_lost", channels=sorted(self.signals))
        finally:
            self.listening = False
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await asyncio.wait_for(connection.close(), CONNECT_TIMEOUT_SECONDS)


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def outbox_channel(schema: str) -> str:
    """The channel the outbox trigger of `schema` notifies (runtime migration 0003)."""
    return f"{schema}.outbox"
