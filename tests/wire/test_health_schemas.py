"""docs/asyncapi.yaml: up to date with agent/health/payloads.py, valid JSON Schemas, every topic
of the topic tree described; the monitor's parsers agree with the schemas."""

from __future__ import annotations

import copy
import inspect
import json

import jsonschema
import pytest
import yaml

from agent.wire import asyncapi, health as pl, health_parse as hp
from agent.wire.topics import Topics
from tests.support.health import ROOT, asyncapi_schemas
from tools.fleet_sim import SimDevice


def test_asyncapi_document_is_current_and_valid():
    assert asyncapi.main(["--check"]) == 0, "run: python -m agent.wire.asyncapi"
    doc = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text(encoding="utf-8"))
    assert doc["asyncapi"].startswith("2.6")
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
    # every builder of agent/uplink/topics.py has its channel
    t = Topics("P")
    channels = {c.replace("{prefix}", "P").replace("{device}", "D").replace("{item}", "I")
                .replace("{key}", "K").replace("{name}", "N") for c in doc["channels"]}
    for meth, fn in inspect.getmembers(Topics, inspect.isfunction):
        params = list(inspect.signature(fn).parameters)[1:]
        if isinstance(inspect.getattr_static(Topics, meth), staticmethod):
            continue  # helpers on a topic string (kind_of), not builders
        if meth.startswith(("parse", "all_", "_")) or params not in (["dev"], ["dev", "code"], ["dev", "name"], []):
            continue
        args = {"dev": "D", "code": "K", "name": "N"}
        topic = fn(t, *[args[p] for p in params])
        assert topic in channels, f"{meth}: {topic} missing from docs/asyncapi.yaml"
    for kind in ("manifest", "chunk", "finish", "query", "annotation"):
        assert t.xfer("D", "I", kind) in channels


def test_simulator_payloads_follow_the_schemas():
    s = asyncapi_schemas()
    d = SimDevice("sim-1", "330106", "西湖区", "room")
    d.alarm = ("camera_offline", "camera-main", "主摄像头离线", "main camera offline", "critical")
    jsonschema.validate(d.health(), s["health"])
    jsonschema.validate(d.status("online"), s["status"])
    jsonschema.validate(d.alarm_payload(True, "2026-11-27T09:00:00+08:00"), s["alarm"])
    jsonschema.validate(d.alarm_payload(False, "2026-11-27T09:00:00+08:00"), s["alarm"])
    jsonschema.validate(d.ratio(40, 8), s["ratio"])


def _set(obj, path, value):
    o = obj
    for k in path[:-1]:
        o = o[k]
    if value is KeyError:
        del o[path[-1]]
    else:
        o[path[-1]] = value


MUTATIONS = [
    (("v",), 2), (("device",), "a/b"), (("device",), KeyError), (("unit_code",), ""), (("kind",), "car"),
    (("ts",), "yesterday"), (("uptime_s",), -1), (("uptime_s",), "1"), (("cpu_percent",), True),
    (("memory",), []), (("memory", "used_percent"), "x"), (("disk", "free_bytes"), -5), (("disk",), KeyError),
    (("buffer", "items"), 1.5), (("buffer", "oldest_age_s"), "old"), (("usage", "recorded_s"), None),
    (("uplink", "connected"), "yes"), (("clock", "synchronized"), "no"), (("clock", "offset_ms"), 1.5),
    (("components",), {"bad name!": {"state": "ok"}}), (("components",), {"bay-1": {"state": "broken"}}),
    (("alarms",), "disk_low"), (("alarms",), ["a b"]),
]


@pytest.mark.parametrize("path, value", MUTATIONS)
def test_monitor_parser_agrees_with_schema(path, value):
    schema = asyncapi_schemas()["health"]
    good = SimDevice("sim-1", "330106", "西湖区", "dock").health()
    jsonschema.validate(good, schema)
    hp.parse_health(json.dumps(good).encode())
    bad = copy.deepcopy(good)
    _set(bad, path, value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(pl.PayloadError) as exc:
        hp.parse_health(json.dumps(bad).encode())
    assert path[0] in str(exc.value) or "health" in str(exc.value)


def test_parsers_reject_garbage():
    for data in (b"", b"null", b"[]", b'"x"', b"\xff", b"{" * 10, b"1e999"):
        for fn in (hp.parse_health, hp.parse_status):
            with pytest.raises(pl.PayloadError):
                fn(data)
        with pytest.raises(pl.PayloadError):
            hp.parse_alarm(data, "disk_low")
        with pytest.raises(pl.PayloadError):
            hp.parse_ratio(data, "d")
    with pytest.raises(pl.PayloadError, match="above the limit"):
        hp.parse_health(b" " * (pl.MAX_PAYLOAD + 1))
    ratio = SimDevice("d", "U1", "u", "dock").ratio(10, 2)
    with pytest.raises(pl.PayloadError, match="does not match the topic"):
        hp.parse_ratio(json.dumps(ratio).encode(), "other")
    ratio["units"][0]["unit_code"] = "?"  # recorders of no known unit: left out, not an error
    assert hp.parse_ratio(json.dumps(ratio).encode(), "d")["units"] == []


def test_docking_station_bay_payload():
    """Bays are reported by the docking station through its ReportPort (agent/dock/state.py
    BayState): the schema and the monitor take them, with the bay's workflow state mapped for the page."""
    from agent.dock import state as bay

    st = bay.BayState(name="bay-3", state="downloading", label=bay.LABELS["downloading"], docked=True,
                      serial="A123456", battery=57, bytes_done=10, bytes_total=100)
    body = st.as_dict()
    jsonschema.validate(json.loads(json.dumps(body)), asyncapi_schemas()["component"])
    c = hp.parse_component(json.dumps(body).encode(), "bay-3")
    assert c["state"] == "ok" and c["raw_state"] == "downloading" and c["label"] == "下载中 / Downloading"
    assert c["detail"]["battery"] == 57
    body["state"] = "error"
    assert hp.parse_component(json.dumps(body).encode(), "bay-3")["state"] == "error"
    body["state"] = "Exploded!"
    with pytest.raises(pl.PayloadError, match="component.state"):
        hp.parse_component(json.dumps(body).encode(), "bay-3")
