"""What waits for the signature check, per device: one queue in arrival order that, when full,
drops the oldest message that does not continue the device's signed sequence, so that a forgery
flood in a device's name faster than one core verifies does not push out its genuine messages.

Before its signature is checked a message in device A's name cannot be told from a forgery, and
each check costs an Ed25519 verify. What the monitor does know is where A's signed sequence stands:
the highest ``seq`` it verified in each of A's recent ``epoch`` values (an agent's sealers start a
new epoch at every start; ``seq`` counts within it). A message whose envelope header (read cheaply
on paho's thread, before any parse) continues it, a known epoch and a higher ``seq`` (within
:data:`SEQ_WINDOW`), is *expected*. The queue keeps arrival order (a genuine burst is checked in
order: nothing of it is refused as replayed); when it is full, the oldest message that is *not*
expected is dropped for the new one, and only a queue of expected messages refuses a new one.

Every message is still verified in full by the worker (``Ingest._handle``): the header decides
only what is dropped first, and a header that lies gets no further than the check. A forger who
cannot read A's messages (the shipped ACL: only the monitor reads device state, docs/security.md)
cannot know A's epoch, so its forgeries are what is dropped. One who can (a broker without the
ACL) can make them look expected, and then A's genuine messages compete with them again.
"""

from __future__ import annotations

import collections
import re

_HEAD = re.compile(rb'"epoch":\s*(\d{1,16})\s*,\s*"seq":\s*(\d{1,16})')
HEAD_BYTES = 600        # the header sits at the start of an envelope (agent/wire/envelope.py)
EPOCHS_KEPT = 4         # epochs remembered per device (an agent's status and health sealers differ)
SEQ_WINDOW = 1_000_000  # how far ahead of the last verified seq a message still counts as expected


class Expect:
    """Per device: epoch -> highest seq verified (a few recent epochs). Written by the worker
    after a verified message, read by paho's threads (plain dict reads)."""

    def __init__(self) -> None:
        self.by_dev: dict[str, dict[int, int]] = {}

    def note(self, dev: str, epoch: int, seq: int) -> None:
        d = self.by_dev.get(dev)
        if d is None:
            d = self.by_dev[dev] = {}
        if seq > d.get(epoch, 0):
            d[epoch] = seq
            if len(d) > EPOCHS_KEPT:
                del d[min(d)]

    def expected(self, dev: str, payload: bytes) -> bool:
        d = self.by_dev.get(dev)
        if not d:
            return False
        m = _HEAD.search(payload, 0, HEAD_BYTES)
        if m is None:
            return False
        last = d.get(int(m[1]))
        return last is not None and last < int(m[2]) <= last + SEQ_WINDOW


class Lanes:
    """One device's waiting messages, in arrival order, each marked expected or not."""

    __slots__ = ("q",)

    def __init__(self) -> None:
        self.q: collections.deque = collections.deque()

    def __len__(self) -> int:
        return len(self.q)

    def put(self, item, expected: bool, limit: int) -> str | None:
        """File ``item``: None, or "dropped" (the oldest unexpected message made room for it), or
        "refused" (not filed: the queue holds only expected messages)."""
        q = self.q
        if len(q) < limit:
            q.append((expected, item))
            return None
        for i, (exp, _item) in enumerate(q):
            if not exp:
                del q[i]
                q.append((expected, item))
                return "dropped"
        return "refused"

    def take(self):
        return self.q.popleft()[1]
