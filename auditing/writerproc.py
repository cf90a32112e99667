"""
The built-in outputs' writer process: `python -m auditing.writerproc` (see `auditing.procdelivery`).

With `AUDIT_WRITER = "process"` the game process only captures events and turns them into plain
data; this child builds, scrubs, serialises and writes them with the very same `Pipeline` code the
in-process writer thread runs (`Builder`, `Scrubber`, `LossTracker`, `ChainingSink`, spill file), so
none of that work holds the game's interpreter lock. It imports neither Django's app registry nor
Evennia's server: the configuration comes as plain data (masks as pattern strings, compiled again
here with RE2) and game objects as stand-ins carrying the names the game process read.

Wire format, both ways: a 4-byte big-endian length, then one `marshal` blob (a tuple whose first
item names the message).

    parent -> child: ("config", plain config) first, then
        ("batch", number, drops, whos, items)   events to write (see `plain_batch`)
        ("import", conn, state)                 a connection's scrubbing state (after a reload)
        ("policy", flagged names)               accounts recorded in full (changes in game)
        ("watch", on)                           send scrubbed events back for the watch feed
        ("stop", timeout)                       deliver for `timeout` s, spill the rest, exit
    child -> parent:
        ("taken", number, stats)                batches up to `number` were handed to the output,
                                                some records wait in its retry buffer
        ("ack", number, stats, states, events)  batches up to `number` are delivered or counted
        ("log", level, message)                 a line for the server log
        ("stopped", stats, states)              everything is delivered, spilled or counted
"""

import dataclasses
import marshal
import os
import queue
import struct
import sys
import threading
import time

_HEADER = struct.Struct(">I")


# ---------------------------------------------------------------- framing (both processes)


def send(stream, message):
    """Write one message and flush. Raises OSError (BrokenPipeError) when the other side is gone."""
    blob = message if isinstance(message, bytes) else marshal.dumps(message)
    stream.write(_HEADER.pack(len(blob)) + blob)
    stream.flush()


def receive(stream):
    """The next message, or None at end of stream (the other side is gone)."""
    header = _read_exactly(stream, _HEADER.size)
    if header is None:
        return None
    blob = _read_exactly(stream, _HEADER.unpack(header)[0])
    return None if blob is None else marshal.loads(blob)


def _read_exactly(stream, size):
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------- configuration as plain data


def config_to_plain(config):
    """The validated `AuditConfig` as marshal-able data (callback by path, masks by pattern)."""
    plain = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name == "callback":
            continue
        if field.name in ("masks", "prompt_masks"):
            value = [(mask.label, mask.pattern, mask.secret_group) for mask in value]
        elif isinstance(value, (set, frozenset)):
            value = sorted(value)
        elif isinstance(value, dict):
            value = {key: list(item) if isinstance(item, tuple) else item for key, item in value.items()}
        plain[field.name] = value
    return plain


def config_from_plain(plain):
    """`config_to_plain`'s data back into an `AuditConfig` (masks compiled again with RE2)."""
    from . import conf

    fields = dict(plain)
    fields["callback"], _path = conf.resolve_callback(fields["callback_path"])
    for name in ("masks", "prompt_masks"):
        fields[name] = tuple(
            conf.UserMask(label, pattern, conf.re2.compile("(?i)" + pattern), group)
            for label, pattern, group in fields[name]
        )
    for name in ("flagged", "exclude_output"):
        fields[name] = frozenset(fields[name])
    syslog = dict(fields["syslog"])
    if isinstance(syslog.get("address"), list):
        syslog["address"] = tuple(syslog["address"])
    fields["syslog"] = syslog
    fields["writer"] = "thread"  # the child is the writer: it must not start one of its own
    return conf.AuditConfig(**fields)


# ---------------------------------------------------------------- game objects as stand-ins


class StandIn:
    """An account, character or room as the writer sees it: its dbref (`id`) and name (`key`)."""

    __slots__ = ("id", "key", "__weakref__")

    def __init__(self, pk, key):
        self.id, self.key = pk, key


