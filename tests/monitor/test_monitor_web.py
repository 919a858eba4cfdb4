"""The monitor web page in a real headless Chromium (Debian chromium + chromedriver via selenium),
its history view worked through the form, the JSON API, and a screenshot in artifacts/monitor.png."""

from __future__ import annotations

import json
import shutil
import threading
import datetime as dt
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.support.broker import Mosquitto, fleet_credentials
from tests.support.health import ARTIFACTS, MonitorProc, publish
from tools.fleet_sim import FleetSim, enrol, make_fleet

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _sim(port, devices, **kw) -> FleetSim:
    """The simulated fleet, each device logged in as itself on the shipped broker."""
    return FleetSim("127.0.0.1", port, devices, credentials=fleet_credentials(port, [d.id for d in devices]), **kw)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


@pytest.fixture(scope="module")
def monitor_with_fleet(tmp_path_factory):
    """11 devices in 3 units: 6 whose connections died (wills: offline), 3 still reporting
    (online), 2 that went silent without a will (lost after 5 s); one active alarm; one device
    claiming another unit. Built once for the module: the tests only read it."""
    tmp_path = tmp_path_factory.mktemp("web")
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), shipped=True).start()
    try:
        yield from _fleet(tmp_path, broker)
    finally:
        broker.kill()


def _fleet(tmp_path, broker):
    db = tmp_path / "m.db"
    root = tmp_path / "archive"
    for f in (make_fleet(6, 3, "web"), make_fleet(2, 2, "gone"), make_fleet(3, 3, "live")):
        enrol(root, f)
    mon = MonitorProc(db, broker.port, web=0, lost_after=5, enrolment=root)
    dead = _sim(broker.port, make_fleet(6, 3, "web"), per_device=True, rate=2, officers=20)
    dead.connect()
    d = dead.devices[1]
    d.alarm = ("camera_offline", "camera-main", "主摄像头离线", "main camera offline", "critical")
    d._since = "2026-11-27T09:00:00+08:00"
    dead.pub(d, "alarm", d.alarm_key(), d.alarm_payload(True, d._since), 1, True)
    gone = _sim(broker.port, make_fleet(2, 2, "gone"), rate=2, officers=20)
    gone.connect()
    gone.run(0.6)  # then they hang: still connected (no will fires), silent -> lost
    dead.run(1.0)
    dead.stop(clean=False)
    live = _sim(broker.port, make_fleet(3, 3, "live"), rate=1, officers=20)
    live.connect()
    feeder = threading.Thread(target=live.run, args=(120,), daemon=True)
    feeder.start()
    # one device reports (signed) a unit other than the one it is enrolled for: flagged on the page
    d0 = dead.devices[0]
    topic = f"edge/dev/{d0.id}/status"
    publish(broker.port, topic, d0.seal(topic, {"state": "online", "bdseq": 9, "unit_code": "99999999"}))
    # a forged status and health for a live device: refused, listed under rejected messages
    publish(broker.port, f"edge/dev/{d0.id}/health", json.dumps({"state": "online"}))
    deadline = time.monotonic() + 30
    while True:
        t = json.loads(_get(mon.web_url + "api/fleet")[2])["totals"]
        if t["offline"] == 6 and t["lost"] == 2 and t["online"] == 3:
            break
        assert time.monotonic() < deadline, t
        time.sleep(0.3)
    yield mon, dead
    gone.stop(clean=False)
    live.stop()
    feeder.join(10)
    mon.stop()


def test_api(monitor_with_fleet):
    mon, sim = monitor_with_fleet
    status, ctype, body = _get(mon.web_url + "api/fleet")
    f = json.loads(body)
    assert status == 200 and ctype.startswith("application/json")
    assert f["totals"]["devices"] == 11 and len(f["units"]) == 3
    for part in ("units", "alarms", "devices"):
        assert isinstance(json.loads(_get(mon.web_url + f"api/{part}")[2]), list)
    rej = json.loads(_get(mon.web_url + "api/rejected")[2])
    by = {(r["device"], r["reason"]): r["count"] for r in rej["by_device"]}
    assert by[(sim.devices[0].id, "unsigned")] == 1 and by[(sim.devices[0].id, "unit_mismatch")] == 1
    assert rej["by_reason"]["unsigned"] == 1 and rej["total"] >= 2
    one = json.loads(_get(mon.web_url + "api/units?unit=33010002")[2])
    assert len(one) == 1 and one[0]["rooms"] == 0 and one[0]["compliant"] is False
    with pytest.raises(urllib.error.HTTPError) as exc:
        _get(mon.web_url + "api/nothing")
    assert exc.value.code == 404
    status, ctype, page = _get(mon.web_url)
    assert status == 200 and ctype.startswith("text/html")
    text = page.decode("utf-8")
    assert "http://" not in text.replace("http://' + ", "") and "https://" not in text, "self-contained: no CDN"


