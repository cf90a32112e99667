"""
Real network clients for a game started with `auditing.testing.game.GameServer`.

- `TelnetClient(host, port)`: a plain socket telnet client. It refuses every telnet option the
  server offers or asks for (DO -> WONT, WILL -> DONT), so Evennia finishes its handshake at once
  and talks plain text. Received text is returned with telnet commands, ANSI escapes and CR removed.
- `WebClient(port)`: Evennia's websocket webclient protocol (legacy "v1.evennia.com" JSON arrays
  `["text", ["look"], {}]`), using the `websockets` package's sync client. Text output arrives as
  HTML; `read_until` matches on it converted back to plain text.

Both have `send_line(text)`, `read_until(text_or_regex, timeout)`, `read_available(wait)`,
`transcript()` and `close()`, and are context managers.
"""

import codecs
import html
import json
import re
import socket
import time

__all__ = ["TelnetClient", "WebClient", "ClientTimeout", "strip_ansi", "html_to_text"]

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240

_ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_PARTIAL_ESC_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*|)$")
_BR_RE = re.compile(r"<br\s*/?>", re.I)
_TAG_RE = re.compile(r"<[^>]*>")


class ClientTimeout(TimeoutError):
    """read_until() did not see what it waited for in time."""


def strip_ansi(text):
    """Remove ANSI/VT100 escape sequences."""
    return _ANSI_RE.sub("", text)


def html_to_text(text):
    """Turn the webclient's HTML output back into plain text."""
    text = _BR_RE.sub("\n", text)
    text = _TAG_RE.sub("", text)
    return html.unescape(text).replace("\xa0", " ")


def _compile(pattern):
    if isinstance(pattern, re.Pattern):
        return pattern
    return re.compile(re.escape(pattern))


class _TextBuffer:
    """Accumulated, not yet consumed text plus a full transcript."""

    def __init__(self):
        self.pending = ""
        self.log = []

    def add(self, text):
        if text:
            self.pending += text
            self.log.append(text)

    def take_until(self, regex):
        match = regex.search(self.pending)
        if not match:
            return None
        out, self.pending = self.pending[: match.end()], self.pending[match.end():]
        return out

    def take_all(self):
        out, self.pending = self.pending, ""
        return out


class _ClientBase:
    name = "client"

    def _fill(self, timeout):  # pragma: no cover - overridden
        raise NotImplementedError

    def read_until(self, pattern, timeout=10.0):
        """
        Wait until `pattern` (a literal string, or a compiled regex) appears in the received text.
        Returns the text received up to and including the match and consumes it. Raises
        ClientTimeout (with the tail of what did arrive) on timeout, ConnectionError on EOF.
        """
        regex = _compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            out = self._buf.take_until(regex)
            if out is not None:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClientTimeout(
                    f"{self.name}: waited {timeout:.1f}s for {regex.pattern!r}; unconsumed text "
                    f"received: {self._buf.pending[-1500:]!r}"
                )
            if not self._fill(min(remaining, 0.5)) and self.closed:
                raise ConnectionError(
                    f"{self.name}: connection closed while waiting for {regex.pattern!r}; "
                    f"unconsumed text: {self._buf.pending[-1500:]!r}"
                )

    def read_available(self, wait=0.5):
        """Collect whatever arrives until the line has been quiet for `wait` seconds; consume it."""
        while self._fill(wait):
            pass
        return self._buf.take_all()

    def transcript(self):
        """Everything received so far (consumed or not), as plain text."""
        return "".join(self._buf.log)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TelnetClient(_ClientBase):
    """A minimal telnet client that refuses all option negotiation."""

    def __init__(self, host="127.0.0.1", port=4000, timeout=10.0, encoding="utf-8"):
        self.name = f"telnet {host}:{port}"
        self.encoding = encoding
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.closed = False
        self.negotiations = []  # (command, option) pairs the server sent, for debugging
        self._buf = _TextBuffer()
        self._decoder = codecs.getincrementaldecoder(encoding)("replace")
        self._state = "data"
        self._cmd = None
        self._hold = ""

    # -- protocol parsing -------------------------------------------------------------------
    def _parse(self, chunk):
        data = bytearray()
        replies = bytearray()
        for byte in chunk:
            state = self._state
            if state == "data":
                if byte == IAC:
                    self._state = "iac"
                else:
                    data.append(byte)
            elif state == "iac":
                if byte == IAC:
                    data.append(IAC)
                    self._state = "data"
                elif byte in (WILL, WONT, DO, DONT):
                    self._cmd = byte
                    self._state = "opt"
                elif byte == SB:
                    self._state = "sb"
                else:  # GA, NOP, EOR, ... : two-byte commands
                    self._state = "data"
            elif state == "opt":
                self.negotiations.append((self._cmd, byte))
                if self._cmd == DO:
                    replies += bytes((IAC, WONT, byte))
                elif self._cmd == WILL:
                    replies += bytes((IAC, DONT, byte))
                # WONT/DONT need no answer (answering could loop)
                self._state = "data"
            elif state == "sb":
                if byte == IAC:
                    self._state = "sb_iac"
            elif state == "sb_iac":
                self._state = "data" if byte == SE else "sb"
        if replies and not self.closed:
            try:
                self.sock.sendall(bytes(replies))
            except OSError:
                pass
        text = self._hold + self._decoder.decode(bytes(data))
        text = text.replace("\r", "")
        partial = _PARTIAL_ESC_RE.search(text)
        if partial:
            self._hold, text = text[partial.start():], text[: partial.start()]
        else:
            self._hold = ""
        self._buf.add(strip_ansi(text))

    def _fill(self, timeout):
        """Receive once (up to `timeout` s). True if bytes arrived."""
        if self.closed:
            return False
        self.sock.settimeout(max(timeout, 0.001))
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return False
        except OSError:
            self.closed = True
            return False
        if not chunk:
            self.closed = True
            return False
        self._parse(chunk)
        return True

    # -- API --------------------------------------------------------------------------------
    def send_line(self, text):
        """Send one line of input (CR LF terminated)."""
        payload = text.encode(self.encoding).replace(b"\xff", b"\xff\xff") + b"\r\n"
        self.sock.sendall(payload)

    def close(self):
        if not self.closed:
            self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


