"""The local control socket of the running agent: JSON lines over a Unix socket.

``data_dir/control.sock``, mode 0660 (group: the first group of ``control.groups`` that
exists). Each connection is checked with ``SO_PEERCRED``: root, the agent's own user, members
(primary or supplementary) of ``control.groups`` and holders of a role (agent/roles.py:
technician, operator, auditor groups) may connect; anyone else gets one refusal line and is
disconnected. Each command then needs its role (:data:`COMMAND_ROLES`; ``roles.enforce``):
``room.start`` / ``room.stop`` an operator, ``room.status`` any role. This check is on the
server side, where the peer cannot lie. Requests and answers are one JSON object per line::

    -> {"cmd": "room.start", "args": {"case": "...", ...}}
    <- {"ok": true, "result": {...}}
    <- {"ok": false, "error": "中文 / English"}

Handlers are ``agent.commands`` (name -> handler(args, actor) -> dict), the same the MQTT
command topic dispatches to; the actor is ``local:<user>(<uid>)``. Every command is audited.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from agent.common.errors import EdgeError

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_LINE = 64 * 1024

#: roles (agent/roles.py) a command needs on the control socket; other commands: technician
COMMAND_ROLES: dict[str, tuple[str, ...]] = {
    "room.start": ("operator",),
    "room.stop": ("operator",),
    "room.status": ("operator", "technician", "auditor"),
    "health": ("operator", "technician", "auditor"),
}
DEFAULT_ROLES = ("technician",)


def socket_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / SOCKET_NAME


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process on the other end."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def _peer_groups(pid: int, gid: int) -> set[int]:
    groups = {gid}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                groups.update(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return groups


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class ControlServer:
    """The socket server (a component: ``start`` / ``stop`` / ``status``)."""

    name = "control"

    def __init__(self, agent: Any, path: str | os.PathLike | None = None, groups: list[str] | None = None) -> None:
        self.agent = agent
        self.path = Path(path) if path else socket_path(agent.cfg.storage.data_dir)
        names = list(groups if groups is not None else agent.cfg.control.groups)
        self.group_names = names
        self.gids: set[int] = set()
        for g in names:
            try:
                self.gids.add(grp.getgrnam(g).gr_gid)
            except KeyError:
                log.info("control.groups: group %r does not exist here; ignored", g)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.requests = 0
        self.refused = 0

    def allowed(self, pid: int, uid: int, gid: int) -> bool:
        if uid == 0 or uid == os.getuid():
            return True
        groups = _peer_groups(pid, gid)
        return bool(groups & self.gids) or bool(self._roles(uid, groups))

    def _roles(self, uid: int, groups: set[int]) -> set[str]:
        from agent.common.roles import roles_of

        return roles_of(self.agent.cfg, uid=uid, gids=sorted(groups))

    def check_role(self, cmd: str, pid: int, uid: int, gid: int) -> None:
        """Raise RoleError unless the peer may run ``cmd`` (root and the agent's user always may)."""
        if uid == 0 or uid == os.getuid():
            return
        from agent.common.roles import require

        require(self.agent.cfg, *COMMAND_ROLES.get(cmd, DEFAULT_ROLES), uid=uid, gids=sorted(_peer_groups(pid, gid)))

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(1)
                probe.connect(str(self.path))
                probe.close()
                raise EdgeError(f"{self.path}: 另一个 edge-agent 服务正在运行 / another edge-agent service already listens here")
            except (ConnectionRefusedError, FileNotFoundError, socket.timeout):
                self.path.unlink(missing_ok=True)
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            s.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        if self.gids:
            try:
                os.chown(self.path, -1, sorted(self.gids)[0])
            except PermissionError:
                log.warning("cannot give %s to group %s", self.path, self.group_names[0])
        s.listen(16)
        s.settimeout(0.5)
        self._sock = s
        self._thread = threading.Thread(target=self._serve, name="control-socket", daemon=True)
        self._thread.start()
        log.info("control socket %s (groups %s)", self.path, ", ".join(self.group_names) or "-")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(3)
        if self._sock:
            self._sock.close()
            self._sock = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def status(self) -> dict:
        return {"socket": str(self.path), "requests": self.requests, "refused": self.refused}

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            threading.Thread(target=self._handle, args=(conn,), name="control-conn", daemon=True).start()

    def _reply(self, conn: socket.socket, obj: dict) -> None:
        conn.sendall((json.dumps(obj, ensure_ascii=False, default=str) + "\n").encode())

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(300)
            try:
                pid, uid, gid = peer_credentials(conn)
            except OSError:
                return
            if not self.allowed(pid, uid, gid):
                self.refused += 1
                log.warning("control socket: refused uid %d gid %d (pid %d)", uid, gid, pid)
                try:
                    self._reply(conn, {"ok": False, "error": f"无权限 / permission denied: user {_user(uid)} is not "
                                       f"root nor in {', '.join(self.group_names) or 'an allowed group'}"})
                except OSError:
                    pass
                return
            actor = f"local:{_user(uid)}({uid})"
            buf = b""
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except (socket.timeout, OSError):
                    return
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._reply(conn, self.dispatch(line, actor, peer=(pid, uid, gid)))
                if len(buf) > MAX_LINE:
                    self._reply(conn, {"ok": False, "error": f"请求过长 / request longer than {MAX_LINE} bytes"})
                    return

    def dispatch(self, line: bytes, actor: str, peer: tuple[int, int, int] | None = None) -> dict:
        self.requests += 1
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "error": "请求不是 JSON / request is not JSON"}
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": '请求格式错误 / request must be {"cmd": NAME, "args": {...}}'}
        args = req.get("args") or {}
        if not isinstance(args, dict):
            return {"ok": False, "error": "args 必须是对象 / args must be an object"}
        name = req["cmd"]
        handler = self.agent.commands.get(name)
        if handler is None:
            known = ", ".join(sorted(self.agent.commands)) or "none"
            return {"ok": False, "error": f"未知命令 / unknown command {name!r} (known: {known})"}
        try:
            if peer is not None:
                self.check_role(name, *peer)
            result = handler(args, actor)
            ok, out = True, {"ok": True, "result": result}
        except EdgeError as exc:
            ok, out = False, {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control command %s failed", name)
            ok, out = False, {"ok": False, "error": f"内部错误 / internal error: {type(exc).__name__}: {exc}"}
        if not name.endswith(".status"):
            try:
                self.agent.store.audit.append("command", None, actor=actor, cmd=name, via="control-socket", ok=ok,
                                              error=None if ok else out["error"])
            except Exception:
                log.exception("auditing command %s failed", name)
        return out


def make_component(agent: Any) -> ControlServer:
    return ControlServer(agent)


def call(data_dir: str | os.PathLike, cmd: str, args: dict | None = None, timeout: float = 120.0) -> dict:
    """Send one command to the running agent; returns its result or raises :class:`EdgeError`."""
    path = socket_path(data_dir)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise EdgeError(f"edge-agent 服务未运行 / the edge-agent service is not running (no control socket at "
                            f"{path}); start it with `edge-agent run` or `systemctl start edge-agent`") from None
        except PermissionError:
            raise EdgeError(f"无权限 / permission denied on {path}: run as root or join the allowed group") from None
        try:
            s.sendall((json.dumps({"cmd": cmd, "args": args or {}}, ensure_ascii=False) + "\n").encode())
        except (BrokenPipeError, ConnectionResetError):
            pass            # refused at once: the refusal line is still there to read
        buf = b""
        while b"\n" not in buf:
            try:
                data = s.recv(65536)
            except socket.timeout:
                raise EdgeError(f"edge-agent 服务无响应 / the edge-agent service did not answer {cmd} within {timeout:.0f} s") from None
            except ConnectionResetError:
                break
            if not data:
                break
            buf += data
    finally:
        s.close()
    if not buf.strip():
        raise EdgeError("edge-agent 服务关闭了连接 / the edge-agent service closed the connection without an answer")
    try:
        resp = json.loads(buf.split(b"\n", 1)[0])
    except ValueError:
        raise EdgeError("edge-agent 服务应答无效 / malformed answer from the edge-agent service") from None
    if not resp.get("ok"):
        raise EdgeError(resp.get("error") or "command failed")
    return resp.get("result") or {}
