"""What waits for the signature check, per device: two lanes, so that a forgery flood in a
device's name faster than one core verifies does not push out that device's genuine messages.

Before its signature is checked a message in device A's name cannot be told from a forgery, and
each check costs an Ed25519 verify. What the monitor does know is where A's signed sequence stands:
the highest ``seq`` it verified in each of A's recent ``epoch`` values (an agent's sealers start a
new epoch at every start; ``seq`` counts within it). So each device's queue has two lanes:

- **expected**: the envelope header (read cheaply on paho's thread, before any parse) continues a
  sequence A signed: a known epoch and a ``seq`` above the last verified one (within
  :data:`SEQ_WINDOW`). Taken first. Bounded; when full, a new message is refused.
- **other**: everything else (a device not yet heard, a new epoch after a restart, forgeries).
  Bounded, and when full the *oldest* message is dropped, so what has just arrived is still there
  when the device's turn comes; taken oldest-first while short, and at random once it holds
  :data:`SAMPLE_FROM` or more (a backlog: the monitor is flooded), so that a genuine message
  among forgeries is verified with a probability of about (checks per second for this device) /
  (messages per second in its name) instead of never.

The lanes decide only the order of the checks: every message is verified in full by the worker
(``Ingest._handle``); a header that lies about its epoch and seq gets no further than the check.
A forger who cannot read A's messages (the shipped ACL: only the monitor and A's own answers are
readable, docs/security.md) cannot know A's epoch, so cannot enter A's expected lane. One who can
(a broker without the ACL) can, and then A's genuine messages are again verified at random.
"""

from __future__ import annotations

import collections
import random
import re

_HEAD = re.compile(rb'"epoch":\s*(\d{1,16})\s*,\s*"seq":\s*(\d{1,16})')
HEAD_BYTES = 600        # the header sits at the start of an envelope (agent/wire/envelope.py)
EPOCHS_KEPT = 4         # epochs remembered per device (an agent's status and health sealers differ)
SEQ_WINDOW = 1_000_000  # how far ahead of the last verified seq a message still counts as expected
SAMPLE_FROM = 32        # the other lane is taken at random from this length on (a backlog)


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
    """One device's waiting messages: the expected lane, then the other one."""

    __slots__ = ("expected", "other")

    def __init__(self) -> None:
        self.expected: collections.deque = collections.deque()
        self.other: collections.deque = collections.deque()

    def __len__(self) -> int:
        return len(self.expected) + len(self.other)

    def put(self, item, expected: bool, limit: int) -> bool:
        """File ``item``; False when a message was dropped (this one in the expected lane, the
        oldest of the other lane)."""
        if expected:
            if len(self.expected) >= limit:
                return False
            self.expected.append(item)
            return True
        dropped = len(self.other) >= limit
        if dropped:
            self.other.popleft()
        self.other.append(item)
        return not dropped

    def take(self):
        if self.expected:
            return self.expected.popleft()
        n = len(self.other)
        if n < SAMPLE_FROM:
            return self.other.popleft()
        i = random.randrange(n)
        self.other.rotate(-i)
        item = self.other.popleft()
        self.other.rotate(i)
        return item
