"""The MQTT topic tree: the one place topic names are built and parsed (docs/mqtt.md).

``P`` is ``mqtt.topic_prefix`` (default ``edge``), ``D`` a device id, ``U`` a unit code.

Device state (retained unless noted)::

    P/dev/D/status               birth/death: {"state": "online"|"offline", "bdseq": n, ...}
    P/dev/D/health               periodic health (not retained)
    P/dev/D/alarm/CODE           alarm raised (payload) / cleared (payload with "active": false)
    P/dev/D/component/NAME       per component status (bay-1, camera-main, microphone, sensor)
    P/dev/D/chain                signed chain checkpoint {count, head, sig}
    P/dev/D/ratio                equipment ratio report (docking stations)
    P/dev/D/cmd                  commands to the device (signed; not retained)
    P/dev/D/cmd/resp             command results (not retained)

Evidence transfer (not retained, QoS 1)::

    P/xfer/D/ITEM/manifest       manifest bytes + signature (start of an item)
    P/xfer/D/ITEM/chunk          one chunk: user properties file, offset, sha256; payload the bytes
    P/xfer/D/ITEM/finish         {"files": [{name, size, hash}], ...}
    P/xfer/D/ITEM/query          which byte ranges does the archive hold?
    P/xfer/D/ITEM/annotation     a signed annotation added after archiving
    P/ack/D                      archive answers (the agent's response topic)

Archive::

    P/archive/status             retained receiver status
    P/archive/status/RID         retained status of receiver RID ({"state": "online"|"offline", ...})
    P/archive/checkpoint         retained signed checkpoint over the whole store (Merkle root, size)

Units (retained)::

    P/unit/U/policy              the unit's signed policy, roster and recorder assignments
                                 (agent/wire/policy.py; written by the archive, read by the unit's devices)

Operators::

    P/operator/TOKEN             answers to one `edge-agent command send` (TOKEN random per call)

Sessions (retained)::

    P/session/LOGIN              which process holds login LOGIN now (claimed on every connect;
                                 one login, one session: agent/wire/mqtt.py, "taken over")
"""

from __future__ import annotations

import re

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

XFER_KINDS = ("manifest", "chunk", "finish", "query", "annotation")


def safe_segment(value: str) -> bool:
    """A topic level built from an id: no wildcards, no separators, no NUL, no path tricks."""
    return bool(_SAFE.match(value or ""))


class Topics:
    def __init__(self, prefix: str = "edge"):
        if not safe_segment(prefix):
            raise ValueError(f"unsafe topic prefix {prefix!r}")
        self.p = prefix

    # device state
    def status(self, dev: str) -> str:
        return f"{self.p}/dev/{dev}/status"

    def health(self, dev: str) -> str:
        return f"{self.p}/dev/{dev}/health"

    def alarm(self, dev: str, code: str) -> str:
        return f"{self.p}/dev/{dev}/alarm/{code}"

    def component(self, dev: str, name: str) -> str:
        return f"{self.p}/dev/{dev}/component/{name}"

    def chain(self, dev: str) -> str:
        return f"{self.p}/dev/{dev}/chain"

    def ratio(self, dev: str) -> str:
        return f"{self.p}/dev/{dev}/ratio"

    def cmd(self, dev: str) -> str:
        return f"{self.p}/dev/{dev}/cmd"

    def cmd_resp(self, dev: str) -> str:
        return f"{self.p}/dev/{dev}/cmd/resp"

    # transfer
    def xfer(self, dev: str, item: str, kind: str) -> str:
        assert kind in XFER_KINDS
        return f"{self.p}/xfer/{dev}/{item}/{kind}"

    def ack(self, dev: str) -> str:
        return f"{self.p}/ack/{dev}"

    def archive_status(self) -> str:
        return f"{self.p}/archive/status"

    def archive_receiver(self, rid: str) -> str:
        """Retained status of one archive receiver (several may share the work)."""
        return f"{self.p}/archive/status/{rid}"

    def archive_checkpoint(self) -> str:
        """The archive's signed checkpoint over its whole store (agent/archive/merkle.py), retained."""
        return f"{self.p}/archive/checkpoint"

    def all_archive_receivers(self) -> str:
        return f"{self.p}/archive/status/+"

    def is_archive_receiver(self, topic: str) -> str | None:
        """The receiver id of a ``P/archive/status/RID`` topic, else None."""
        head, _, rid = topic.rpartition("/")
        return rid if head == self.archive_status() and safe_segment(rid) else None

    # units
    def unit_policy(self, unit: str) -> str:
        """The retained signed policy of unit ``unit`` (roster, assignments, rules)."""
        if not safe_segment(unit):
            raise ValueError(f"unsafe unit code {unit!r}")
        return f"{self.p}/unit/{unit}/policy"

    def all_unit_policies(self) -> str:
        return f"{self.p}/unit/+/policy"

    def parse_unit_policy(self, topic: str) -> str | None:
        """The unit code of a ``P/unit/U/policy`` topic, else None."""
        parts = topic.split("/")
        if len(parts) == 4 and parts[0] == self.p and parts[1] == "unit" and parts[3] == "policy" \
                and safe_segment(parts[2]):
            return parts[2]
        return None

    def operator_reply(self, token: str) -> str:
        """Where one operator's command answers come back (``command send``)."""
        if not safe_segment(token):
            raise ValueError(f"unsafe reply token {token!r}")
        return f"{self.p}/operator/{token}"

    def session(self, login: str) -> str:
        """The retained claim of login ``login``: the process holding it now (agent/wire/mqtt.py);
        ``%u`` in the ACL's pattern."""
        if not (safe_segment(login) or login == "%u"):
            raise ValueError(f"unsafe login {login!r}")
        return f"{self.p}/session/{login}"

    def all_chains(self) -> str:
        return f"{self.p}/dev/+/chain"

    # subscriptions
    def all_xfer(self, share: str | None = None) -> str:
        t = f"{self.p}/xfer/+/+/+"
        return f"$share/{share}/{t}" if share else t

    def all_dev(self) -> str:
        return f"{self.p}/dev/#"

    def all_of_dev(self, dev: str) -> str:
        """Every device topic of one device (the monitor subscribes its share of devices)."""
        if not safe_segment(dev):
            raise ValueError(f"unsafe device id {dev!r}")
        return f"{self.p}/dev/{dev}/#"

    @staticmethod
    def kind_of(topic: str) -> str:
        """The last level of a topic (a transfer message's kind: manifest, chunk, finish, ...)."""
        return topic.rpartition("/")[2]

    def parse_xfer(self, topic: str) -> tuple[str, str, str] | None:
        """(device, item, kind) of a transfer topic, or None if malformed or unsafe."""
        parts = topic.split("/")
        if len(parts) != 5 or parts[0] != self.p or parts[1] != "xfer":
            return None
        dev, item, kind = parts[2], parts[3], parts[4]
        if not (safe_segment(dev) and safe_segment(item)) or kind not in XFER_KINDS:
            return None
        return dev, item, kind

    def parse_dev(self, topic: str) -> tuple[str, str, str | None] | None:
        """(device, kind, name) of a device topic: kind is status|health|alarm|component|chain|ratio|cmd."""
        parts = topic.split("/")
        if len(parts) < 4 or parts[0] != self.p or parts[1] != "dev" or not safe_segment(parts[2]):
            return None
        dev, kind = parts[2], parts[3]
        name = "/".join(parts[4:]) or None
        if kind in ("alarm", "component") and (name is None or not safe_segment(name)):
            return None
        if kind not in ("status", "health", "alarm", "component", "chain", "ratio", "cmd"):
            return None
        return dev, kind, name
