"""
A real rsyslogd as a test peer, with its own config, sockets, ports and files under one directory.

It never touches the system's syslog: the system socket input is off (`SysSock.Use="off"`), the config
is passed with `-f`, and the pid file and work directory live in `workdir`.

    server = RsyslogServer(workdir)
    server.start()                  # ready: probes over all three inputs were written out
    ... send to server.unix_path / ("127.0.0.1", server.udp_port) / ("127.0.0.1", server.tcp_port)
    server.wait_for(3)
    server.lines()                  # the payloads received, one string per message, in order
    server.stop()

`lines()` holds each message's MSG: `%msg%` for RFC 5424 input (UDP, TCP) and `%msg:2:$%` for the
local socket, whose `syslog(3)` format puts one space after the `tag:` (rsyslog keeps it in MSG).
`meta()` also gives the facility, severity, app name, procid and host name rsyslog parsed.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid

PROBE_APP = "rsyslog-fixture-probe"
META_FIELDS = ("input", "facility", "severity", "app_name", "procid", "hostname", "payload")

CONFIG = """\
global(workDirectory="{workdir}" maxMessageSize="64k" net.enableDNS="off")
module(load="imuxsock" SysSock.Use="off")
module(load="imudp")
module(load="imtcp")

template(name="payload" type="string" string="%$.payload%\\n")
template(name="meta" type="string"
  string="%inputname%\\t%syslogfacility-text%\\t%syslogseverity-text%\\t%app-name%\\t%procid%\\t%hostname%\\t%$.payload%\\n")

ruleset(name="write") {{
  if $app-name == "{probe_app}" then {{
    action(type="omfile" file="{probe_file}" template="payload")
    stop
  }}
  action(type="omfile" file="{out_file}" template="payload")
  action(type="omfile" file="{meta_file}" template="meta")
}}
ruleset(name="local") {{
  set $.payload = substring($msg, 1, 1000000);
  call write
}}
ruleset(name="net") {{
  set $.payload = $msg;
  call write
}}

input(type="imuxsock" Socket="{unix_path}" ruleset="local" RateLimit.Interval="0")
input(type="imudp" address="127.0.0.1" port="{udp_port}" ruleset="net" rcvBufSize="4m")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" ruleset="net")

# rsyslogd's own messages (start, stop, errors)
action(type="omfile" file="{internal_file}")
"""


def free_port(kind):
    """A port on 127.0.0.1 that nothing is bound to right now (`kind`: SOCK_STREAM or SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_rsyslogd():
    """Path of rsyslogd, or raise RuntimeError saying how to install it."""
    path = shutil.which("rsyslogd") or (
        "/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None
    )
    if not path:
        raise RuntimeError(
            "rsyslogd not found: apt-get install rsyslog (`make system-deps` does it)"
        )
    return path


class RsyslogServer:
    """rsyslogd in the foreground with unix, UDP and TCP inputs writing payloads to a file.

    Args:
        workdir (str): An existing, private directory (short path: it holds the unix socket).
    """

    def __init__(self, workdir):
        self.workdir = os.path.abspath(workdir)
        self.conf_path = os.path.join(self.workdir, "rsyslog.conf")
        self.pid_path = os.path.join(self.workdir, "rsyslogd.pid")
        self.out_path = os.path.join(self.workdir, "out.log")
        self.meta_path = os.path.join(self.workdir, "meta.log")
        self.probe_path = os.path.join(self.workdir, "probe.log")
        self.internal_path = os.path.join(self.workdir, "internal.log")
        self.stderr_path = os.path.join(self.workdir, "rsyslogd.stderr")
        self.unix_path = os.path.join(self.workdir, "log.sock")
        self.udp_port = None
        self.tcp_port = None
        self.proc = None

    @property
    def pid(self):
        """Process id of the running rsyslogd, or None."""
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def _write_config(self):
        if self.udp_port is None:
            self.udp_port = free_port(socket.SOCK_DGRAM)
            self.tcp_port = free_port(socket.SOCK_STREAM)
        with open(self.conf_path, "w") as conf:
            conf.write(
                CONFIG.format(
                    workdir=self.workdir,
                    probe_app=PROBE_APP,
                    probe_file=self.probe_path,
                    out_file=self.out_path,
                    meta_file=self.meta_path,
                    internal_file=self.internal_path,
                    unix_path=self.unix_path,
                    udp_port=self.udp_port,
                    tcp_port=self.tcp_port,
                )
            )

    def start(self, timeout=10.0):
        """Start rsyslogd (same socket and ports as before on a restart) and wait until it is ready.

        Raises:
            RuntimeError: rsyslogd exited or did not get ready within `timeout` seconds.
        """
        if self.pid:
            return
        self._write_config()
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [find_rsyslogd(), "-n", "-f", self.conf_path, "-i", self.pid_path],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout):
        token = uuid.uuid4().hex
        wanted = {f"{token}-{name}" for name in ("unix", "udp", "tcp")}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"rsyslogd exited with {self.proc.returncode}: {self._diagnostics()}"
                )
            self._send_probes(token, wanted)
            time.sleep(0.05)
            if wanted <= set(self._read(self.probe_path)):
                return
        raise RuntimeError(f"rsyslogd not ready after {timeout} s: {self._diagnostics()}")

    def _send_probes(self, token, wanted):
        seen = set(self._read(self.probe_path))
        for name, family, kind, target in (
            ("unix", socket.AF_UNIX, socket.SOCK_DGRAM, self.unix_path),
            ("udp", socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", self.udp_port)),
            ("tcp", socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", self.tcp_port)),
        ):
            payload = f"{token}-{name}"
            if payload in seen:
                continue
            if name == "unix":
                message = f"<14>{PROBE_APP}[{os.getpid()}]: {payload}".encode()
            else:
                message = f"<14>1 - - {PROBE_APP} - - - {payload}".encode()
            if name == "tcp":
                message = b"%d %b" % (len(message), message)
            try:
                with socket.socket(family, kind) as sock:
                    sock.settimeout(1.0)
                    sock.connect(target)
                    sock.sendall(message)
            except OSError:
                pass  # not listening yet

    def _diagnostics(self):
        text = []
        for path in (self.stderr_path, self.internal_path):
            if os.path.exists(path):
                with open(path, errors="replace") as handle:
                    text.append(handle.read()[-2000:])
        return " | ".join(text) or "(no output)"

    def stop(self, timeout=10.0):
        """Terminate rsyslogd by its pid and wait for it to exit (SIGKILL after `timeout`)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    def restart(self, timeout=10.0):
        """stop() then start() on the same socket path and ports."""
        self.stop()
        self.start(timeout)

    @staticmethod
    def _read(path):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return []
        # Split on "\n" only: a payload may hold other line separators (U+2028, \x1c, ...).
        lines = data.decode("utf-8", errors="replace").split("\n")
        return lines[:-1]  # the text after the last "\n" is empty or a line still being written

    def lines(self):
        """Payloads received so far (excluding readiness probes), in the order rsyslog wrote them."""
        return self._read(self.out_path)

    def meta(self):
        """Per message: dict of `META_FIELDS` (input module, facility, severity, app name, ...)."""
        return [
            dict(zip(META_FIELDS, line.split("\t", len(META_FIELDS) - 1)))
            for line in self._read(self.meta_path)
        ]

    def wait_for(self, count, timeout=10.0):
        """Wait until `lines()` has at least `count` entries; return `lines()`."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def clear(self):
        """Empty the output files (rsyslog appends, so truncating in place is safe)."""
        for path in (self.out_path, self.meta_path):
            if os.path.exists(path):
                os.truncate(path, 0)
