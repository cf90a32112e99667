"""
Syslog sink: one syslog message per audit record, over a unix socket, UDP or TCP.

Message formats (severity is always `info`):

- Network (UDP, TCP): RFC 5424, `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - - MSG`, TIMESTAMP being
  the send time in UTC (`2026-11-27T07:40:12.123456Z`). TCP frames each message with octet counting
  (`LEN SP MSG`, RFC 6587), so a record may hold any byte and still arrive as one message.
- Local unix socket (`/dev/log` or a path): the traditional local format `<PRI>APP-NAME[PID]: MSG`,
  which is what the syslog daemon on that socket expects (`syslog(3)` sends it). rsyslog's `imuxsock`
  and systemd-journald do not parse RFC 5424 there: they would make `1` the program name and put the
  header into the message. The daemon stamps the time and its own host name. Only datagram sockets
  are supported (what rsyslog and journald provide at `/dev/log`).

MSG is the record itself, the JSON document, with no BOM. rsyslog's `%msg%` property is then exactly
the JSON for RFC 5424 input; for the local format it is the JSON after the one space that follows the
colon (`%msg:2:$%`), as with every `syslog(3)` message.

Only the standard library is used.
"""

import collections
import datetime
import errno
import os
import select
import socket
import time

from .sinkbase import Sink, SinkError

FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}
SEVERITY_INFO = 6
DEFAULT_ADDRESS = "/dev/log"
TRANSPORTS = ("unix", "udp", "tcp")
# TCP: records sent within this many seconds before the server closed the connection are sent again
# (at most RESEND_MAX of them). A running rsyslog reads its socket within milliseconds.
RESEND_WINDOW = 1.0
RESEND_MAX = 100_000


def syslog_sink(
    address=None, transport=None, facility="user", app_name="evennia-audit", hostname=None,
    resend_window=None,
):
    """Build the syslog sink for the `AUDIT_SYSLOG` options.

    Args:
        address (str or tuple or None): None for the local syslog socket `/dev/log`, a unix datagram
            socket path, or `(host, port)`.
        transport (str or None): "unix" for a path, "tcp" (default) or "udp" for `(host, port)`.
        facility (str): A key of `FACILITIES`.
        app_name (str): APP-NAME (the program name / tag) of every message.
        hostname (str or None): HOSTNAME of RFC 5424 messages (default: `socket.gethostname()`).
        resend_window (float or None): TCP: seconds of records sent again after the server closed
            the connection (default RESEND_WINDOW; 0: the last batch only).

    Returns:
        SyslogSink: Not yet connected; it connects on the first write.

    Raises:
        ValueError: For a facility, transport or address it cannot use.
    """
    return SyslogSink(address, transport, facility, app_name, hostname, resend_window=resend_window)


def _printable(text, limit, extra=""):
    """`text` reduced to what a syslog header field may hold (printable ASCII, no space)."""
    cleaned = "".join(c if 33 <= ord(c) <= 126 and c not in extra else "_" for c in str(text))
    return cleaned[:limit] or "-"


