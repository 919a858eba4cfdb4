"""The unit policy pushed down to the stations (``edge-policy/1``; docs/mqtt.md "Unit policy").

The centre publishes, retained on ``P/unit/U/policy``, one signed document per enforcement unit:
the roster (units, officers), the recorder assignments (which officer holds which recorder) and
the rules (erase policy, retention classes, upload deadline, quotas, allowed case-number
pattern). It is built the way The Update Framework builds its metadata:

- **its own key**: signed with the *policy key* (``ROOT/_policy/policy.key``), never with the
  archive's receipt key or a device key; a station trusts only the policy keys pinned in
  ``DATA_DIR/keys/policy/`` (``edge-agent policy trust``, ``archive enroll --pin-to``);
- **one signature over everything**: roster, assignments and rules travel in one document, so
  parts of different versions can never be mixed (TUF's mix-and-match attack);
- **versions never go back**: a station applies a document only when its ``version`` is above
  the one in force (rollback attack); the same version again is a no-op, the same version with
  other content is refused;
- **expiry**: a document past ``expires`` is refused, and a station whose policy in force has
  expired raises an alarm (a freeze attack: someone keeps the newer policy from it).

Signature: Ed25519 over the RFC 8785 bytes (:func:`agent.common.canon.canonical`) of the document
without ``sig``; ``key_id`` = first 16 hex digits of SHA-256 of the raw public key. The payload is
parsed once, strictly: duplicate keys, unknown fields, floats and wrong types are refused.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.common.canon import canonical
from agent.common.errors import EdgeError
from agent.evidence import keys
from agent.wire.trust_list import ArchiveKeys

FORMAT = "edge-policy/1"
#: the largest policy document a station accepts (a roster of ~20 000 officers)
MAX_BYTES = 4 << 20
#: default validity of a published document
DEFAULT_EXPIRES_DAYS = 30

_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NUMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PolicyError(EdgeError):
    """A policy document refused; ``reason`` is one word (malformed, unsigned, unknown_key,
    bad_signature, other_unit, expired, rollback, conflict, upgrade_needed)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class NotUnderstood(PolicyError):
    """JSON that is not a document this software reads (``fields``: the fields it does not know);
    ``raw`` kept so that :func:`verify` can still tell a genuinely signed document of newer
    software (``upgrade_needed``) from a forgery."""

    def __init__(self, raw: dict, fields: list[str], message: str):
        super().__init__("malformed", message)
        self.raw, self.fields = raw, fields


def _code(v: str) -> str:
    if not _CODE.match(v):
        raise ValueError("letters, digits, '_', '.', '-', 1-64 characters")
    return v


def _number(v: str) -> str:
    if not _NUMBER.match(v):
        raise ValueError("letters, digits, '_', '-', 1-32 characters")
    return v


def _name(v: str) -> str:
    if not v.strip() or _CONTROL.search(v):
        raise ValueError("1-64 printable characters")
    return v


def _pattern(v: str) -> str:
    try:
        re.compile(v)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return v


def _iso(v: str) -> str:
    try:
        t = _dt.datetime.fromisoformat(v)
    except ValueError:
        raise ValueError("an ISO 8601 time with UTC offset") from None
    if t.tzinfo is None:
        raise ValueError("an ISO 8601 time with UTC offset")
    return v