class SessionStandIn:
    """A session as the writer sees it: what `Builder` reads, and the connection's secret key."""

    __slots__ = ("protocol_key", "address", "sessid", "server_data", "__weakref__")

    def __init__(self, protocol_key, address, sessid, key_field, key_hex):
        self.protocol_key, self.address, self.sessid = protocol_key, address, sessid
        self.server_data = {key_field: key_hex} if key_hex else {}


class StandIns:
    """Plain `who` tuples -> stand-in objects, kept alive so `Builder`'s caches keyed by `id()` stay
    right (a freed stand-in's id could be reused by another)."""

    def __init__(self):
        from .secrets import KEY_FIELD

        self.key_field = KEY_FIELD
        self._made = {}

    def of(self, who):
        made = self._made.get(who)
        if made is None:
            if len(self._made) > 100_000:
                return self._fresh(who)  # not cached: never aliases a cached one
            made = self._made[who] = self._fresh(who)
        return made

    def _fresh(self, who):
        protocol, address, sessid, key_hex, account, puppet, room = who
        session = SessionStandIn(protocol, address, sessid, self.key_field, key_hex)
        return (session,) + tuple(StandIn(*named) if named is not None else None
                                  for named in (account, puppet, room))


def captured_from_plain(items, whos, stand_ins):
    """The captured tuples (`event.capture`'s shape) of one batch, with stand-ins for objects."""
    objects = [stand_ins.of(tuple(who)) for who in whos]
    captured = []
    for when, kind, direction, conn, seq, index, kwargs in items:
        session, account, puppet, room = objects[index]
        if type(kwargs) is bytes:  # `event.frozen` in the game process
            kwargs = marshal.loads(kwargs)
        captured.append((when, kind, direction, session, conn, seq, account, puppet, room, kwargs))
    return captured


def marshal_safe(value):
    """`value` if marshal takes it, else its repr (for stats that carry arbitrary objects)."""
    try:
        marshal.dumps(value)
        return value
    except ValueError:
        return repr(value)


# ---------------------------------------------------------------- the child


class _WatchRelay:
    """Pipeline observer in the child: keeps scrubbed events for the parent's watch feed."""

    def __init__(self):
        self.on = False
        self.events = []

    def __bool__(self):
        return self.on

    def observe(self, event):
        if self.on:
            self.events.append(marshal_safe({key: value for key, value in event.items() if key != "objects"}))

    def batch_done(self):
        pass

    def take(self):
        events, self.events = self.events, []
        return events


