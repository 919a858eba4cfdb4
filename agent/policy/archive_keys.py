"""The archive trust list of the unit policy, applied on the station (agent/wire/trust_list.py).

When the keeper applies a policy (signature by a pinned policy key, this unit, a version above the
one in force, not expired: agent/wire/policy.py), its ``archive_keys`` change which archive
(receiver) keys this station accepts receipts, answers and status from:

1. every key in ``revoke`` is revoked in ``DATA_DIR/keys/archive`` (kept in ``revoked/``, every
   pinned copy removed): from then on a receipt signed by it is ignored, the item stays;
2. every key in ``pin`` that is not revoked here, not pinned yet, and endorsed by an archive key
   this station already trusts is pinned as ``policy-RECEIVER-KEYID.pub``; one whose endorsement
   does not verify is not pinned, audited (``archive-key-refused``) and raises the critical alarm
   ``archive_key_refused`` (a policy key used to slip a key in);
3. the uplink reads its keys again at once (not at its next 10 s re-read).

Each change is written to the station's audit log (``archive-key-revoked``, ``archive-key-pinned``,
with the policy version and key). Applying is idempotent: the same list again changes nothing.
"""

from __future__ import annotations

import logging

from agent.wire import policy as wp
from agent.wire import trust_list as tl
from agent.wire.receipts import ArchiveTrust

log = logging.getLogger(__name__)

ALARM = "archive_key_refused"


class ArchiveKeysApplier:
    """An applier for :class:`~agent.policy.keeper.PolicyKeeper`: ``applier(doc, actor)``."""

    __name__ = "archive_keys"

    def __init__(self, agent, alarms=None):
        self.agent = agent
        self.alarms = alarms
        self.dir = tl.archive_keys_dir(agent.cfg.storage.data_dir)
        self.extra = list(agent.cfg.uplink.archive_keys)

    def trusted(self) -> ArchiveTrust:
        return ArchiveTrust.load([self.dir, *self.extra])

    def __call__(self, doc: wp.Document, actor: str) -> None:
        if doc.archive_keys is None:
            self._alarm(doc, [])
            return
        changed: list[bool] = []
        try:
            refused = self._revoke_and_pin(doc, actor, changed)
        finally:  # whatever failed after a revocation, the uplink takes up what was written
            if changed:
                self._reload()
        self._alarm(doc, refused)

    def _revoke_and_pin(self, doc: wp.Document, actor: str, changed: list[bool]) -> list:
        ak = doc.archive_keys
        audit = self.agent.store.audit
        why = {"policy_version": doc.version, "policy_key": doc.key_id}
        for k in ak.revoke:
            if tl.revoke_key(self.dir, k.key()):
                changed.append(True)
                audit.append("archive-key-revoked", None, actor=actor, receiver=k.receiver, key_id=k.key_id,
                             public=k.public, **why)
                log.warning("policy v%s: archive key %s (%s) revoked on this station", doc.version, k.key_id,
                            k.receiver)
        refused = []
        for k in ak.pin:
            trust = self.trusted()
            if k.key_id in trust.revoked or k.key_id in trust.ring.by_id:
                continue  # revoked here (never pinned again) or pinned already
            bad = tl.endorsement_ok(k, trust.ring.by_id)
            if bad is not None:
                refused.append(k)
                audit.append("archive-key-refused", None, actor=actor, receiver=k.receiver, key_id=k.key_id,
                             reason=bad, **why)
                log.error("policy v%s: archive key %s (%s) not pinned: %s", doc.version, k.key_id, k.receiver, bad)
                continue
            dest = tl.pin_key(self.dir, k.key(), f"policy-{k.receiver}")
            if dest is not None:
                changed.append(True)
                audit.append("archive-key-pinned", None, actor=actor, receiver=k.receiver, key_id=k.key_id,
                             endorsed_by=k.endorsed_by, path=str(dest), **why)
                log.info("policy v%s: archive key %s (%s) pinned, endorsed by %s", doc.version, k.key_id, k.receiver,
                         k.endorsed_by)
        return refused

    def _reload(self) -> None:
        up = getattr(self.agent, "uplink", None)
        reload = getattr(up, "reload_trust", None)
        if reload is not None:
            log.info("archive keys trusted now: %s", ", ".join(reload()) or "none")

    def _alarm(self, doc: wp.Document, refused: list) -> None:
        if self.alarms is None:
            return
        try:
            if not refused:
                self.alarms.clear_alarm(ALARM, source="policy")
                return
            ids = ", ".join(f"{k.key_id} ({k.receiver})" for k in refused)
            self.alarms.raise_alarm(
                ALARM, f"策略版本 {doc.version} 中的归档公钥 {ids} 未经本站信任的归档密钥背书，未固定"[:240],
                f"policy version {doc.version} names archive key(s) {ids} without the endorsement of an archive "
                "key this station trusts: not pinned"[:400], source="policy")
        except Exception:
            log.exception("alarm %s", ALARM)