Code = Annotated[str, Field(max_length=64), AfterValidator(_code)]
Number = Annotated[str, Field(max_length=32), AfterValidator(_number)]
Name = Annotated[str, Field(max_length=64), AfterValidator(_name)]
Iso = Annotated[str, Field(max_length=40), AfterValidator(_iso)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Unit(_Model):
    code: Code = Field(description="Unit code (执法单位代码).")
    name: Name = Field(description="Unit name (执法单位名称).")


class Officer(_Model):
    number: Number = Field(description="Officer number (警号 / 执法证编号).")
    name: Name = Field(description="Officer name (姓名).")
    unit: Code = Field(description="Code of the officer's unit (one of units).")


class Assignment(_Model):
    recorder: Number = Field(description="Recorder serial (记录仪编号).")
    officer: Number = Field(description="Number of the officer who holds it (one of officers).")


class Retention(_Model):
    normal_days: int = Field(183, ge=183, le=36500,
                             description="Normal footage: kept at least this many days (at least six months).")
    important_days: int | None = Field(None, ge=183, le=36500,
                                       description="Important files (mark 1): days, or null = permanent.")
    evidence_proof_pattern: Annotated[str, Field(max_length=200), AfterValidator(_pattern)] | None = Field(
        None, description="Regular expression over the proof object (证明对象): an item whose proof object matches "
                          "is evidence, kept permanently (e.g. '妨碍执法|重大案件'); null = only the evidence mark.")


class Quotas(_Model):
    max_unarchived_items: int | None = Field(None, ge=1, le=10_000_000,
                                             description="Items a station may hold unarchived before it alarms.")
    max_unarchived_gb: int | None = Field(None, ge=1, le=1_000_000,
                                          description="Gigabytes a station may hold unarchived before it alarms.")


class Equipment(_Model):
    """The equipment rule (配备率): at least ``min_recorders`` recorders that count per
    ``per_officers`` officers of the unit, and at least ``min_rooms`` interview rooms per unit.
    The stations count in recorders per 100 officers, so the ratio must be a whole number of
    them (1 per 5 = 20, 1 per 4 = 25, 2 per 5 = 40; 1 per 3 is refused)."""

    min_recorders: int = Field(1, ge=1, le=100, description="Recorders that count ...")
    per_officers: int = Field(5, ge=1, le=1000, description="... per this many officers (1 per 5: 每五人一台).")
    min_rooms: int = Field(1, ge=0, le=100, description="Interview rooms per unit (每个执法单位至少一间).")

    @model_validator(mode="after")
    def _whole_per_hundred(self) -> "Equipment":
        if (self.min_recorders * 100) % self.per_officers:
            raise ValueError(f"{self.min_recorders} recorder(s) per {self.per_officers} officers is not a whole "
                             "number per 100 officers (the stations count per 100): use e.g. 1 per 4, 1 per 5, 2 per 5")
        pct = self.min_recorders * 100 // self.per_officers
        if not 1 <= pct <= 1000:
            raise ValueError(f"{self.min_recorders} per {self.per_officers} officers is {pct} per 100: allowed 1..1000")
        return self

    @property
    def min_ratio_pct(self) -> int:
        return self.min_recorders * 100 // self.per_officers


class Rules(_Model):
    erase_policy: Literal["after-archive", "after-local-verify", "never"] | None = Field(
        None, description="The docking stations' erase policy (dock.erase_policy); null leaves the station's own.")
    retention: Retention = Field(default_factory=Retention, description="Retention classes.")
    upload_deadline_h: int = Field(24, ge=1, le=720, description="Upload within this many hours after duty.")
    quotas: Quotas = Field(default_factory=Quotas, description="Station quotas.")
    case_number_pattern: Annotated[str, Field(max_length=200), AfterValidator(_pattern)] | None = Field(
        None, description="Regular expression every case number (案件编号) must match; null = any.")
    export_approval: bool = Field(True, description="An export from the archive needs a second user with the approver "
                                                   "role to approve the request (docs/custody.md); false: the request "
                                                   "with its reason suffices.")
    equipment: Equipment = Field(default_factory=Equipment,
                                 description="Equipment ratio thresholds the stations and the monitor judge by.")


class Content(_Model):
    """What the centre writes in policy.toml / policy.json: everything but the envelope."""

    rules: Rules = Field(default_factory=Rules)
    units: list[Unit] = Field(default_factory=list, max_length=1000)
    officers: list[Officer] = Field(default_factory=list, max_length=50_000)
    assignments: list[Assignment] = Field(default_factory=list, max_length=50_000)
    archive_keys: ArchiveKeys | None = Field(
        None, description="The archive trust list (agent/wire/trust_list.py): receiver keys the stations revoke, "
                          "and endorsed ones they pin. Filled by `archive policy publish` from the archive root's "
                          "receivers; absent when there is nothing to say (older stations read such a document).")

    @model_validator(mode="after")
    def _consistent(self) -> "Content":
        units = _unique([u.code for u in self.units], "units", "code")
        officers = _unique([o.number for o in self.officers], "officers", "number")
        _unique([a.recorder for a in self.assignments], "assignments", "recorder")
        for i, o in enumerate(self.officers):
            if o.unit not in units:
                raise ValueError(f"officers[{i}] ({o.number}): unit {o.unit!r} is not in units")
        for i, a in enumerate(self.assignments):
            if a.officer not in officers:
                raise ValueError(f"assignments[{i}] ({a.recorder}): officer {a.officer!r} is not in officers")
        return self


def _unique(values: list[str], where: str, field: str) -> set[str]:
    seen: set[str] = set()
    for i, v in enumerate(values):
        if v in seen:
            raise ValueError(f"{where}[{i}]: {field} {v!r} appears twice")
        seen.add(v)
    return seen


class Document(Content):
    """The signed document on ``P/unit/U/policy``."""

    format: Literal["edge-policy/1"]
    unit: Code
    version: int = Field(ge=1, le=2**53 - 1)
    issued: Iso
    expires: Iso
    key_id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    sig: Annotated[str, Field(max_length=100)]

    def expires_ts(self) -> float:
        return _dt.datetime.fromisoformat(self.expires).timestamp()

    def issued_ts(self) -> float:
        return _dt.datetime.fromisoformat(self.issued).timestamp()


def content_from(raw: Any, where: str = "policy") -> Content:
    """The policy content of a parsed file (TOML or JSON); one clear line on error."""
    try:
        return Content.model_validate(raw)
    except ValidationError as exc:
        raise EdgeError(f"{where}: {_explain(exc)}") from None


def _explain(exc: ValidationError) -> str:
    e = exc.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "(document)"
    msg = e["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"策略无效 / invalid policy: {loc}: {msg}{more}"


def _iso_at(ts: float) -> str:
    return _dt.datetime.fromtimestamp(int(ts), _dt.timezone.utc).isoformat()


def sign(key, unit: str, version: int, content: Content, *, now: float,
         expires_days: int = DEFAULT_EXPIRES_DAYS) -> bytes:
    """The payload to publish: ``content`` for ``unit`` as version ``version``, signed with the
    policy key, valid ``expires_days`` from ``now``."""
    if not 1 <= expires_days <= 3660:
        raise EdgeError(f"有效期无效 / expiry of {expires_days} days: 1 to 3660")
    body = {"format": FORMAT, "unit": _code(unit), "version": version, "issued": _iso_at(now),
            "expires": _iso_at(now + expires_days * 86400), **content.model_dump(mode="json"),
            "key_id": keys.key_id(key.public_key())}
    if body["archive_keys"] is None:  # nothing to say: a document older stations still read
        del body["archive_keys"]
    else:
        for e in body["archive_keys"]["revoke"]:  # a revocation names the key; endorsements are for pins
            del e["endorsed_by"], e["endorsement"]
    body["sig"] = keys.sign(key, canonical(body))
    Document.model_validate(body)  # what we send is what a station accepts
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _no_floats(text: str) -> Any:
    raise ValueError(f"floats are not allowed ({text})")


def parse(payload: bytes) -> tuple[Document, dict]:
    """Parse a payload strictly (no signature check yet): (document, the raw object)."""
    if len(payload) > MAX_BYTES:
        raise PolicyError("malformed", f"策略过大 / policy of {len(payload)} bytes, at most {MAX_BYTES}")
    try:
        raw = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_float=_no_floats,
                         parse_constant=_no_floats)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PolicyError("malformed", f"策略不是有效的 JSON / policy is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(raw, dict):
        raise PolicyError("malformed", "策略不是 JSON 对象 / policy is not a JSON object")
    if "sig" not in raw or "key_id" not in raw:
        raise PolicyError("unsigned", "策略未签名 / policy is not signed")
    try:
        return Document.model_validate(raw), raw
    except ValidationError as exc:
        unknown = sorted(".".join(str(p) for p in e["loc"]) for e in exc.errors() if e["type"] == "extra_forbidden")
        raise NotUnderstood(raw, unknown, _explain(exc)) from None


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def verify(payload: bytes, ring: keys.KeyRing, *, unit: str, now: float,
           in_force: tuple[int, str] | None = None) -> Document | None:
    """The document in ``payload`` if a station of ``unit`` must apply it now; None when it is the
    version in force again (``in_force`` = (version, sha256 of its payload): a retained message
    delivered again on reconnect). Raises :class:`PolicyError` otherwise.

    A document genuinely signed with a pinned key that this software cannot read — a rule field of
    a newer release (``rules.equipment`` reaching a station that predates it), or a value of a kind
    it does not know — is refused with ``upgrade_needed``, naming the fields: the station never
    applies part of a policy while ignoring a rule, and says to upgrade it (docs/custody.md,
    "Upgrading: stations first")."""
    try:
        doc, raw = parse(payload)
    except NotUnderstood as exc:
        _newer_software(exc, ring, unit=unit, in_force=in_force)
        raise  # not reached: _newer_software always raises
    _check_signature(raw, ring, doc.key_id, doc.sig)
    if doc.unit != unit:
        raise PolicyError("other_unit", f"策略属于其他单位 / policy is for unit {doc.unit}, this station is "
                                        f"of unit {unit}")
    if in_force is not None:
        version, sha = in_force
        if doc.version == version:
            if digest(payload) == sha:
                return None
            raise PolicyError("conflict", f"同一版本内容不同 / version {doc.version} again with other content: "
                                          "refused (a version is never reused)")
        if doc.version < version:
            raise PolicyError("rollback", f"策略版本回退 / policy version {doc.version} is older than version "
                                          f"{version} in force (rollback refused)")
    if doc.expires_ts() <= now:
        raise PolicyError("expired", f"策略已过期 / policy version {doc.version} expired at {doc.expires}")
    return doc


def _check_signature(raw: dict, ring: keys.KeyRing, key_id: str, sig: str) -> None:
    pub = ring.get(key_id)
    if pub is None and not ring.by_id:
        raise PolicyError("unknown_key", "本站未固定策略公钥 / no policy key is pinned on this station "
                                         "(edge-agent policy trust policy.pub)")
    if pub is None:
        raise PolicyError("unknown_key", f"策略签名密钥未被信任 / policy signed by key {key_id}, "
                                         "which is not a pinned policy key")
    body = {k: v for k, v in raw.items() if k != "sig"}
    try:
        data = canonical(body)
    except Exception:  # a value RFC 8785 cannot write (an integer beyond 2**53): nobody signed this
        data = None
    if data is None or not keys.verify_sig(pub, data, sig):
        raise PolicyError("bad_signature", "策略签名无效（伪造或被篡改）/ policy signature does not verify "
                                           "(forged or altered)")


def _newer_software(exc: NotUnderstood, ring: keys.KeyRing, *, unit: str, in_force: tuple[int, str] | None) -> None:
    """A document this software cannot read: a forgery or junk stays ``malformed`` (or
    ``unknown_key``/``bad_signature``); one genuinely signed for this unit, newer than the one in
    force, is ``upgrade_needed`` naming what this station does not know."""
    raw = exc.raw
    key_id, sig = raw.get("key_id"), raw.get("sig")
    if not isinstance(key_id, str) or not isinstance(sig, str):
        raise PolicyError("malformed", str(exc))
    _check_signature(raw, ring, key_id, sig)
    if raw.get("unit") != unit:
        raise PolicyError("other_unit", f"策略属于其他单位 / policy is for unit {raw.get('unit')}, this station is "
                                        f"of unit {unit}")
    version = raw.get("version")
    if in_force is not None and isinstance(version, int) and version <= in_force[0]:
        raise PolicyError("rollback", f"策略版本回退 / policy version {version} is not above version {in_force[0]} "
                                      "in force (refused)")
    if exc.fields:
        what_zh = f"本站软件不认识的字段 {', '.join(exc.fields)}"
        what_en = f"field(s) this station's software does not know: {', '.join(exc.fields)}"
    else:
        what_zh = "本站软件无法识别的内容"
        what_en = f"content this station's software cannot read ({str(exc).partition(' / ')[2] or exc})"
    raise PolicyError("upgrade_needed", f"策略版本 {version}（已验证签名，密钥 {key_id}）含{what_zh}；请升级本站软件，"
                                        f"升级前仍执行现行策略，新规则未生效 / policy version {version} (signature "
                                        f"verified, key {key_id}) has {what_en}; upgrade the station: until then the "
                                        "policy in force stays and the new rules are not applied")


def thresholds(doc: Document, applied_at: str | None = None):
    """The equipment thresholds of a policy document (agent/common/ratio.py), naming it as source."""
    from agent.common.ratio import Thresholds

    e = doc.rules.equipment
    return Thresholds(e.min_ratio_pct, e.min_rooms, source="policy", policy_version=doc.version,
                      policy_key_id=doc.key_id)
