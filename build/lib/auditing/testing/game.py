"""
A real Evennia game server on 127.0.0.1 for end-to-end tests and the demo.

    from auditing.testing.game import GameServer
    from auditing.testing.clients import TelnetClient

    with GameServer("/tmp/somewhere") as game:     # create + migrate + start + wait_ready ... stop
        tn = TelnetClient("127.0.0.1", game.telnet_port)
        ...
        records = game.read_audit_records()

Or step by step: `create()`, `migrate()`, `start()` (which waits until ready), `reload()`, `stop()`.

Everything is bounded in time; failures raise `GameServerError` whose message ends with the tail of
the launcher output, server.log and portal.log. The launcher's output is kept in
`<game>/server/logs/harness.log`.

Facts this relies on (Evennia 5.x and 6.x): the launcher spawns `twistd` from PATH (so the venv's bin/
goes first); `EVENNIA_SUPERUSER_USERNAME/PASSWORD` + stdin=/dev/null create the superuser without a
prompt; the portal opens its ports before the game server is up, so readiness = the server's "successfully
started/reloaded/restarted" line in server.log *and* the connection screen over telnet; a brand-new game
restarts its server once right after the first start ("Initial setup complete. Restarting Server once.").
"""

import atexit
import glob
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from .clients import ClientTimeout, TelnetClient

__all__ = ["GameServer", "GameServerError", "free_ports", "DEFAULT_SUPERUSER"]

DEFAULT_SUPERUSER = ("admin", "Adm1n-harness-pw")
AUDITED_SESSION_CLASS = "auditing.server.AuditedServerSession"

_BLOCK_BEGIN = "# ---- auditing.testing.game: harness settings (begin) ----"
_BLOCK_END = "# ---- auditing.testing.game: harness settings (end) ----"
_STATE_FILE = ".harness.json"

_READY_RE = re.compile(
    r"Evennia Server successfully started|Server successfully reloaded|"
    r"Evennia Server successfully restarted"
)
_INITIAL_RESTART_RE = re.compile(r"Initial setup complete\. Restarting Server once\.")
_RELOADED_RE = re.compile(r"Server successfully reloaded|Evennia Server successfully restarted")
# the default connection screen; override with GameServer(ready_text=...) for custom screens
_DEFAULT_READY_TEXT = re.compile(r"connect\s+<username>\s+<password>|create\s+<username>", re.I)


class GameServerError(RuntimeError):
    """The game could not be created/started/stopped; the message carries the log tails."""


def free_ports(count, host="127.0.0.1"):
    """`count` distinct TCP ports that are free on `host` right now."""
    socks, ports = [], []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
            port = sock.getsockname()[1]
            if port not in ports:
                ports.append(port)
    finally:
        for sock in socks:
            sock.close()
    return ports


def _port_in_use(port, host="127.0.0.1"):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        return True
    finally:
        sock.close()
    return False


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b")")[-1].split()[0] != b"Z"
    except OSError:
        return True


def _tail(path, lines=40):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError as err:
        return f"({path}: {err.strerror})"
    return "\n".join(data.splitlines()[-lines:])


