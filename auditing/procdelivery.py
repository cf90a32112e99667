"""
`AUDIT_WRITER = "process"`: the built-in outputs write from a child process (`auditing.writerproc`).

What runs where:
- game thread (unchanged): `capture` + `Pipeline.submit`, a bounded deque that gives up its oldest.
- feeder thread (this process; `Pipeline`'s writer thread loop running `_drain` below): takes batches from the deque, turns each captured tuple into plain
  data (names of session, account, character and room read once per change per connection and
  second; keyword arguments that `marshal` refuses replaced by their repr, counted) and sends
  marshal'd batches to the child. It keeps every batch until the child acknowledges it.
- reader thread (this process): takes the child's acknowledgements (with its counters, the
  scrubbing state of the connections in the batch, and the scrubbed events for the watch feed)
  and its log lines.
- child process: builds, scrubs, serialises and writes with the same `Pipeline` code as the writer
  thread (hash chain, seals, retention, loss records, spill file at stop).

If the child dies it is started again (back-off 0.25 s doubling to 5 s), given the scrubbing state
of every connection as of its last acknowledgement, and sent again every unacknowledged batch in
order: nothing is lost; a batch the dead child had partly written is written twice (at most one).
`stop()` sends what is queued, asks the child to deliver for `AUDIT_STOP_TIMEOUT` s and spill the
rest, and waits for it; a child that does not answer is killed and what it held is spilled here.
"""

import collections
import dataclasses
import marshal
import os
import subprocess
import sys
import threading
import time

from . import pipeline as pipeline_module, writerproc
from .event import _ip, thawed, token as _token
from .pipeline import _BACKOFF_MAX, _BACKOFF_START, _STOP_GRACE, Pipeline
from .scrub import Scrubber
from .secrets import connection_key

_PLAIN = (str, int, float, bool, type(None), dict, list)
# Counters of the child that add up over restarts (the others describe the child now).
_SUMMED = ("delivered", "lost", "stated_lost", "loss_records", "build_errors", "observed_only",
           "spilled", "from_spill")
_SPILL_BUILD_RATE = 50_000  # events/s the child builds for the spill file at stop (conservatively)


def _log(level, message):
    """The pipeline's one log function, looked up per call (so both writers say things in one place)."""
    pipeline_module._log(level, message)


class StateMirror:
    """What the service reads and writes as `pipeline.builder`: each connection's scrubbing state as
    of the child's last acknowledgement (`export_state`/`import_state`), and the scrubber (for
    `AuditSession.mask`)."""

    def __init__(self, scrubber, send):
        self.scrubber = scrubber
        self.states = {}  # conn -> exported state (None entries are never kept)
        self._send = send

    def export_state(self, conn, now=None):
        return self.states.get(conn)

    def import_state(self, conn, data, now=None):
        if data is not None:
            self.states[conn] = data
            self._send(("import", conn, data))

    def update(self, states):
        for conn, data in states.items():
            if data is None:
                self.states.pop(conn, None)  # disconnected: the child forgot it
            else:
                self.states[conn] = data


class Feeder:
    """Captured tuples -> plain batches (feeder thread). Names are looked up once per change."""

    def __init__(self):
        self._who = {}
        self._second = None
        self.unmarshallable = 0

    def batch(self, number, drops, captured):
        """One ("batch", ...) message as bytes (see `auditing.writerproc`)."""
        second = int(time.time())
        if second != self._second:  # renames show within a second, as in `Builder`
            self._who.clear()
            self._second = second
        whos, index_of, items = [], {}, []
        for when, kind, direction, session, conn, seq, account, puppet, room, kwargs in captured:
            key = (conn, id(account), id(puppet), id(room))
            index = index_of.get(key)
            if index is None:
                who = self._who.get(key)
                if who is None:
                    who = self._who[key] = _who(session, account, puppet, room)
                index = index_of[key] = len(whos)
                whos.append(who)
            if kind != "io":  # lifecycle fields: objects by name#dbref, as `Builder` records them
                kwargs = {k: v if isinstance(v, _PLAIN) else _token(v) for k, v in kwargs.items()}
            items.append((when, kind, direction, conn, seq, index, kwargs))
        message = ("batch", number, drops, whos, items)
        try:
            return marshal.dumps(message)
        except ValueError:  # an object in some OOB kwargs: that value becomes its repr
            items = [item[:6] + (self._marshallable(item[6]),) for item in items]
            return marshal.dumps(("batch", number, drops, whos, items))

    def _marshallable(self, kwargs):
        try:
            marshal.dumps(kwargs)
            return kwargs
        except ValueError:
            pass
        self.unmarshallable += 1
        fixed = {}
        for key, value in kwargs.items():
            try:
                marshal.dumps(value)
            except ValueError:
                value = repr(value)
            fixed[key if isinstance(key, (str, int)) else repr(key)] = value
        return fixed