class WriterChild:
    """The child's side: one `Pipeline` (no writer thread) driven by the parent's messages.

    Args:
        config (conf.AuditConfig): as the parent validated it.
        out (file): binary stream to the parent.
    """

    def __init__(self, config, out):
        from . import pipeline as pipeline_module, sinkbase

        self.out = out
        self._out_lock = threading.Lock()
        # Log lines go to the parent, which writes them to the server log (once per episode, as now).
        pipeline_module.report = sinkbase.report = self.log
        self.pipeline = pipeline_module.Pipeline(config)
        self.relay = _WatchRelay()
        self.pipeline.observers.append(self.relay)
        self.stand_ins = StandIns()
        self.unacked = None  # the last batch number taken but not acknowledged
        self.touched = set()  # connections whose scrubbing state changed since the last ack
        self.stop_at = None

    def log(self, level, message):
        try:
            self._send(("log", level, str(message)))
        except OSError:  # the parent is gone: stderr is all there is
            print(f"auditing: {message}", file=sys.stderr)

    def _send(self, message):
        with self._out_lock:
            send(self.out, message)

    def run(self, messages):
        """Handle messages until "stop" (or the parent's end of stream)."""
        interval = self.pipeline.interval
        while True:
            try:
                message = messages.get(timeout=interval)
            except queue.Empty:
                self.pipeline._drain()  # retries, due loss records and seals
                self._ack_or_report()
                continue
            if message is None:  # the server died: deliver what we hold, spill the rest
                self._stop(self.pipeline.stop_timeout, clean=False)
                return
            if message[0] == "stop":
                self._stop(message[1])
                return
            try:
                self.handle(message)
            except Exception as error:  # as the writer thread: never die of one batch
                self.log("err", f"audit writer error: {type(error).__name__}: {error}")

    def handle(self, message):
        kind = message[0]
        pipeline = self.pipeline
        if kind == "batch":
            _kind, number, drops, whos, items = message
            if drops:
                count, first, last = drops
                if pipeline.dropped_first is None:
                    pipeline.dropped_first = first
                pipeline.dropped_last = last
                pipeline.dropped += count
            captured = captured_from_plain(items, whos, self.stand_ins)
            self.touched.update(item[4] for item in captured)
            pipeline.queue.extend(captured)
            if self.stop_at is not None:
                pipeline._deadline = self.stop_at
            pipeline._drain()
            pipeline.processed = 0  # the parent counts events; here only the queue matters
            self.unacked = number
            self._ack_or_report()
        elif kind == "import":
            pipeline.builder.import_state(message[1], message[2], time.time())
        elif kind == "policy":
            pipeline.policy.flagged = set(message[1])
        elif kind == "watch":
            self.relay.on = bool(message[1])

    def _ack_or_report(self):
        """Acknowledge what is done; else say what was taken (the parent's `flush` need not wait
        for a retry) with the counters as they are now (`failing`, losses stated meanwhile)."""
        if not self._ack_if_done() and self.unacked is not None:
            self._send(("taken", self.unacked, self.stats()))

    def _ack_if_done(self):
        """Acknowledge once every record taken so far was delivered or counted lost."""
        pipeline = self.pipeline
        if self.unacked is None or pipeline._pending or pipeline.queue:
            return False
        number, self.unacked = self.unacked, None
        self._send(("ack", number, self.stats(), self._states(self.touched), self.relay.take()))
        self.touched = set()
        return True

    def _states(self, conns):
        builder, now = self.pipeline.builder, time.time()
        return {conn: builder.export_state(conn, now) for conn in conns}

    def stats(self):
        return {key: marshal_safe(value) for key, value in self.pipeline.stats().items()}

    def _stop(self, timeout, clean=True):
        pipeline = self.pipeline
        pipeline.stop(timeout=max(0.0, timeout), clean=clean)
        try:
            self._send(("stopped", self.stats(), self._states(list(pipeline.builder.states)
                                                              + list(self.touched))))
        except OSError:
            pass  # the parent is gone: what was not delivered is in the spill file


def _reader(stream, messages, child):
    """Unmarshal the parent's messages on their own thread; note a stop's deadline at once."""
    while True:
        try:
            message = receive(stream)
        except Exception as error:
            child.log("err", f"audit writer process: unreadable message ({type(error).__name__}: {error})")
            message = None
        if message is not None and message[0] == "stop":
            child.stop_at = time.monotonic() + max(0.0, message[1])
        messages.put(message)
        if message is None or message[0] == "stop":
            return


def main():
    """Entry point of `python -m auditing.writerproc` (started by `auditing.procdelivery`)."""
    # Stray prints (an import's warning) must not corrupt the stream: stdout becomes stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = os.fdopen(0, "rb")
    first = receive(inp)
    if first is None or first[0] != "config":
        return 2
    try:  # the scrubber's typo check uses Evennia's string similarity: fail here, not per event
        from evennia.utils.utils import string_similarity  # noqa: F401
    except Exception as error:
        send(out, ("log", "warn", f"audit writer process: Evennia's utils not importable ({error})"))
    child = WriterChild(config_from_plain(first[1]), out)
    messages = queue.Queue()
    threading.Thread(target=_reader, args=(inp, messages, child), daemon=True).start()
    child.run(messages)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