class GameServer:
    """
    One Evennia game directory `<root_dir>/<name>` and its server processes.

    Args:
        root_dir: where the game directory is created.
        name: the game directory's name.
        settings_extra: Python source appended to the game's settings after the harness block.
        evennia_bin: the `evennia` launcher (default: the one next to sys.executable).
        session_class: SERVER_SESSION_CLASS; None leaves Evennia's default.
        audit: write AUDIT_IN = AUDIT_OUT = True.
        audit_dir: where audit_*.log files are looked for (default: the game's log dir).
        ready_text: text or regex of the connection screen that means "ready".
        timeout: default bound (s) for each start/stop/reload step.
        stop_at_exit: also stop the game when this Python process exits (tests: a safety net
            for interrupted runs; the demo leaves its game running on purpose).
    """

    def __init__(
        self,
        root_dir,
        name="auditgame",
        settings_extra: str = "",
        evennia_bin=None,
        session_class=AUDITED_SESSION_CLASS,
        audit=True,
        audit_dir=None,
        ready_text=None,
        timeout=60.0,
        stop_at_exit=False,
    ):
        self.root_dir = os.path.abspath(root_dir)
        self.name = name
        self.game_dir = os.path.join(self.root_dir, name)
        self.settings_extra = settings_extra or ""
        self.evennia_bin = evennia_bin or os.path.join(os.path.dirname(sys.executable), "evennia")
        self.bin_dir = os.path.dirname(os.path.abspath(self.evennia_bin))
        self.session_class = session_class
        self.audit = audit
        self._audit_dir = audit_dir
        self.ready_text = ready_text or _DEFAULT_READY_TEXT
        self.timeout = timeout
        self.superuser = DEFAULT_SUPERUSER
        self.ports = {}
        self.timings = {}  # step -> seconds, for reports
        self._started_pids = set()
        self._started_before = False  # has this game's server ever been ready (its first start
        # ends with a one-off restart)?
        self._stop_at_exit = stop_at_exit
        self._atexit_registered = False
        self._load_state()

    # ------------------------------------------------------------------ paths and state
    @property
    def server_dir(self):
        return os.path.join(self.game_dir, "server")

    @property
    def log_dir(self):
        return os.path.join(self.server_dir, "logs")

    @property
    def audit_dir(self):
        return self._audit_dir or self.log_dir

    @property
    def settings_file(self):
        return os.path.join(self.server_dir, "conf", "settings.py")

    @property
    def server_log(self):
        return os.path.join(self.log_dir, "server.log")

    @property
    def portal_log(self):
        return os.path.join(self.log_dir, "portal.log")

    @property
    def harness_log(self):
        return os.path.join(self.log_dir, "harness.log")

    @property
    def pid_files(self):
        return [os.path.join(self.server_dir, "server.pid"), os.path.join(self.server_dir, "portal.pid")]

    @property
    def telnet_port(self):
        return self.ports["telnet"]

    @property
    def websocket_port(self):
        return self.ports["websocket"]

    @property
    def web_port(self):
        return self.ports["web"]

    @property
    def webclient_url(self):
        return f"http://127.0.0.1:{self.ports['web']}/webclient/"

    def exists(self):
        return os.path.isfile(self.settings_file)

    def _state_path(self):
        return os.path.join(self.game_dir, _STATE_FILE)

    def _load_state(self):
        try:
            with open(self._state_path()) as f:
                state = json.load(f)
        except (OSError, ValueError):
            return
        self.ports = state.get("ports", {})
        self._started_before = bool(state.get("started"))
        if state.get("superuser"):
            self.superuser = tuple(state["superuser"])

    def _save_state(self):
        with open(self._state_path(), "w") as f:
            json.dump({"ports": self.ports, "superuser": list(self.superuser),
                       "started": self._started_before}, f, indent=1)
        os.chmod(self._state_path(), 0o600)

    # ------------------------------------------------------------------ running the launcher
    def env(self):
        """Environment for the launcher: venv bin first on PATH, no inherited Django/Python path."""
        env = dict(os.environ)
        for key in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "PYTHONHOME",
                    "EVENNIA_SUPERUSER_USERNAME", "EVENNIA_SUPERUSER_PASSWORD"):
            env.pop(key, None)
        env["PATH"] = self.bin_dir + os.pathsep + env.get("PATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _run(self, args, timeout=None, cwd=None, env=None, check=True):
        """Run the launcher with stdin=/dev/null, output to a file (daemons inherit no pipe)."""
        timeout = timeout or self.timeout
        cwd = cwd or self.game_dir
        os.makedirs(self.root_dir, exist_ok=True)
        logpath = self.harness_log if os.path.isdir(self.log_dir) else os.path.join(
            self.root_dir, f".{self.name}-harness.log")
        cmd = [self.evennia_bin] + list(args)
        with open(logpath, "ab") as log:
            start = log.tell()
            log.write(f"\n$ {' '.join(cmd)}   (cwd {cwd}, {time.strftime('%H:%M:%S')})\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd, cwd=cwd, env=env or self.env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait(5)
                raise self._error(f"`evennia {' '.join(args)}` did not finish in {timeout:.0f}s",
                                  launcher=logpath, launcher_from=start)
        with open(logpath, "rb") as log:
            log.seek(start)
            output = log.read().decode("utf-8", "replace")
        if check and rc != 0:
            raise self._error(f"`evennia {' '.join(args)}` exited {rc}", launcher=logpath,
                              launcher_from=start)
        return output

    def diagnostics(self, message="game state"):
        """`message` plus the first server errors and the tails of server.log and portal.log."""
        return str(self._error(message))

    def _error(self, message, launcher=None, launcher_from=None):
        parts = [f"{message} [game {self.game_dir}]"]
        if launcher:
            try:
                with open(launcher, "rb") as f:
                    f.seek(launcher_from or 0)
                    out = f.read().decode("utf-8", "replace")[-4000:]
            except OSError:
                out = "(no output)"
            parts.append("---- launcher output ----\n" + out.rstrip())
        errors = [line for line in self._log_since(getattr(self, "_start_offset", 0)).splitlines()
                  if "[EE]" in line]
        if errors:
            parts.append("---- server.log: first errors since start ----\n" + "\n".join(errors[:12]))
        parts.append("---- server.log (tail) ----\n" + _tail(self.server_log))
        parts.append("---- portal.log (tail) ----\n" + _tail(self.portal_log))
        return GameServerError("\n".join(parts))

    # ------------------------------------------------------------------ create
    def create(self, ports=None):
        """`evennia --init` the game and append the harness settings (free ports chosen now)."""
        t0 = time.monotonic()
        if self.exists():
            raise GameServerError(f"game directory already exists: {self.game_dir}")
        os.makedirs(self.root_dir, exist_ok=True)
        if os.path.exists(self.game_dir):
            raise GameServerError(f"{self.game_dir} exists but is not an Evennia game")
        self._run(["--init", self.name], cwd=self.root_dir, timeout=60)
        if not self.exists():
            raise self._error("`evennia --init` did not create server/conf/settings.py")
        self.ports = ports or self._pick_ports()
        self._write_settings()
        self.timings["create"] = time.monotonic() - t0
        return self

    def _pick_ports(self):
        telnet, web, web_internal, websocket, amp = free_ports(5)
        return {"telnet": telnet, "web": web, "web_internal": web_internal,
                "websocket": websocket, "amp": amp}

    def settings_block(self):
        """The settings the harness appends (between marker lines, rewritten on re-pick)."""
        p = self.ports
        lines = [
            _BLOCK_BEGIN,
            "# written by auditing.testing.game.GameServer: loopback only, free ports, no throttles",
            'TELNET_INTERFACES = ["127.0.0.1"]',
            f"TELNET_PORTS = [{p['telnet']}]",
            'WEBSERVER_INTERFACES = ["127.0.0.1"]',
            f"WEBSERVER_PORTS = [({p['web']}, {p['web_internal']})]",
            'WEBSOCKET_CLIENT_INTERFACE = "127.0.0.1"',
            f"WEBSOCKET_CLIENT_PORT = {p['websocket']}",
            'AMP_HOST = "127.0.0.1"',
            'AMP_INTERFACE = "127.0.0.1"',
            f"AMP_PORT = {p['amp']}",
            "SSL_ENABLED = False",
            "SSH_ENABLED = False",
            "CREATION_THROTTLE_LIMIT = None",
            "LOGIN_THROTTLE_LIMIT = None",
            "MAX_CONNECTION_RATE = 100000",
            "MAX_COMMAND_RATE = 100000",
        ]
        if self.session_class:
            lines.append(f"SERVER_SESSION_CLASS = {self.session_class!r}")
        if self.audit:
            lines += ["AUDIT_IN = True", "AUDIT_OUT = True"]
        if self.settings_extra.strip():
            lines += ["# settings_extra", self.settings_extra.rstrip()]
        lines.append(_BLOCK_END)
        return "\n".join(lines) + "\n"

    def _write_settings(self):
        with open(self.settings_file, encoding="utf-8") as f:
            text = f.read()
        block = self.settings_block()
        pattern = re.compile(re.escape(_BLOCK_BEGIN) + r".*?" + re.escape(_BLOCK_END) + r"\n?", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _m: block, text)
        else:
            text = text.rstrip("\n") + "\n\n" + block
        with open(self.settings_file, "w", encoding="utf-8") as f:
            f.write(text)
        self._save_state()

    def repick_ports(self):
        """Choose new free ports (the game must be stopped) and rewrite the settings block."""
        if self.is_running():
            raise GameServerError("cannot change ports of a running game")
        self.ports = self._pick_ports()
        self._write_settings()

    # ------------------------------------------------------------------ migrate / start
    def migrate(self, timeout=120):
        t0 = time.monotonic()
        self._need_game()
        self._run(["migrate"], timeout=timeout)
        self.timings["migrate"] = time.monotonic() - t0
        return self

    def _need_game(self):
        if not self.exists():
            raise GameServerError(f"no game at {self.game_dir}: call create() first")

    def _log_size(self):
        try:
            return os.path.getsize(self.server_log)
        except OSError:
            return 0

    def _log_since(self, offset):
        try:
            with open(self.server_log, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() < offset:  # rotated
                    offset = 0
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def start(self, superuser=None, timeout=None, wait=True):
        """
        `evennia start` (creating the superuser on the first start) and wait until ready.
        `superuser` = (username, password); default DEFAULT_SUPERUSER.
        """
        self._need_game()
        if not self.ports:
            raise GameServerError(f"{self.game_dir} was not created by GameServer.create() "
                                  f"(no {_STATE_FILE} with its ports)")
        timeout = timeout or self.timeout
        t0 = time.monotonic()
        if superuser:
            self.superuser = tuple(superuser)
            self._save_state()
        if self.is_running():
            raise GameServerError(f"game is already running (pids {self.pids()}): {self.game_dir}")
        busy = [k for k, port in self.ports.items() if _port_in_use(port)]
        if busy:  # e.g. a demo directory re-run days later: pick new ports
            self.repick_ports()
        self._start_offset = self._log_size()
        if self._stop_at_exit and not self._atexit_registered:
            atexit.register(self._stop_quietly)
            self._atexit_registered = True
        env = self.env()
        env["EVENNIA_SUPERUSER_USERNAME"], env["EVENNIA_SUPERUSER_PASSWORD"] = self.superuser
        out = self._run(["start"], env=env, timeout=timeout)
        if "Evennia running" not in out and "Server started" not in out:
            raise self._error("`evennia start` did not report a running server",
                              launcher=self.harness_log, launcher_from=0)
        self._remember_pids()
        self.timings["start_cmd"] = time.monotonic() - t0
        if wait:
            self.wait_ready(timeout=timeout, since=self._start_offset)
            self.timings["start"] = time.monotonic() - t0
        return self

    def wait_ready(self, timeout=None, since=None):
        """
        Wait until the game server is up (server.log start line after `since`, including the
        one-off restart of a brand-new game) and the connection screen arrives over telnet.
        """
        timeout = timeout or self.timeout
        deadline = time.monotonic() + timeout
        offset = getattr(self, "_start_offset", 0) if since is None else since
        started_seen = None
        while True:
            text = self._log_since(offset)
            restart = None
            for restart in _INITIAL_RESTART_RE.finditer(text):
                pass
            # a brand-new game logs "successfully started" *before* its one-off restart: after
            # the "Restarting Server once" line only the "restarted" line means ready
            if restart:
                if _RELOADED_RE.search(text[restart.end():]):
                    break
            elif _READY_RE.search(text):
                # first start of a game we created: give the one-off restart line 5 s to show up
                started_seen = started_seen or time.monotonic()
                if self._started_before or time.monotonic() - started_seen > 5:
                    break
            if time.monotonic() > deadline:
                raise self._error(f"server did not log a start line within {timeout:.0f}s")
            if not self._processes_alive():
                raise self._error("the game's processes died while starting")
            time.sleep(0.2)
        self.probe(timeout=max(1.0, deadline - time.monotonic()), since=offset)
        self._remember_pids()
        if not self._started_before:
            self._started_before = True
            self._save_state()

    def probe(self, timeout=10.0, since=None):
        """
        Connect over telnet and wait for the connection screen; returns its text. Gives up early
        when an attempt failed and server.log (after offset `since`) shows errors.
        """
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                with TelnetClient("127.0.0.1", self.telnet_port, timeout=5) as tn:
                    return tn.read_until(self.ready_text, timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            except (OSError, ClientTimeout) as err:
                last = err
                if since is not None and "[EE]" in self._log_since(since):
                    raise self._error(f"no connection screen over telnet on port {self.telnet_port} "
                                      f"and the server logged errors (last error: {last})")
                time.sleep(0.3)
        raise self._error(f"no connection screen over telnet on port {self.telnet_port} "
                          f"within {timeout:.0f}s (last error: {last})")

    def reload(self, timeout=None):
        """`evennia reload`; wait for the server's "reloaded" line and a telnet connection screen."""
        self._need_game()
        timeout = timeout or self.timeout
        t0 = time.monotonic()
        offset = self._log_size()
        self._run(["reload"], timeout=timeout)
        deadline = time.monotonic() + timeout
        while not _RELOADED_RE.search(self._log_since(offset)):
            if time.monotonic() > deadline:
                raise self._error(f"server did not log 'reloaded' within {timeout:.0f}s")
            time.sleep(0.2)
        self.probe(timeout=max(1.0, deadline - time.monotonic()), since=offset)
        self._remember_pids()
        self.timings["reload"] = time.monotonic() - t0
        return self

    # ------------------------------------------------------------------ processes
    def pids(self):
        """{"server": pid, "portal": pid} from the pid files (only those that exist)."""
        out = {}
        for path in self.pid_files:
            try:
                with open(path) as f:
                    out[os.path.basename(path)[:-4]] = int(f.read().strip())
            except (OSError, ValueError):
                pass
        return out

    def _remember_pids(self):
        self._started_pids.update(self.pids().values())

    def _processes_alive(self):
        return any(_pid_alive(pid) for pid in self.pids().values())

    def is_running(self):
        """True if a pid file names a live process."""
        return self._processes_alive()

    def stop(self, timeout=30):
        """`evennia stop`; verify the pid files are gone; kill by pid as a fallback."""
        t0 = time.monotonic()
        if not os.path.isdir(self.server_dir):
            return
        pids = set(self.pids().values()) | {p for p in self._started_pids if _pid_alive(p)}
        error = None
        if self.pids():
            try:
                self._run(["stop"], timeout=timeout, check=False)
            except GameServerError as err:
                error = err
        deadline = time.monotonic() + (0 if error else 10)
        while self.pids() and time.monotonic() < deadline:
            if not self._processes_alive():
                break
            time.sleep(0.2)
        leftovers = [pid for pid in pids | set(self.pids().values()) if _pid_alive(pid)]
        if leftovers:
            self._kill(leftovers)
        for path in self.pid_files:  # stale pid files of dead processes
            pid = None
            try:
                with open(path) as f:
                    pid = int(f.read().strip())
            except (OSError, ValueError):
                pass
            if pid is None or not _pid_alive(pid):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        still = [pid for pid in pids if _pid_alive(pid)]
        self.timings["stop"] = time.monotonic() - t0
        if still:
            raise self._error(f"processes {still} survived stop and SIGKILL")
        if leftovers:
            sys.stderr.write(f"GameServer.stop: `evennia stop` left {leftovers} running; killed"
                             f"{f' ({error})' if error else ''}\n")

    def _stop_quietly(self):
        if any(_pid_alive(pid) for pid in self._started_pids):
            try:
                self.stop()
            except Exception as err:  # noqa: BLE001 - interpreter is exiting
                sys.stderr.write(f"GameServer: stopping {self.game_dir} at exit failed: {err}\n")

    def _kill(self, pids):
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                    if sig == signal.SIGTERM:
                        os.kill(pid, signal.SIGCONT)  # a stopped process must run to exit
                except OSError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
                time.sleep(0.1)
            if not any(_pid_alive(p) for p in pids):
                return

    # ------------------------------------------------------------------ convenience
    def up(self, superuser=None):
        """Create (if needed), migrate, start and wait until ready."""
        if not self.exists():
            self.create()
        self.migrate()
        self.start(superuser=superuser)
        return self

    def __enter__(self):
        try:
            return self.up()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ the audit trail
    def audit_files(self):
        """audit_*.log (and rotated / gzipped ones) in write order: oldest modification first."""
        names = glob.glob(os.path.join(self.audit_dir, "audit_*.log")) + glob.glob(
            os.path.join(self.audit_dir, "audit_*.log.gz"))
        return sorted(names, key=lambda p: (os.path.getmtime(p), p))

    def read_audit_bytes(self):
        """The raw (decompressed) bytes of every audit file, concatenated in order."""
        out = []
        for path in self.audit_files():
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rb") as f:
                out.append(f.read())
        return b"".join(out)

    def read_audit_records(self):
        """Every record (dict) of every audit file, in order. A torn last line is skipped."""
        records = []
        for path in self.audit_files():
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rb") as f:
                data = f.read()
            lines = data.split(b"\n")
            if lines and lines[-1] and not data.endswith(b"\n"):
                lines = lines[:-1]  # being written right now
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except ValueError as err:
                    raise GameServerError(f"{path}:{lineno}: not JSON ({err}): {line[:200]!r}")
        return records

    def wait_audit_quiet(self, quiet=1.0, timeout=15.0):
        """Wait until the audit files stop growing for `quiet` seconds; return the records."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            sizes = tuple((p, os.path.getsize(p)) for p in self.audit_files())
            if sizes != last:
                last, since = sizes, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
            time.sleep(0.1)
        return self.read_audit_records()