class SyslogSink(Sink):
    """Sends each record as one syslog message; see the module docstring for the formats.

    Delivery: `write` sends in order and returns once every record was handed to the kernel. On a
    socket error it reconnects once at once and sends the rest (not for UDP, whose errors report an
    earlier datagram); if that fails too it raises `SinkError` with the number of records sent, and
    connects again on the next `write`. Connected sockets are used so that a stopped server surfaces
    as an error (ECONNREFUSED, ENOENT) instead of records vanishing.

    What no sender can see:
        - TCP: records accepted by the kernel just before the server died (still in its receive
          buffer, or in flight) are lost without an error. Before each batch the sink checks whether
          the server has closed the connection and reconnects first, which keeps that window to the
          records sent since the server last read.
        - TCP: after a failure in the middle of a message the connection is dropped; the server may log
          that message truncated (the whole record is still reported undelivered and sent again).
        - UDP: a datagram sent while the server is down is lost; the ICMP "port unreachable" only
          fails a later send. The sink reads that error right after each datagram's successor and
          after each batch (`SO_ERROR`), and reports the refused datagram and everything after it as
          undelivered, so they are retried. On this host the ICMP error is there before `send`
          returns, which makes this exact; to a remote host the error may come late or never
          (filtered ICMP, a lost datagram, a full receive buffer), and that loss is unknowable. Hence
          `limits` (shown in `stats()["output_limits"]`) and the TCP default for `(host, port)`.
    """

    LIMITS = {
        "unix": "unix socket: delivered = taken by the local daemon's socket (a stopped daemon is an "
        "error; nothing is lost unseen)",
        "udp": "udp: loss is unknowable beyond ICMP errors; to this host a stopped receiver is "
        "detected and retried, to a remote host a datagram lost on the way is counted delivered",
        "tcp": "tcp: delivered = accepted by the kernel; what was sent in the last 1 s is sent again "
        "when the server closed the connection (duplicates possible, same conn and seq); plain TCP "
        "syslog has no acknowledgement, so a server that kept records unread longer than that "
        "before it stopped can lose them unseen",
    }

    def __init__(
        self,
        address=None,
        transport=None,
        facility="user",
        app_name="evennia-audit",
        hostname=None,
        timeout=5.0,
        resend_window=None,
    ):
        if facility not in FACILITIES:
            raise ValueError(f"unknown syslog facility {facility!r}; known: {sorted(FACILITIES)}")
        if address is None or isinstance(address, str):
            address = address or DEFAULT_ADDRESS
            transport = transport or "unix"
            if transport != "unix":
                raise ValueError(f"a socket path needs transport 'unix', not {transport!r}")
            self.where = f"unix:{address}"
        elif isinstance(address, (tuple, list)) and len(address) == 2:
            address = (str(address[0]), int(address[1]))
            transport = transport or "tcp"  # UDP loses records without a word
            if transport not in ("udp", "tcp"):
                raise ValueError(
                    f"a (host, port) address needs transport 'udp' or 'tcp', not {transport!r}"
                )
            self.where = f"{transport}:{address[0]}:{address[1]}"
        else:
            raise ValueError(
                f"syslog address must be None, a socket path or (host, port), not {address!r}"
            )
        self.address = address
        self.transport = transport
        self.limits = self.LIMITS[transport]
        self.timeout = timeout
        self._pri = FACILITIES[facility] * 8 + SEVERITY_INFO
        self._app = _printable(app_name, 48, extra=":[]" if transport == "unix" else "")
        self._host = _printable(hostname or socket.gethostname(), 255)
        self._sock = None
        self._poll = None
        self._sent = 0  # records of the current batch sent so far, when a send fails
        # TCP: what was sent in the last RESEND_WINDOW seconds, (time, record), resent if the server
        # closed the connection: plain TCP syslog has no acknowledgement, and a server that stops
        # loses what it had not read yet without an error.
        self._unconfirmed = collections.deque()
        self.resend_window = RESEND_WINDOW if resend_window is None else resend_window
        self._resend = []  # ... until a write succeeds

    # -- connection -------------------------------------------------------------------------------

    def _connect(self):
        self._close_socket()
        if self.transport == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            target = self.address
        else:
            kind = socket.SOCK_STREAM if self.transport == "tcp" else socket.SOCK_DGRAM
            family, kind, proto, _, target = socket.getaddrinfo(*self.address, 0, kind)[0]
            sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(self.timeout)
            sock.connect(target)
        except BaseException:
            sock.close()
            raise
        if self.transport == "tcp":
            self._poll = select.poll()
            self._poll.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        self._sock = sock

    def _close_socket(self):
        sock, self._sock, self._poll = self._sock, None, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _peer_closed(self):
        """True when the TCP server has closed the connection (it never sends, so readable = EOF)."""
        return bool(self._poll.poll(0))

    # -- messages ---------------------------------------------------------------------------------

    def _header(self):
        """The bytes put before every record of this batch."""
        if self.transport == "unix":
            return b"<%d>%s[%d]: " % (self._pri, self._app.encode(), os.getpid())
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"<{self._pri}>1 {now} {self._host} {self._app} {os.getpid()} - - ".encode("ascii")

    def _send_stream(self, head, records, start):
        """Send records[start:] octet-counted in one buffer; on failure set `self._sent`."""
        hlen = len(head)
        parts = []
        for record in records[start:]:
            parts += (b"%d " % (hlen + len(record)), head, record)
        data = memoryview(b"".join(parts))
        offset = 0
        try:
            while offset < len(data):
                offset += self._sock.send(data[offset:])
        except BaseException:
            # Count the messages that went out whole; a partial one is resent on a new connection.
            done = start
            for record in records[start:]:
                end = len(b"%d " % (hlen + len(record))) + hlen + len(record)
                if end > offset:
                    break
                offset -= end
                done += 1
            self._sent = done
            raise

    def _send_datagrams(self, head, records, start):
        """Send records[start:] one datagram each; on failure set `self._sent`."""
        send = self._sock.send
        index = start
        try:
            for index in range(start, len(records)):
                send(head + records[index])
            index = len(records)
            if self.transport == "udp":
                refused = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if refused:
                    raise OSError(refused, os.strerror(refused))
        except OSError as error:
            # An ICMP error reports the datagram sent before it: that one did not arrive either.
            refused = self.transport == "udp" and error.errno == errno.ECONNREFUSED
            self._sent = max(start, index - 1) if refused else index
            raise
        except BaseException:
            self._sent = index
            raise

    # -- Sink interface ---------------------------------------------------------------------------

    def write(self, records):
        """Send `records` (list of bytes, one JSON document each) in order.

        Raises:
            SinkError: With `delivered` = records sent before the failure.
        """
        if not records:
            return
        now = time.monotonic()
        if self._sock is not None and self._poll is not None:
            if self._peer_closed():
                # The server closed the connection after our last writes (a restart): what it had
                # not yet processed is gone without an error. Send again all that went out in the
                # last RESEND_WINDOW seconds: an audit trail prefers duplicates (same conn and seq;
                # `evennia-audit verify` reports them as resent) to a silent loss.
                self._resend = [record for _, record in self._unconfirmed]
                self._unconfirmed.clear()
                self._close_socket()
            else:
                self._forget_confirmed(now)
        resend = self._resend
        batch = resend + list(records)
        self._sent = 0
        retry = self.transport != "udp"
        while True:
            try:
                head = self._header()
                if self._sock is None:
                    self._connect()
                if self.transport == "tcp":
                    self._send_stream(head, batch, self._sent)
                else:
                    self._send_datagrams(head, batch, self._sent)
                if self.transport == "tcp":
                    self._unconfirmed.extend((now, record) for record in batch)
                    self._resend = []
                    self._forget_confirmed(now)
                return
            except Exception as err:
                if isinstance(err, OSError) and err.errno == errno.EMSGSIZE:
                    # This record can never go as one datagram; the ones after it still can.
                    raise SinkError(
                        f"syslog {self.where}: a record of {len(batch[self._sent])} bytes is "
                        "too large for one datagram (use transport 'tcp')",
                        self._sent,
                        rejected=1,
                    ) from err
                self._close_socket()
                if retry and isinstance(err, OSError) and not isinstance(err, socket.timeout):
                    retry = False
                    continue
                raise SinkError(
                    f"syslog {self.where}: {type(err).__name__}: {err}",
                    max(0, self._sent - len(resend)),
                ) from err

    def _forget_confirmed(self, now):
        """Records sent more than RESEND_WINDOW seconds ago on a connection still open: taken."""
        unconfirmed = self._unconfirmed
        while unconfirmed and (now - unconfirmed[0][0] > self.resend_window or len(unconfirmed) > RESEND_MAX):
            unconfirmed.popleft()

    def flush(self):
        """Nothing to do: every `write` sends at once."""

    def close(self):
        """Close the socket (a later `write` would open a new one)."""
        self._close_socket()
