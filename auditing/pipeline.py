"""
Delivery: a bounded queue between the game thread and one writer thread.

The game thread only appends a captured tuple to a deque (`Pipeline.submit`). The writer thread
wakes every `AUDIT_FLUSH_INTERVAL` seconds (sooner when a batch is waiting), builds and scrubs the
events in order, serialises them once with orjson and hands the batch to the sink. So the game never
waits for a disk, a socket or a slow callback, and a hard crash loses at most one flush interval.

Failure policy (nothing is given up without being counted, logged and stated in the trail):
- The queue holds `AUDIT_QUEUE_SIZE` events. When it is full, the game thread gives up the *oldest*
  queued event for each new one (the newest say the most about what is happening now), counted with
  the time range it covers.
- A sink that fails (disk full, directory read-only, syslog down) keeps its undelivered records in
  a retry buffer of the same size, retried with back-off (0.25 s doubling to 5 s); beyond that the
  oldest are given up and counted. A custom callback that raises loses that one event, counted.
- What was given up is stated in the trail by `{"kind": "loss", "lost": N, "first_time": ...,
  "last_time": ..., "cause": ...}` records: the first as soon as the output takes records, then at
  most one a second while the trouble lasts, so even a sustained overload is stated within seconds.
  A loss record that cannot be delivered keeps its count for the next one.
- The server log gets a few lines per episode of trouble, not one per failure (see `losses`).
- `stop()` waits at most `AUDIT_STOP_TIMEOUT` seconds for the output; what is left is written to a
  spill file that the next start delivers first (see `spill`).
- `stats()` gives the counters at any time (`evennia shell`, or the in-game `audit` command).
Custom callbacks run on the writer thread.
"""

import collections
import datetime
import json
import os
import threading
import time

import orjson

from . import FORMAT_VERSION, spill
from .event import Builder, iso_time
from .losses import LossTracker
from .capture import CapturePolicy
from .scrub import Scrubber
from .sinkbase import SinkError, report

_BACKOFF_START = 0.25
_BACKOFF_MAX = 5.0
_BATCH = 4096  # events built per sink write
_WAKE_AT = 2048  # queued events that wake the writer before its interval is up
_STOP_GRACE = 6.0  # seconds more for a write already in progress at the stop deadline
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS
_OBJECT_KEYS = ("session", "account", "character", "room")
_CALLBACK_LIMITS = "custom callback: delivered = the callback returned without raising"


def _log(level, message):
    """One line in the server log (through here, so tests can watch what the pipeline says)."""
    report(level, message)


def _plain_objects(when, sparse):
    """`objects` of a record that has no live objects (loss, error, spilled): same shape for callbacks."""
    objects = {"time": datetime.datetime.fromtimestamp(when, datetime.timezone.utc)}
    if not sparse:
        objects.update(dict.fromkeys(_OBJECT_KEYS))
    return objects


def serialize(event):
    """One JSON document as bytes; never raises (falls back to the stdlib, then to a repr)."""
    try:
        return orjson.dumps(event, default=str, option=_ORJSON_OPTIONS)
    except Exception:
        try:
            return json.dumps(event, default=str, ensure_ascii=False).encode("utf-8", "replace")
        except Exception as error:
            return orjson.dumps(
                {
                    "v": FORMAT_VERSION,
                    "kind": "error",
                    "time": event.get("time") if isinstance(event, dict) else None,
                    "error": f"record could not be serialised: {type(error).__name__}",
                }
            )


def serialize_parts(parts):
    """A record from its changing keys and the connection's serialised constant ones.

    orjson spends most of a record's time on the ten keys that are the same for every record of a
    connection; `Builder` serialises those once (see `Builder._finish`).
    """
    head, rest = parts
    try:
        first = orjson.dumps(head, default=str, option=_ORJSON_OPTIONS)
    except Exception:
        return serialize({**head, **orjson.loads(b"{" + rest)})
    if rest == b"}":  # nothing constant (sparse mode dropped it all)
        return first
    return first[:-1] + b"," + rest


