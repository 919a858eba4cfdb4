"""The interview-room component of ``edge-agent run`` (device kind ``room``).

It owns at most one :class:`~agent.room.session.RoomSession` and registers the commands
``room.start``, ``room.stop`` and ``room.status`` in ``agent.commands``: the local control
socket (``edge-agent room ...``) and MQTT commands reach the same handlers.

On start it recovers: every segment a crash left on disk is sealed, and a session that was
recording when the agent died (or was stopped) resumes with the interruption recorded as a gap.
On the agent's clean stop a running session is *suspended*, not ended: its segments are
sealed and it resumes on the next start (the pause is a gap in the chain). Only
``room stop`` ends a session. There is no pause command.

The runtime hands it its ports (``agent.runtime.build_agent``): alarms go to an
:class:`~agent.common.ports.AlarmPort`, and ``refresh`` (the health component's ``tick``) is
called after a session starts or ends so that the fleet hears of it at once. The room never
publishes; the control socket is the runtime's ``control`` component.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from agent.common.errors import EdgeError
from agent.common.ports import AlarmPort
from .alarms import Alarms
from .sealing import recover_unsealed
from .session import RoomSession
from .state import STATE_FILE, RoomSettings, SessionRequest, SessionState, new_state
from agent.store.policy_rules import check_case_number

log = logging.getLogger(__name__)


class RoomService:
    name = "room"

    def __init__(self, agent: Any, alarms: AlarmPort | None = None,
                 refresh: Callable[[], object] | None = None) -> None:
        self.agent = agent
        self.cfg = agent.cfg
        self.store = agent.store
        self.settings = RoomSettings.from_config(self.cfg)
        self.state_path = Path(self.cfg.storage.data_dir) / "room" / STATE_FILE
        self.alarms = Alarms(alarms)
        self.refresh = refresh
        self.session: RoomSession | None = None
        self.last: dict | None = None          # status of the last session that ended
        self._lock = threading.RLock()
        self.recovered: list[str] = []
        self._recovering = False
        agent.commands["room.start"] = self.cmd_start
        agent.commands["room.stop"] = self.cmd_stop
        agent.commands["room.status"] = self.cmd_status

    # -- component -------------------------------------------------------------------------
    def start(self) -> None:
        self._recover()

    def _load_state(self) -> SessionState | None:
        """The state file; an unreadable one is set aside (never deleted) with an alarm, so that
        recording stays possible. Its segments stay on disk under room/sessions/ for an expert."""
        try:
            return SessionState.load(self.state_path)
        except EdgeError as exc:
            aside = self.state_path.with_name(f"{STATE_FILE}.unreadable-{int(time.time())}")
            os.replace(self.state_path, aside)
            log.error("%s; moved to %s", exc, aside)
            self.alarms.raise_("room_state_unreadable", f"询问室会话状态文件损坏，已另存为 {aside.name}",
                               f"room session state unreadable, set aside as {aside.name}: {exc}")
            return None

    def _recover(self) -> None:
        self._recovering = True
        try:
            state = self._load_state()
            if state is None:
                return
            if state.state == "recording":
                log.warning("room session %s was recording when the agent stopped: recovering and resuming", state.id)
                self._run(state, resume=True, actor="agent:recover")
            else:
                self._seal_leftovers(state)
        except Exception as exc:   # never keep the agent down: the files stay on disk for the next try
            log.exception("room recovery failed")
            self.alarms.raise_("room_recovery_failed", "询问室录像恢复失败（文件保留在磁盘）",
                               f"interview-room recovery failed, files kept on disk: {exc}")
        finally:
            self._recovering = False

    def _seal_leftovers(self, state: SessionState) -> None:
        """An ended session may still have segments on disk (sealing failed, disk was full)."""
        seg_dir = self.state_path.parent / "sessions" / state.id
        if seg_dir.is_dir() and any(seg_dir.iterdir()):
            sess = self._make(state)
            made = recover_unsealed(self.store, state, self.settings, self.state_path, sess.gaps)
            self.recovered = [m["item_id"] for m in made]
            log.warning("room session %s: %d segment(s) left on disk sealed now", state.id, len(made))

    def stop(self) -> None:
        with self._lock:
            sess = self.session
        if sess is not None:
            sess.suspend()

    def status(self) -> dict:
        with self._lock:
            sess = self.session
        if sess is not None:
            return sess.status()
        if self._recovering:
            return {"state": "starting", "room": self.settings.name, "detail": "恢复中 / recovering"}
        out: dict[str, Any] = {"state": "idle", "room": self.settings.name}
        if self.last:
            out["last_session"] = {k: self.last.get(k) for k in (
                "session", "case_number", "started", "segments_sealed", "end_reason", "error", "alarms")}
        return out

    # -- sessions --------------------------------------------------------------------------
    def _make(self, state: SessionState) -> RoomSession:
        return RoomSession(self.settings, self.store, state, self.state_path, alarms=self.alarms,
                           on_end=self._ended)

    def _run(self, state: SessionState, *, resume: bool, actor: str) -> RoomSession:
        sess = self._make(state)
        if resume:
            made = recover_unsealed(self.store, state, self.settings, self.state_path, sess.gaps)
            self.recovered = [m["item_id"] for m in made]
        else:
            state.save(self.state_path)
        self.store.audit.append("room.resume" if resume else "room.start", None, actor=actor, session=state.id,
                                case=state.case_number, collector=state.collector_id, room=state.room)
        self.alarms.reset()     # stale alarms of an earlier run; what is still wrong is raised again
        with self._lock:
            self.session = sess
        try:
            sess.start()
        except Exception as exc:
            with self._lock:
                self.session = None
            state.state, state.stop_reason = "stopped", f"could not start: {exc}"
            state.save(self.state_path)
            raise
        self._publish(sess)
        return sess

    def _ended(self, sess: RoomSession) -> None:
        status = sess.status()
        with self._lock:
            if self.session is sess:
                self.session = None
            self.last = status
        if sess.final_on_stop:
            try:
                self.store.audit.append("room.stop", None, actor="agent:room", session=sess.state.id,
                                        reason=sess.end_reason, segments=sess.state.segments_sealed)
            except Exception as exc:       # a full disk cannot take the audit entry either
                log.error("cannot audit the end of room session %s: %s", sess.state.id, exc)
        self._publish(None)

    def _publish(self, sess: RoomSession | None) -> None:
        """Tell the fleet now, not at the next health interval (``refresh``: health publishes
        ``P/dev/D/component/room`` and the parts; the room never publishes itself)."""
        refresh = self.refresh
        if refresh is None:
            return

        def run() -> None:
            try:
                refresh()
            except Exception:
                log.exception("health report after a room change failed")
        threading.Thread(target=run, name="room-health-now", daemon=True).start()

    # -- commands (control socket and MQTT) ----------------------------------------------------
    def cmd_start(self, args: dict, actor: str) -> dict:
        req = SessionRequest.from_args(args or {})
        if self._recovering:
            raise EdgeError("正在恢复上次的录像，请稍候 / recovering the previous recording, try again in a moment")
        with self._lock:
            cur = self.session
            if cur is not None:
                st = cur.state
                raise EdgeError(f"已有录像正在进行（案件 {st.case_number}，开始于 {st.started}），请先停止 / "
                                f"a session is already recording (case {st.case_number}, since {st.started}, "
                                f"session {st.id}): stop it first")
            self.store.check_reserve(16 << 20)     # room for a couple of segments above the reserve
            self.store.check_device()               # an id the archive cannot file: refuse before recording
            check_case_number(self.store, req.case_number)  # the unit policy's pattern (案件编号格式)
            previous = self._load_state()
            if previous is not None:                # what an earlier session could not seal goes first
                if previous.state == "recording":   # it ended here but could not even save its state
                    previous.state, previous.stop_reason = "stopped", "ended abnormally (state not saved)"
                self._seal_leftovers(previous)
            state = new_state(req, self.settings, self.cfg.device.id)
            self._run(state, resume=False, actor=actor)
        log.info("room session %s started by %s", state.id, actor)
        return {"started": True, "session": state.id, "case_number": state.case_number, "started_at": state.started,
                "message": f"开始录制 / recording started: {state.room}"}

    def cmd_stop(self, args: dict, actor: str) -> dict:
        with self._lock:
            sess = self.session
        if sess is None:
            raise EdgeError("没有正在进行的录像 / no session is recording")
        sess.stop(reason=f"stopped by {actor}", final=True)
        st = sess.state
        return {"stopped": True, "session": st.id, "case_number": st.case_number, "segments": st.segments_sealed,
                "started": st.started, "stopped_at": st.stopped, "error": sess.error,
                "message": f"录制已停止，{st.segments_sealed} 段已封存 / recording stopped, "
                           f"{st.segments_sealed} segment(s) sealed"}

    def cmd_status(self, args: dict, actor: str) -> dict:
        return self.status()


def make_component(agent: Any, alarms: AlarmPort | None = None,
                   refresh: Callable[[], object] | None = None) -> RoomService:
    return RoomService(agent, alarms=alarms, refresh=refresh)