@pytest.mark.skipif(not (shutil.which(CHROMIUM) and shutil.which(DRIVER)), reason="chromium/chromedriver not installed")
def test_page_in_headless_chromium(monitor_with_fleet):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    mon, sim = monitor_with_fleet
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-extensions", "--no-first-run",
              "--window-size=1500,1300", "--lang=zh-CN"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        drv.get(mon.web_url)
        WebDriverWait(drv, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1")
        units = drv.find_elements(By.CSS_SELECTOR, "#units tbody tr")
        assert len(units) == 3
        rows = {r.get_attribute("data-unit"): r.text for r in units}
        assert "达标 / compliant" in rows["33010000"] and "0.30 ≥ 0.2" in rows["33010000"]
        assert "不达标 / not compliant" in rows["33010002"] and "0 < 1" in rows["33010002"]
        devices = drv.find_elements(By.CSS_SELECTOR, "#devices tbody tr")
        assert len(devices) == 11
        states = {r.get_attribute("data-device"): r.get_attribute("data-state") for r in devices}
        assert sorted(states.values()).count("offline") == 6 and list(states.values()).count("lost") == 2
        assert "在线 / online" in drv.find_element(By.CSS_SELECTOR, "#devices tr[data-device='live-000-0000']").text
        assert "失联 / lost" in drv.find_element(By.CSS_SELECTOR, "#devices tr[data-device='gone-000-0000']").text
        conflict = drv.find_element(By.CSS_SELECTOR, f"#devices tr[data-device='{sim.devices[0].id}']").text
        assert "单位冲突 / unit conflict" in conflict
        forged = drv.find_element(By.CSS_SELECTOR, f"#rejections tr[data-device='{sim.devices[0].id}'][data-reason='unsigned']")
        assert forged.text.split()[2] == "1"
        assert "拒收消息 / Rejected messages" in drv.find_element(By.TAG_NAME, "body").text
        alarm = drv.find_element(By.CSS_SELECTOR, f"#alarms tr[data-alarm='{sim.devices[1].id}/camera_offline.camera-main']")
        assert "主摄像头离线 / main camera offline" in alarm.text and "严重 / critical" in alarm.text
        assert "执法记录设备监控 / Recording equipment monitor" in drv.title
        _history_view(drv, mon, sim.devices[1])
        errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"] if hasattr(drv, "get_log") else []
        errors = [e for e in errors if "since=yesterday " not in e["message"]]  # the history view's 400, on purpose
        assert not errors, errors
        ARTIFACTS.mkdir(exist_ok=True)
        drv.save_screenshot(str(ARTIFACTS / "monitor.png"))
    finally:
        drv.quit()
    assert (ARTIFACTS / "monitor.png").stat().st_size > 10000


def _history_view(drv, mon, dev) -> None:
    """The history view as a user works it: device, unit and since typed into the form, then
    "查询 / show"; the rows are the device's status changes and its alarm, as /api/history has them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    form = drv.find_element(By.ID, "hist-form")

    def show(device: str, unit: str, since: str) -> tuple[str, list]:
        for name, value in (("device", device), ("unit", unit), ("since", since)):
            box = form.find_element(By.NAME, name)
            box.clear()
            box.send_keys(value)
        drv.execute_script("document.getElementById('hist-note').textContent = ''")  # to see the answer come
        form.find_element(By.TAG_NAME, "button").click()
        note = WebDriverWait(drv, 10).until(lambda d: d.find_element(By.ID, "hist-note").text)
        return note, drv.find_elements(By.CSS_SELECTOR, "#history tbody tr")

    note, rows = show(dev.id, dev.unit_code, "1h")
    api = json.loads(_get(mon.web_url + "api/history?" + urllib.parse.urlencode(
        {"device": dev.id, "unit": dev.unit_code, "since": "1h"}))[2])
    assert note == f"{api['count']} 条 / events" and len(rows) == api["count"] >= 3, (note, api)
    assert [r.get_attribute("data-event") for r in rows] == [e["type"] for e in api["events"]]
    texts = [r.text for r in rows]
    assert all(dev.id in t and dev.unit_code in t for t in texts), texts
    status = [t for r, t in zip(rows, texts) if r.get_attribute("data-event") == "status"]
    assert "在线 / online" in status[0] and "离线 / offline" in status[-1], status  # came up, then its will
    alarm = [t for r, t in zip(rows, texts) if r.get_attribute("data-event") == "alarm"]
    assert len(alarm) == 1 and "告警 / raised" in alarm[0] and "camera_offline camera_offline.camera-main" in alarm[0], alarm
    # another unit, or a time after the events: nothing
    other = "33010002" if dev.unit_code != "33010002" else "33010000"
    assert show(dev.id, other, "1h") == ("0 条 / events", [])
    later = (dt.datetime.now() + dt.timedelta(minutes=5)).isoformat(timespec="minutes")
    assert show(dev.id, dev.unit_code, later) == ("0 条 / events", [])
    # a time the monitor cannot read: said in both languages, the last rows stay
    note, _ = show(dev.id, dev.unit_code, "yesterday")
    assert note.startswith("时间无效 / since 'yesterday'"), note
