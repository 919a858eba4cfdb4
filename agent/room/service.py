"""The interview-room component of ``edge-agent run`` (device kind ``room``).

It owns at most one :class:`~agent.room.session.RoomSession` and registers the commands
``room.start``, ``room.stop`` and ``room.status`` in ``agent.commands``: the local control
socket (``edge-agent room ...``) and MQTT commands reach the same handlers.

On start it recovers: every segment a crash left on disk is sealed, and a session that was
recording when the agent died (or was stopped) resumes with the interruption recorded as a gap.
On the agent's clean stop a running session is *suspended*, not ended: its segments are
sealed and it resumes on the next start (the pause is a gap in the chain). Only
``room stop`` ends a session. There is no pause command.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from ..errors import EdgeError
from .session import (STATE_FILE, Alarms, RoomSession, RoomSettings, SessionRequest, SessionState,
                      new_state, recover_unsealed)

log = logging.getLogger(__name__)


class RoomService:
    name = "room"

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.cfg = agent.cfg
        self.store = agent.store
        self.settings = RoomSettings.from_config(self.cfg)
        self.state_path = Path(self.cfg.storage.data_dir) / "room" / STATE_FILE
        self.alarms = Alarms(agent)
        self.session: RoomSession | None = None
        self.last: dict | None = None          # status of the last session that ended
        self._lock = threading.RLock()
        self._control = None
        self.recovered: list[str] = []
        agent.commands["room.start"] = self.cmd_start
        agent.commands["room.stop"] = self.cmd_stop
        agent.commands["room.status"] = self.cmd_status

    # -- component -------------------------------------------------------------------------
    def start(self) -> None:
        if not any(getattr(c, "name", None) == "control" for c in getattr(self.agent, "components", [])):
            from ..control import ControlServer

            self._control = ControlServer(self.agent)
            self._control.start()
        state = SessionState.load(self.state_path)
        if state is None:
            return
        if state.state == "recording":
            log.warning("room session %s was recording when the agent stopped: recovering and resuming", state.id)
            self._run(state, resume=True, actor="agent:recover")
        else:   # an ended session may still have segments on disk (sealing failed, disk full)
            sess = self._make(state)
            made = recover_unsealed(self.store, state, self.settings, self.state_path, sess.gaps)
            self.recovered = [m["item_id"] for m in made]

    def stop(self) -> None:
        with self._lock:
            sess = self.session
        if sess is not None:
            sess.stop(reason="agent stopped", final=False)
        if self._control is not None:
            self._control.stop()

    def status(self) -> dict:
        with self._lock:
            sess = self.session
        if sess is not None:
            return sess.status()
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
        with self._lock:
            self.session = sess
        try:
            sess.start()
        except Exception:
            with self._lock:
                self.session = None
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
            self.store.audit.append("room.stop", None, actor="agent:room", session=sess.state.id,
                                    reason=sess.end_reason, segments=sess.state.segments_sealed)
        self._publish(None)

    def _publish(self, sess: RoomSession | None) -> None:
        up = getattr(self.agent, "uplink", None)
        if up is None or not hasattr(up, "publish"):
            return
        try:
            from ..uplink.topics import Topics

            t = Topics(self.cfg.mqtt.topic_prefix).component(self.cfg.device.id, "room")
            up.publish(t, self.status(), qos=1, retain=True)
        except Exception:
            log.exception("publishing room status failed")

    # -- commands (control socket and MQTT) ----------------------------------------------------
    def cmd_start(self, args: dict, actor: str) -> dict:
        req = SessionRequest.from_args(args or {})
        with self._lock:
            cur = self.session
            if cur is not None:
                st = cur.state
                raise EdgeError(f"已有录像正在进行（案件 {st.case_number}，开始于 {st.started}），请先停止 / "
                                f"a session is already recording (case {st.case_number}, since {st.started}, "
                                f"session {st.id}): stop it first")
            self.store.check_reserve(64 << 20)
            state = new_state(req, self.settings, self.cfg.device.id)
            sess = self._run(state, resume=False, actor=actor)
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


def make_component(agent: Any) -> RoomService:
    return RoomService(agent)
