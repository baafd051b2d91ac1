"""The identifiers Homeward mints: envelope ids and case ids.

UUIDv7 (RFC 9562): 48 bits of milliseconds, then random bits. They sort by creation time, so a new
row of a table keyed by one (every inbox, every case table) lands at the right-hand edge of its
B-tree index instead of on a random page: at a million cases the inboxes hold ten million keys,
and random keys touch a page apiece. A UUIDv7 tells when it was minted, to the millisecond; the
events that carry one say that already (`time`). Ids that others mint (applications, evidence)
stay whatever they chose, and `uuid-utils` mints ours (Python 3.11 has no uuid7).
"""

from uuid import UUID

from uuid_utils.compat import uuid7


def new_id() -> UUID:
    """A fresh, time-ordered UUID (version 7)."""
    return uuid7()