def _named(obj):
    if obj is None:
        return None
    try:
        pk, key = obj.id, obj.key
        return (pk if isinstance(pk, int) else None, str(key))
    except Exception:  # a deleted object: its repr, as `event._token` gives
        return (None, repr(obj))


def _who(session, account, puppet, room):
    try:
        key_hex = connection_key(session).hex()
    except Exception:
        key_hex = None
    sessid = getattr(session, "sessid", "")
    return (
        str(getattr(session, "protocol_key", "")),
        _ip(getattr(session, "address", "")),
        sessid if isinstance(sessid, (int, str)) or sessid is None else str(sessid),
        key_hex,
        _named(account),
        _named(puppet),
        _named(room),
    )


class ProcessPipeline(Pipeline):
    """`Pipeline` whose built-in output is written by a child process (see the module docstring).

    The game thread's part (`submit`, the bounded deque, `dropped`) is `Pipeline`'s own.

    Args:
        config (conf.AuditConfig): the validated settings (a built-in `AUDIT_CALLBACK`).
        clock (callable): epoch seconds.
    """

    takes_frozen = True  # the service's taps queue kwargs as marshal bytes (`event.frozen`)

    def __init__(self, config, clock=time.time):
        self._init_queue(config, clock)  # `processed`: events of batches the child took (for `flush`)
        self.sink = None
        self.builder = StateMirror(Scrubber(config.masks, config.prompt_masks), self._control)
        self.restarts = 0
        self._feeder = Feeder()
        self._controls = collections.deque()  # messages sent before the next batch
        self._unacked = collections.deque()  # (number, events, drops, message bytes)
        self._unacked_lock = threading.Lock()  # the feeder appends, the reply thread pops
        self._flight_events = 0  # events in `_unacked`
        self._taken = 0  # highest batch number the child took (handed to its output; maybe retrying)
        self._taken_events = 0  # events in `_unacked` of batches the child took
        self._flight_drops = 0  # drops sent with them, not yet counted by the child
        self._next_number = 1
        self._child = None
        self._child_stats = {}
        self._base = dict.fromkeys(_SUMMED, 0)  # counters of children that ended
        self._sent_policy = None
        self._sent_watch = None
        self._restart_at = 0.0
        self._backoff = _BACKOFF_START
        self._stopped_event = threading.Event()
        self._after_stop = None
        self._closed = False

    def start(self):
        """Start the feeder thread; it starts the child at once, not after the first flush interval."""
        self._wake.set()
        return super().start()

    # ---------------------------------------------------------------- child process

    def _spawn(self):
        env = dict(os.environ)
        env.setdefault("DJANGO_SETTINGS_MODULE", "evennia.settings_default")
        env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
        child = subprocess.Popen(
            [sys.executable, "-m", "auditing.writerproc"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )
        child.reply_thread = threading.Thread(target=self._read_replies, args=(child,),
                                              name="audit-writer-replies", daemon=True)
        child.reply_thread.start()
        return child

    def _child_alive(self):
        child = self._child
        return child is not None and child.poll() is None and not getattr(child, "gone", False)

    def _ensure_child(self):
        """Start (or start again) the child; give it the state and the unacknowledged batches."""
        if self._child_alive():
            return True
        if self._closed:  # stopped: the child ended as asked, none is started again
            return False
        if self._child is not None:
            self._child_ended()
        now = time.monotonic()
        if now < self._restart_at:
            return False
        child = None
        try:
            child = self._spawn()
            writerproc.send(child.stdin, ("config", writerproc.config_to_plain(self.config)))
            self._sent_policy = self._sent_watch = None
            for conn, data in list(self.builder.states.items()):
                writerproc.send(child.stdin, ("import", conn, data))
            self._child = child
            self._send_controls()
            with self._unacked_lock:
                blobs = [entry[3] for entry in self._unacked]
            for blob in blobs:
                writerproc.send(child.stdin, blob)
        except OSError as error:  # the child died at once: started again after the back-off
            if child is not None and self._child is None:
                child.kill()
            self._restart_at = now + self._backoff
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
            _log("err", f"audit writer process could not be started: {error}; trying again")
            return False
        _log("info", f"audit writer process {child.pid} started ({self.config.callback_path}; "
             f"{len(self._unacked)} unacknowledged batches resent)")
        return True

    def _child_ended(self):
        """The child died: its counters so far are kept, its batches sent again by the next one."""
        child, self._child = self._child, None
        code = child.poll()
        if code is None:
            child.kill()
            code = child.wait()
        child.reply_thread.join(5)  # its last acknowledgements first: they count
        for key in _SUMMED:
            self._base[key] += self._child_stats.get(key, 0) or 0
        self._child_stats = {}
        self.restarts += 1
        self._restart_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
        _log("err", f"audit writer process ended (exit code {code}); it is started again and "
             f"given the {len(self._unacked)} batches it had not acknowledged")

    def _read_replies(self, child):
        """Reply thread: acknowledgements, log lines, the final report."""
        while True:
            try:
                message = writerproc.receive(child.stdout)
            except Exception:
                message = None
            if message is None:
                child.gone = True
                self._wake.set()
                return
            kind = message[0]
            if kind == "ack":
                self._acknowledged(*message[1:])
            elif kind == "taken":
                self._child_stats = message[2]
                self._took(message[1])
            elif kind == "log":
                _log(message[1], message[2])
            elif kind == "stopped":
                self._child_stats = message[1]
                self.builder.update(message[2])
                self._stopped_event.set()

    def _took(self, number):
        """The child handed batches up to `number` to its output (`flush` may return), some records
        are in its retry buffer. The newest `AUDIT_QUEUE_SIZE` events of them stay held until
        acknowledged: a child that dies gets them again. Its retry buffer holds no more (it gives
        up its oldest, counted), so older ones are let go."""
        with self._unacked_lock:
            unacked = self._unacked
            for entry_number, count, drops, _blob in unacked:
                if self._taken < entry_number <= number:
                    self.processed += count
                    self._taken_events += count
                    self._flight_drops -= drops  # the child counted them
            self._taken = max(self._taken, number)
            while unacked and unacked[0][0] <= self._taken \
                    and self._taken_events - unacked[0][1] >= self.capacity:
                _number, count, _drops, _blob = unacked.popleft()
                self._taken_events -= count
                self._flight_events -= count

    def _acknowledged(self, number, stats, states, events):
        self._child_stats = stats
        self.builder.update(states)
        with self._unacked_lock:
            unacked = self._unacked
            while unacked and unacked[0][0] <= number:
                entry_number, count, drops, _blob = unacked.popleft()
                self._flight_events -= count
                if entry_number <= self._taken:
                    self._taken_events -= count
                else:
                    self.processed += count
                    self._flight_drops -= drops
            self._taken = max(self._taken, number)
        self._backoff = _BACKOFF_START
        if events:
            for event in events:
                self._observe(event)
            for observer in self.observers:
                observer.batch_done()

    # ---------------------------------------------------------------- feeder thread

    def _control(self, message):
        self._controls.append(message)
        self._wake.set()

    def _send_controls(self):
        policy = sorted(self.policy.flagged)
        if policy != self._sent_policy:
            self._controls.append(("policy", policy))
            self._sent_policy = policy
        watch = any(bool(observer) for observer in self.observers)
        if watch != self._sent_watch:
            self._controls.append(("watch", watch))
            self._sent_watch = watch
        while self._controls:
            writerproc.send(self._child.stdin, self._controls.popleft())

    def _drain(self, limit=True):
        """Send what is queued (at most `AUDIT_QUEUE_SIZE` events unacknowledged when `limit`)."""
        with self._lock:
            if not self._ensure_child():
                return
            try:
                self._send_controls()
                while self.queue and (not limit or self._in_flight() - self._taken_events < self.capacity):
                    self._send_batch(self._take_batch())
                if self.dropped != self._dropped_seen:
                    # Events given up while the child cannot take more: stated now, not with
                    # the next batch (which a failing output may hold back for long).
                    self._send_batch([])
            except OSError:  # the child died: its batches wait for the next one
                self._child.gone = True
                self._wake.set()

    def _in_flight(self):
        return self._flight_events

    def _take_unacked(self):
        """Every unacknowledged entry, oldest first, now no longer held (the stop accounts for them:
        they count as processed)."""
        with self._unacked_lock:
            entries = list(self._unacked)
            self._unacked.clear()
            self.processed += sum(entry[1] for entry in entries if entry[0] > self._taken)
            self._flight_events = self._flight_drops = self._taken_events = 0
        return entries

    def _send_batch(self, batch):
        dropped = self.dropped - self._dropped_seen
        drops = None
        if dropped > 0:
            self._dropped_seen += dropped
            first, last = self.dropped_first, self.dropped_last
            self.dropped_first = None  # the game thread starts the next range
            now = self.clock()
            drops = (dropped, first or last or now, last or now)
        number = self._next_number
        self._next_number += 1
        blob = self._feeder.batch(number, drops, batch)
        with self._unacked_lock:
            self._unacked.append((number, len(batch), dropped if drops else 0, blob))
            self._flight_events += len(batch)
            self._flight_drops += dropped if drops else 0
        writerproc.send(self._child.stdin, blob)

    # ---------------------------------------------------------------- control

    def stop(self, timeout=None):
        """Send what is queued, let the child deliver for `timeout` s and spill the rest; wait for it."""
        if self._stopping:
            return
        timeout = self.stop_timeout if timeout is None else timeout
        self._deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(min(timeout, _STOP_GRACE))
        with self._lock:
            self._drain(limit=False)
            child = self._child if self._child_alive() else None
            left = max(0.0, self._deadline - time.monotonic())
            if child is not None:
                try:
                    writerproc.send(child.stdin, ("stop", left))
                    child.stdin.close()
                except OSError:
                    child = None
            held = self._in_flight()
            wait = left + _STOP_GRACE + held / _SPILL_BUILD_RATE
            if child is not None and self._stopped_event.wait(wait):
                # delivered, spilled or counted by the child
                self._take_unacked()
                try:
                    child.wait(_STOP_GRACE)
                except subprocess.TimeoutExpired:
                    child.kill()
            else:
                self._spill_here(child)
            self._closed = True
        self.submit = self._submit_after_stop

    def _spill_here(self, child):
        """The child did not finish: what it had not acknowledged is built and spilled here."""
        if child is not None:
            child.kill()
            child.wait()
        local = self._local_pipeline()
        stand_ins = writerproc.StandIns()
        for _number, _events, _drops, blob in self._take_unacked():
            _kind, _number, drops, whos, items = marshal.loads(blob)
            if drops:
                local.dropped += drops[0]
                local.dropped_first = local.dropped_first or drops[1]
                local.dropped_last = drops[2]
            local.queue.extend(writerproc.captured_from_plain(items, whos, stand_ins))
        _log("err", f"audit writer process did not finish within AUDIT_STOP_TIMEOUT; "
             f"{len(local.queue)} records it held are spilled by the server")
        local.stop(timeout=0)

    def _local_pipeline(self):
        """An in-process writer (thread mode, no thread), for what comes after the child is gone."""
        if self._after_stop is None:
            local = Pipeline(dataclasses.replace(self.config, writer="thread"), clock=self.clock)
            local._recovered = True  # spill files are the next start's
            local.policy = self.policy
            for conn, data in self.builder.states.items():
                local.builder.import_state(conn, data, self.clock())
            self._after_stop = local
        return self._after_stop

    def _submit_after_stop(self, item):
        """After shutdown began (disconnect records at exit): written here, on the caller's thread."""
        self.accepted += 1
        self.processed += 1
        local = self._local_pipeline()
        if not local._stopping:
            local.stop(timeout=0)
        local.submit(thawed(item))

    def stats(self):
        """`Pipeline.stats`' counters, from the child's acknowledgements plus this process's own."""
        child = self._child_stats
        summed = {key: self._base[key] + (child.get(key, 0) or 0) for key in _SUMMED}
        local = self._after_stop
        if local is not None:
            for key in _SUMMED:
                summed[key] += local.stats()[key]
        in_flight_drops = self._flight_drops
        return {
            "output": self.config.callback_path,
            "writer": "process",
            "accepted": self.accepted,
            "queued": len(self.queue),
            # sent and not yet taken by the child, plus the child's own retry buffer
            "retrying": self._in_flight() - self._taken_events + (child.get("retrying", 0) or 0),
            "delivered": summed["delivered"],
            "lost": summed["lost"] + in_flight_drops + (self.dropped - self._dropped_seen),
            "dropped_oldest": self.dropped,
            "stated_lost": summed["stated_lost"],
            "unstated_lost": (child.get("unstated_lost", 0) or 0) + in_flight_drops
            + (self.dropped - self._dropped_seen),
            "loss_records": summed["loss_records"],
            "failing": bool(child.get("failing")),
            "last_cause": child.get("last_cause"),
            "build_errors": summed["build_errors"],
            "observed_only": summed["observed_only"],
            "spilled": summed["spilled"],
            "from_spill": summed["from_spill"],
            "output_limits": child.get("output_limits"),
            "output_stats": child.get("output_stats"),
            "writer_restarts": self.restarts,
            "unmarshallable": self._feeder.unmarshallable,
        }