class Pipeline:
    """Queue, writer thread and failure policy for one configuration.

    With `AUDIT_WRITER = "process"` and a built-in output, `Pipeline(config)` is a
    `procdelivery.ProcessPipeline`: the same game-thread part, the writing in a child process.

    Args:
        config (conf.AuditConfig): the validated settings.
        clock (callable): epoch seconds (injectable for tests).
    """

    def __new__(cls, config, clock=time.time):
        if cls is Pipeline and getattr(config, "writer", "thread") == "process":
            from . import outputs

            # Only the built-in outputs: the child names them by path; a custom callback (or a
            # sink of a test) needs live objects or this process's state, so it is written here.
            if config.callback is outputs.to_file or config.callback is outputs.to_syslog:
                from .procdelivery import ProcessPipeline

                return super().__new__(ProcessPipeline)
        return super().__new__(cls)

    def __init__(self, config, clock=time.time):
        self._init_queue(config, clock)
        self.builder = Builder(
            config,
            Scrubber(config.masks, config.prompt_masks),
            with_objects=getattr(config.callback, "make_sink", None) is None,
        )
        self.delivered = 0  # events (not loss records) the output took
        self.build_errors = 0
        self.observed_only = 0  # writer thread only: built for scrubbing state, not recorded
        self.observer_errors = 0
        self.spilled = 0  # records written to a spill file at stop
        self.from_spill = 0  # records of earlier spill files delivered (or counted lost) here
        self.loss = LossTracker(lambda level, message: _log(level, message))
        self._pending = collections.deque()  # (time, record, lost stated by it) not yet delivered
        self._pending_cap = self.capacity
        self._leftover = []  # built events a stop interrupted, in the writer's hands
        self._spill_paths = []  # spill files being delivered; removed once they are
        self._recovered = False
        self._retry_at = 0.0
        self._backoff = _BACKOFF_START
        self._choose_delivery(config.callback)

    def _init_queue(self, config, clock):
        """The game thread's part and the writer loop's controls (shared with `ProcessPipeline`)."""
        self.config = config
        self.clock = clock
        self.queue = collections.deque()
        self.capacity = config.queue_size
        self.interval = config.flush_interval
        self.stop_timeout = getattr(config, "stop_timeout", 10.0)
        self.accepted = 0  # game thread only: every event submitted
        self.dropped = 0  # game thread only: oldest events pushed out of a full queue
        self.dropped_first = None
        self.dropped_last = None
        self._dropped_seen = 0
        self.processed = 0  # writer thread only
        self.policy = CapturePolicy(config)  # what is written (the service adds flagged accounts)
        self.observers = []  # given every scrubbed event (`observe`), then `batch_done` (the watch feed)
        self._wake = threading.Event()
        self._lock = threading.RLock()  # one batch at a time (writer thread, or stop/flush)
        self._stopping = False
        self._deadline = None
        self._thread = None
        self.submit = self._submit

    # ---------------------------------------------------------------- set-up

    def _choose_delivery(self, callback):
        """Decided once: built-in sinks get serialised batches, custom callbacks one dict each."""
        make_sink = getattr(callback, "make_sink", None)
        if make_sink is not None:
            self.sink = make_sink(self.config)
            self._deliver = self._deliver_to_sink
            self._state_losses = self._queue_loss_record
            # Sinks that bucket by event time (the file sink's UTC days) take the times too.
            import inspect

            self._sink_takes_times = "times" in inspect.signature(self.sink.write).parameters
        else:
            self.sink = None
            self.callback = callback
            self._deliver = self._deliver_to_callback
            self._state_losses = self._call_loss_record

    def start(self):
        """Start the writer thread (the runtime arranges for `stop` at shutdown)."""
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        return self

    # ---------------------------------------------------------------- game thread

    def _submit(self, item):
        queue = self.queue
        if len(queue) >= self.capacity:
            try:
                oldest = queue.popleft()  # the writer may take it first: then nothing is given up
            except IndexError:
                pass
            else:
                self.dropped += 1
                self.dropped_last = oldest[0]
                if self.dropped_first is None:
                    self.dropped_first = oldest[0]
        queue.append(item)
        self.accepted += 1
        if len(queue) == _WAKE_AT:
            self._wake.set()

    def _submit_after_stop(self, item):
        """After shutdown began there is no writer: deliver on the caller's thread."""
        self.queue.append(item)
        self.accepted += 1
        with self._lock:
            self._deadline = None  # this one event may take the output's time
            try:
                self._drain()
            finally:
                self._deadline = time.monotonic()
            self._spill_rest()  # what the output refused now waits for the next start

    # ---------------------------------------------------------------- writer thread

    def _run(self):
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self._drain()
            except Exception as error:  # never let the writer die
                _log("err", f"audit writer error: {type(error).__name__}: {error}")
            if self._stopping and (not self.queue or self._past_deadline()):
                return

    def _past_deadline(self):
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _drain(self):
        with self._lock:
            if not self._recovered:
                self._recover()
            self._check_losses()
            while self.queue and not self._past_deadline():
                batch = self._take_batch()
                self._deliver(self._build(batch))
                self.processed += len(batch)
                self._check_losses()
            if self._pending and not self._past_deadline():
                self._deliver([])
            self._check_losses()
            self.loss.end_episode(self.clock())
            if self.sink is not None and hasattr(self.sink, "on_idle"):
                self.sink.on_idle()  # auditing.chain: seals come due on the writer's clock too

    def _take_batch(self):
        """Up to `_BATCH` events from the queue (the game thread may take the oldest meanwhile)."""
        batch = []
        popleft = self.queue.popleft
        try:
            for _ in range(_BATCH):
                batch.append(popleft())
        except IndexError:
            pass
        return batch

    def _check_losses(self):
        """Count what the game thread gave up, and state losses in the trail when one is due."""
        now = self.clock()
        self._account_dropped(now)
        if self.loss.due(now):
            self._state_losses(now)

    def _account_dropped(self, now):
        dropped = self.dropped - self._dropped_seen
        if dropped <= 0:
            return
        self._dropped_seen += dropped
        first, last = self.dropped_first, self.dropped_last
        self.dropped_first = None  # the game thread starts the next range
        self.loss.trouble(
            "queue",
            now,
            f"audit queue full (AUDIT_QUEUE_SIZE={self.capacity}): the oldest events are given "
            "up and counted until the writer catches up",
        )
        self.loss.add(dropped, first or last or now, last or now,
                      f"queue full (AUDIT_QUEUE_SIZE={self.capacity})")

    def _recover(self):
        """Once, before anything else: earlier spill files, and losses the sink found (cut records)."""
        self._recovered = True
        now = self.clock()
        for count, first, last, cause in _sink_losses(self.sink):
            self.loss.trouble("crash", now, f"audit output {self.config.callback_path}: {cause}",
                              level="warn")
            self.loss.add(count, first, last, cause)
        for path in spill.find(self.config.log_dir):
            try:
                items, unreadable = spill.read(path)
            except OSError as error:
                _log("err", f"cannot read the spill file {path}: {error}; it is left in place")
                continue
            _log("info", f"delivering {len(items)} records of the spill file {path} first")
            self._spill_paths.append(path)
            self.from_spill += len(items)
            if unreadable:
                cause = f"{unreadable} unreadable lines in the spill file {path}"
                self.loss.trouble("spill", now, f"audit: {cause}")
                self.loss.add(unreadable, now, now, cause)
            if self.sink is not None:
                self._pending.extend(items)
                self._pending_cap = len(self._pending) + self.capacity
            else:
                self._deliver_to_callback(
                    [(when, self._plain_record(when, orjson.loads(line)), None)
                     for when, line, _lost in items]
                )
        if self.sink is None and not self._leftover:
            self._forget_spills()

    def _forget_spills(self):
        """The spill files being delivered are: remove them."""
        paths, self._spill_paths = self._spill_paths, []
        for path in paths:
            try:
                os.unlink(path)
            except OSError as error:
                _log("err", f"cannot remove the delivered spill file {path}: {error}")

    def _build(self, batch):
        """[(time, event, serialised record or None)] for a batch of captured tuples.

        Every event is built and scrubbed (scrubbing keeps state across records); the observers (the
        live watch feed) see each scrubbed event; the capture policy decides which are written.
        """
        events = []
        builder = self.builder
        build = builder.build
        records = self.policy.records
        observers = self.observers
        for item in batch:
            try:
                event = build(item)
                if observers:
                    self._observe(event)
                if not records(item):  # observed for scrubbing (and watching), not recorded
                    self.observed_only += 1
                    continue
                events.append((item[0], event, builder.last_parts))
            except Exception as error:
                # No text: it could not be proven free of secrets. The record still says it happened.
                self.build_errors += 1
                events.append((item[0], self._error_record(item, error), None))
        for observer in observers:
            observer.batch_done()
        return events

    def _observe(self, event):
        """Hand a scrubbed event to the observers; one failing never costs the record."""
        for observer in self.observers:
            try:
                observer.observe(event)
            except Exception as error:
                self.observer_errors += 1
                if self.observer_errors == 1:
                    _log("err", f"an audit observer failed ({type(error).__name__}: {error}); the trail is unaffected")

    def _error_record(self, item, error):
        if self.build_errors == 1:
            _log("err", f"an audit event could not be built ({type(error).__name__}: {error})")
        record = {
            "v": FORMAT_VERSION,
            "kind": "error",
            "time": iso_time(item[0]),
            "direction": item[2],
            "conn": item[4],
            "seq": item[5],
            "error": f"event could not be built: {type(error).__name__}: {error}"[:500],
        }
        return record if self.sink is not None else self._plain_record(item[0], record)

    def _plain_record(self, when, record):
        """A record without live objects, given the same `objects` shape as events for callbacks."""
        record["objects"] = _plain_objects(when, self.config.allow_sparse)
        return record

    # ---------------------------------------------------------------- delivery: built-in sinks

    def _deliver_to_sink(self, events):
        pending = self._pending
        for when, event, parts in events:
            pending.append((when, serialize_parts(parts) if parts else serialize(event), 0))
        now = self.clock()
        if not (self.loss.failing and now < self._retry_at and not self._stopping):
            self._write_pending(now)
        if self.loss.failing:
            self._trim_pending(now)  # only what a failing output holds counts against the cap

    def _queue_loss_record(self, now):
        for record in self.loss.take_records(self.config, now):
            self._pending.append((now, serialize(record), record["lost"]))

    def _trim_pending(self, now):
        """Give up the oldest undelivered records beyond the cap (counted, with their times)."""
        overfull = len(self._pending) - self._pending_cap
        if overfull <= 0:
            return
        self.loss.trouble(
            "retry buffer",
            now,
            f"audit output {self.config.callback_path}: retry buffer full "
            f"(AUDIT_QUEUE_SIZE={self.capacity}); the oldest records are given up and counted",
            level="warn",
        )
        for _ in range(overfull):
            self._give_up(*self._pending.popleft(), self.loss.cause or "sink unavailable")

    def _give_up(self, when, record, stated, cause):
        """One pending record will never go: an event is lost; a loss record gives its count back."""
        if stated:
            self.loss.restore(orjson.loads(record), when)
        else:
            self.loss.add(1, when, when, cause)

    def _write_pending(self, now):
        pending = self._pending
        while pending:
            records = [record for _, record, _ in pending]
            try:
                if self._sink_takes_times:
                    self.sink.write(records, [when for when, _, _ in pending])
                else:
                    self.sink.write(records)
                self.sink.flush()
            except Exception as error:
                delivered = getattr(error, "delivered", 0) if isinstance(error, SinkError) else 0
                cause = getattr(error, "cause", None) or f"{type(error).__name__}: {error}"
                self._count_delivered(delivered)
                rejected = getattr(error, "rejected", 0)
                if rejected:
                    self._reject(rejected, cause, now)
                    continue  # the sink works; only those records could never go
                self._sink_failed(cause, now)
                return
            self._count_delivered(len(records))
            self._sink_recovered(now)
        self._pending_cap = self.capacity
        if self._spill_paths:
            self._forget_spills()

    def _reject(self, count, cause, now):
        """Records the sink can never take (e.g. too large for a datagram): counted, not retried."""
        self.loss.trouble("rejected", now, f"audit output {self.config.callback_path}: {cause}")
        for _ in range(min(count, len(self._pending))):
            self._give_up(*self._pending.popleft(), cause)

    def _count_delivered(self, count):
        popleft = self._pending.popleft
        for _ in range(min(max(count, 0), len(self._pending))):
            _when, _record, stated = popleft()
            if stated:
                self.loss.stated_by(stated)
            else:
                self.delivered += 1

    def _sink_failed(self, cause, now):
        if not self.loss.failing:
            self.loss.cause = cause
        self.loss.output_failed(
            now, f"audit output {self.config.callback_path} failed: {cause}; its records are "
            f"kept (up to AUDIT_QUEUE_SIZE={self.capacity}) and retried",
        )
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    def _sink_recovered(self, now):
        if self.loss.failing:
            self._backoff = _BACKOFF_START
            self._retry_at = 0.0
            self.loss.output_works(now, self.config.callback_path)
            if self.loss.due(now):
                self._queue_loss_record(now)  # written by the caller's loop, right after

    # ---------------------------------------------------------------- delivery: custom callbacks

    def _deliver_to_callback(self, events):
        clock = self.clock
        for index, (when, event, _parts) in enumerate(events):
            if self._past_deadline():
                self._leftover.extend(events[index:])  # the stop spills them
                return
            self._call(event, when)
            if self.loss.lost or self.dropped != self._dropped_seen:
                self._check_losses()  # a slow callback still states losses within a second

    def _call(self, event, when):
        """Hand one record to the callback; count it delivered, or lost (a loss record keeps its count)."""
        try:
            self.callback(event)
        except Exception as error:
            cause = f"{self.config.callback_path} raised {type(error).__name__}: {error}"[:300]
            now = self.clock()
            self.loss.trouble("callback", now, f"audit callback {cause}; each failing call loses "
                              "its event (counted, stated in loss records)")
            if event.get("kind") == "loss":
                self.loss.restore(event, now)
            else:
                self.loss.add(1, when, when, cause)
            return
        if event.get("kind") == "loss":
            self.loss.stated_by(event.get("lost", 0))
        else:
            self.delivered += 1

    def _call_loss_record(self, now):
        for record in self.loss.take_records(self.config, now):
            self._call(self._plain_record(now, record), now)

    # ---------------------------------------------------------------- control

    def flush(self, timeout=10.0):
        """Wait until everything submitted so far was handed to the sink (tests, `audit` command)."""
        target = self.accepted
        if self._thread is None or not self._thread.is_alive():
            self._drain()  # no writer thread (stopped, or driven by hand in tests)
        deadline = time.monotonic() + timeout
        while self.processed + self.dropped < target and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.002)
        return self.processed + self.dropped >= target

    def stop(self, timeout=None, clean=True):
        """Deliver for at most `timeout` s (`AUDIT_STOP_TIMEOUT`), spill the rest, close the sink.

        Called at reactor shutdown (stop, reload, reboot). Returns within `timeout` plus, when a
        write or callback call is in progress at the deadline, up to `_STOP_GRACE` s for it to end.
        `clean=False` (the writer process whose server died): the sink is closed as after a crash
        (`abandon`: no final seal), so `verify` reports what the dead server still held.
        """
        if self._stopping:
            return
        timeout = self.stop_timeout if timeout is None else timeout
        self._deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        writer = self._thread
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout)
        locked = self._lock.acquire(timeout=_STOP_GRACE)
        try:
            if writer is None or not writer.is_alive() or writer is threading.current_thread():
                self._drain()  # no writer thread: deliver here, within the same deadline
            if not locked:
                _log("err", f"audit output {self.config.callback_path} has not returned for "
                     f"{_STOP_GRACE:.0f} s after AUDIT_STOP_TIMEOUT; the records in its hands "
                     f"({len(self._pending) + len(self._leftover)} or fewer) may be lost")
            self._spill_rest()
        finally:
            if locked:
                self._lock.release()
        if self.sink is not None:
            close = self.sink.close if clean else getattr(self.sink, "abandon", self.sink.close)
            try:
                close()
            except Exception as error:
                _log("err", f"closing audit output: {error}")
        self.loss.end_episode(self.clock(), force=True)
        self.submit = self._submit_after_stop

    def _spill_rest(self):
        """Write what is still held to a spill file for the next start (or state it lost)."""
        self._account_dropped(self.clock())
        items = []  # (time, bytes, lost stated by it), oldest first
        leftover, self._leftover = self._leftover, []
        for when, event, parts in leftover:
            items.append((when, self._spill_bytes(event, parts), 0))
        items.extend(self._pending)
        self._pending.clear()
        while self.queue:
            batch = self._take_batch()
            self.processed += len(batch)
            for when, event, parts in self._build(batch):
                items.append((when, self._spill_bytes(event, parts), 0))
        for record in self.loss.take_records(self.config, self.clock()):
            items.append((self.clock(), serialize(record), record["lost"]))
        if not items:
            self._forget_spills()
            return
        try:
            path = spill.write(self.config.log_dir, [line for _, line, _ in items])
        except OSError as error:
            self._spill_failed(items, error)
            return
        self.spilled += len(items)
        self._forget_spills()  # their records are in the new file
        _log("warn", f"{len(items)} audit records not delivered within AUDIT_STOP_TIMEOUT="
             f"{self.stop_timeout:g} s were written to {path}; the next start delivers them first")

    def _spill_bytes(self, event, parts):
        if parts:
            return serialize_parts(parts)
        return serialize({key: value for key, value in event.items() if key != "objects"})

    def _spill_failed(self, items, error):
        """No spill file: the records are lost; state it in one last loss record, and in the log."""
        cause = f"not delivered at stop, spill file not written: {error.strerror or error}"
        now = self.clock()
        self.loss.trouble("spill", now, f"audit: {cause}")
        for when, line, stated in items:
            self._give_up(when, line, stated, cause)
        records = self.loss.take_records(self.config, now)
        if not records:
            return
        _log("err", f"{sum(r['lost'] for r in records)} audit events were lost at stop between "
             f"{records[0]['first_time']} and {records[-1]['last_time']} ({cause})")
        if self.sink is None:
            for record in records:
                self._call(self._plain_record(now, record), now)
            return
        try:  # one attempt: the output may still take a few short records
            self.sink.write([serialize(record) for record in records])
            self.sink.flush()
        except Exception:
            for record in records:
                self.loss.restore(record, now)
        else:
            for record in records:
                self.loss.stated_by(record["lost"])

    def stats(self):
        """Counters for admins; `accepted == delivered + lost + queued + retrying` (+ loss records).

        `lost` counts events given up; `stated_lost` those already stated by delivered loss
        records; `unstated_lost` those waiting for the next one.
        """
        return {
            "output": self.config.callback_path,
            "writer": "thread",
            "accepted": self.accepted,
            "queued": len(self.queue),
            "retrying": len(self._pending),
            "delivered": self.delivered,
            "lost": self.loss.total_lost + (self.dropped - self._dropped_seen),
            "dropped_oldest": self.dropped,
            "stated_lost": self.loss.stated,
            "unstated_lost": self.loss.lost,
            "loss_records": self.loss.records,
            "failing": self.loss.failing,
            "last_cause": self.loss.cause,
            "build_errors": self.build_errors,
            "observed_only": self.observed_only,
            "spilled": self.spilled,
            "from_spill": self.from_spill,
            "output_limits": getattr(self.sink, "limits", _CALLBACK_LIMITS),
            "output_stats": _sink_stats(self.sink),
        }


def _sink_losses(sink):
    """Losses a sink found on its own (e.g. a record cut by a crash): `(count, first, last, cause)`."""
    take = getattr(sink, "take_losses", None)
    if take is None:
        return []
    try:
        return list(take())
    except Exception as error:
        _log("err", f"audit output could not check for earlier losses: {error}")
        return []


def _sink_stats(sink):
    stats = getattr(sink, "stats", None)
    try:
        return stats() if stats is not None else None
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"}