class WebClient(_ClientBase):
    """
    Evennia websocket webclient (legacy v1 JSON array format; no subprotocol is offered, which
    Evennia 5 and 6 both treat as "v1.evennia.com"). No browser session id is sent, so there is
    no auto-login: log in with `connect <name> <password>` like on telnet.
    """

    def __init__(self, port, host="127.0.0.1", timeout=10.0, path="/"):
        from websockets.sync.client import connect

        self.name = f"websocket ws://{host}:{port}{path}"
        self.url = f"ws://{host}:{port}{path}"
        self.ws = connect(self.url, open_timeout=timeout, close_timeout=2, max_size=None)
        self.closed = False
        self.messages = []  # every message received, decoded JSON: [name, args, kwargs]
        self._buf = _TextBuffer()

    def _fill(self, timeout):
        if self.closed:
            return False
        from websockets.exceptions import ConnectionClosed

        try:
            raw = self.ws.recv(timeout=max(timeout, 0.001))
        except TimeoutError:
            return False
        except ConnectionClosed:
            self.closed = True
            return False
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        try:
            msg = json.loads(raw)
        except ValueError:
            msg = ["raw", [raw], {}]
        self.messages.append(msg)
        if isinstance(msg, list) and msg and msg[0] == "text":
            args = msg[1] if len(msg) > 1 else []
            text = args[0] if args else ""
            if isinstance(text, str):
                text = html_to_text(text)
                self._buf.add(text if text.endswith("\n") else text + "\n")
        return True

    def send(self, cmdname, *args, **kwargs):
        """Send an input function call: `[cmdname, [args], {kwargs}]`."""
        self.ws.send(json.dumps([cmdname, list(args), kwargs]))

    def send_line(self, text):
        """Send one line of command input (`["text", [text], {}]`)."""
        self.send("text", text)

    def oob_messages(self):
        """Received messages that are not text."""
        return [m for m in self.messages if not (isinstance(m, list) and m and m[0] == "text")]

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.ws.close()
            except Exception:  # noqa: BLE001 - closing a dead socket
                pass


def log_in(client, name, password, create=False, timeout=20):
    """At the connection screen: create the account first if asked, then `connect`. Returns the client
    (the caller waits for what it expects next: the character, or a refusal)."""
    client.read_until("<password>", timeout=timeout + 10)
    if create:
        client.send_line(f"create {name} {password}")
        client.read_until("[Y]/N?", timeout=timeout)
        client.send_line("y")
        client.read_until("was created", timeout=timeout)
    client.send_line(f"connect {name} {password}")
    return client
