"""
Delivery: a bounded queue between the game thread and one writer thread.

The game thread only appends a captured tuple to a deque (`Pipeline.submit`). The writer thread
wakes every `AUDIT_FLUSH_INTERVAL` seconds (sooner when a batch is waiting), builds and scrubs the
events in order, serialises them once with orjson and hands the batch to the sink. So the game never
waits for a disk, a socket or a slow callback, and a hard crash loses at most one flush interval.

Failure policy (no silent drops, ever):
- A sink that fails (disk full, directory read-only, syslog down) keeps its undelivered records in
  a retry buffer, retried with back-off (0.25 s doubling to 5 s). The first failure is logged once
  with its cause; nothing more is logged while it lasts.
- When the queue or the retry buffer is full (`AUDIT_QUEUE_SIZE`), the oldest undelivered records
  are given up and counted, with the time range they cover.
- When delivery works again, a `{"kind": "loss", "lost": N, "first_time": ..., "last_time": ...,
  "cause": ...}` record is written in the trail itself, and the recovery is logged with the count.
- `stats()` gives the counters at any time (`evennia shell`, or the in-game `audit` command).
Custom callbacks run on the writer thread; an exception from one is counted like a sink failure.
"""

import collections
import json
import threading
import time

import orjson

from . import FORMAT_VERSION
from .event import Builder, iso_time
from .scrub import Scrubber

_BACKOFF_START = 0.25
_BACKOFF_MAX = 5.0
_BATCH = 4096  # events built per sink write
_WAKE_AT = 2048  # queued events that wake the writer before its interval is up
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def _log(level, message):
    """Evennia's log, imported lazily (this module also runs outside a server, e.g. in bench/)."""
    try:
        from evennia.utils import logger

        {"err": logger.log_err, "warn": logger.log_warn, "info": logger.log_info}[level](
            f"auditing: {message}"
        )
    except Exception:
        import sys

        print(f"auditing: {message}", file=sys.stderr)


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


class LossTracker:
    """Counts events given up during one episode of trouble, for the log line and the loss record."""

    def __init__(self):
        self.lost = 0
        self.first_time = None
        self.last_time = None
        self.cause = None
        self.failing = False
        self.total_lost = 0

    def add(self, count, first_time, last_time, cause):
        if count <= 0:
            return
        self.lost += count
        self.total_lost += count
        self.first_time = first_time if self.first_time is None else min(self.first_time, first_time)
        self.last_time = last_time if self.last_time is None else max(self.last_time, last_time)
        self.cause = self.cause or cause

    def take_record(self, config, now):
        """The loss record for what was counted since the last one (None if nothing was lost)."""
        if not self.lost:
            return None
        record = {
            "v": FORMAT_VERSION,
            "kind": "loss",
            "time": iso_time(now),
            "hostname": config.hostname,
            "application": config.application,
            "pid": config.pid,
            "lost": self.lost,
            "first_time": iso_time(self.first_time),
            "last_time": iso_time(self.last_time),
            "cause": self.cause,
        }
        _log(
            "warn",
            f"{self.lost} audit events were lost between {record['first_time']} and "
            f"{record['last_time']} ({self.cause}); a loss record is in the trail",
        )
        self.lost, self.first_time, self.last_time, self.cause = 0, None, None, None
        return record


class RecentRecords:
    """The last records of each account, character and connection, kept in memory by the writer.

    Bounded: `per_key` records for each of at most `max_keys` keys (the oldest keys go first).
    The records are the scrubbed ones the sink gets, so showing them reveals no secret.
    """

    def __init__(self, per_key=200, max_keys=2000):
        self.per_key = per_key
        self.max_keys = max_keys
        self._by_key = {}

    def add(self, event):
        for field in ("account", "character", "conn"):
            key = event.get(field)
            if key:
                self._append((field, key), event)

    def _append(self, key, event):
        records = self._by_key.get(key)
        if records is None:
            if len(self._by_key) >= self.max_keys:
                self._by_key.pop(next(iter(self._by_key)))  # the oldest key seen
            records = self._by_key[key] = collections.deque(maxlen=self.per_key)
        records.append(event)

    def get(self, field, key, limit):
        """The last `limit` records whose `field` ("account", "character", "conn") is `key`."""
        records = list(self._by_key.get((field, key), ()))
        return records[-limit:] if limit else records


class Pipeline:
    """Queue, writer thread and failure policy for one configuration.

    Args:
        config (conf.AuditConfig): the validated settings.
        clock (callable): epoch seconds (injectable for tests).
    """

    def __init__(self, config, clock=time.time):
        self.config = config
        self.clock = clock
        self.builder = Builder(
            config,
            Scrubber(config.masks, config.prompt_masks),
            with_objects=getattr(config.callback, "make_sink", None) is None,
        )
        self.queue = collections.deque()
        self.capacity = config.queue_size
        self.interval = config.flush_interval
        self.accepted = 0  # game thread only
        self.overflow = 0  # game thread only: events refused because the queue was full
        self.overflow_first = None
        self.overflow_last = None
        self._overflow_seen = 0
        self.processed = 0  # writer thread only
        self.delivered = 0
        self.build_errors = 0
        self.loss = LossTracker()
        self.recent = RecentRecords()  # for the in-game `audit` command
        self._pending = collections.deque()  # (time, record) not yet accepted by the sink
        self._retry_at = 0.0
        self._backoff = _BACKOFF_START
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one batch at a time (writer thread, or flush after stop)
        self._stopping = False
        self._thread = None
        self._choose_delivery(config.callback)
        self.submit = self._submit

    # ---------------------------------------------------------------- set-up

    def _choose_delivery(self, callback):
        """Decided once: built-in sinks get serialised batches, custom callbacks one dict each."""
        make_sink = getattr(callback, "make_sink", None)
        if make_sink is not None:
            self.sink = make_sink(self.config)
            self._deliver = self._deliver_to_sink
            # Sinks that bucket by event time (the file sink's UTC days) take the times too.
            import inspect

            self._sink_takes_times = "times" in inspect.signature(self.sink.write).parameters
        else:
            self.sink = None
            self.callback = callback
            self._deliver = self._deliver_to_callback

    def start(self):
        """Start the writer thread (the runtime arranges for `stop` at shutdown)."""
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        return self

    # ---------------------------------------------------------------- game thread

    def _submit(self, item):
        queue = self.queue
        if len(queue) < self.capacity:
            queue.append(item)
            self.accepted += 1
            if len(queue) == _WAKE_AT:
                self._wake.set()
        else:
            self.overflow += 1
            self.overflow_last = item[0]
            if self.overflow_first is None:
                self.overflow_first = item[0]

    def _submit_after_stop(self, item):
        """After shutdown began there is no writer: deliver on the caller's thread."""
        self.queue.append(item)
        self.accepted += 1
        self._drain()
        self._give_up_pending()  # no retry will come: what the sink refused now is lost

    # ---------------------------------------------------------------- writer thread

    def _run(self):
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self._drain()
            except Exception as error:  # never let the writer die
                _log("err", f"audit writer error: {type(error).__name__}: {error}")
            if self._stopping and not self.queue:
                return

    def _drain(self):
        with self._lock:
            if self._account_overflow():
                self._deliver([])  # the loss record goes out even if no event follows
            while self.queue:
                batch = []
                popleft = self.queue.popleft
                try:
                    for _ in range(_BATCH):
                        batch.append(popleft())
                except IndexError:
                    pass
                self._deliver(self._build(batch))
                self.processed += len(batch)
            if self._pending:
                self._deliver([])
            if self.sink is not None and hasattr(self.sink, "on_idle"):
                self.sink.on_idle()  # auditing.chain: seals come due on the writer's clock too

    def _account_overflow(self):
        """Count events the game thread could not queue; True if there were any."""
        refused = self.overflow - self._overflow_seen
        if refused <= 0:
            return False
        self._overflow_seen += refused
        if not self.loss.failing and not self.loss.lost:
            _log(
                "err",
                f"audit queue full (AUDIT_QUEUE_SIZE={self.capacity}): events are being "
                "counted as lost until the writer catches up",
            )
        self.loss.add(
            refused,
            self.overflow_first or self.clock(),
            self.overflow_last or self.clock(),
            f"queue full (AUDIT_QUEUE_SIZE={self.capacity})",
        )
        self.overflow_first = None
        return True

    def _build(self, batch):
        """[(time, event, serialised record or None)] for a batch of captured tuples."""
        events = []
        builder = self.builder
        build = builder.build
        remember = self.recent.add
        for item in batch:
            try:
                event = build(item)
                remember(event)
                events.append((item[0], event, builder.last_parts))
            except Exception as error:
                # No text: it could not be proven free of secrets. The record still says it happened.
                self.build_errors += 1
                events.append((item[0], self._error_record(item, error), None))
        return events

    def _error_record(self, item, error):
        if self.build_errors == 1:
            _log("err", f"an audit event could not be built ({type(error).__name__}: {error})")
        return {
            "v": FORMAT_VERSION,
            "kind": "error",
            "time": iso_time(item[0]),
            "direction": item[2],
            "conn": item[4],
            "seq": item[5],
            "error": f"event could not be built: {type(error).__name__}: {error}"[:500],
        }

    # ---------------------------------------------------------------- delivery

    def _deliver_to_sink(self, events):
        pending = self._pending
        for when, event, parts in events:
            pending.append((when, serialize_parts(parts) if parts else serialize(event), 0))
        now = self.clock()
        self._trim_pending()  # before the loss record: it must not push out a real record
        if not self.loss.failing:
            self._queue_loss_record(now)
        if now < self._retry_at and not self._stopping:
            return
        self._write_pending(now)

    def _queue_loss_record(self, now):
        record = self.loss.take_record(self.config, now)
        if record is not None:
            self._pending.append((now, serialize(record), record["lost"]))

    def _trim_pending(self):
        """Give up the oldest undelivered records beyond the cap (counted, with their times)."""
        overfull = len(self._pending) - self.capacity
        if overfull <= 0:
            return
        first = self._pending[0][0]
        given_up = 0
        for _ in range(overfull):
            last, _record, lost_in_loss_record = self._pending.popleft()
            # A loss record given up takes its count back into the tracker, never out of the books.
            given_up += lost_in_loss_record or 1
        self.loss.add(given_up, first, last, self.loss.cause or "sink unavailable")

    def _write_pending(self, now):
        from .sinkbase import SinkError

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
                    self._reject(rejected, cause)
                    continue  # the sink works; only those records could never go
                self._sink_failed(cause, now)
                return
            self._count_delivered(len(records))
            self._sink_recovered(now)

    def _reject(self, count, cause):
        """Records the sink can never take (e.g. too large for a datagram): counted, not retried."""
        for _ in range(min(count, len(self._pending))):
            when, _record, lost_in_loss_record = self._pending.popleft()
            self.loss.add(lost_in_loss_record or 1, when, when, cause)

    def _count_delivered(self, count):
        for _ in range(min(max(count, 0), len(self._pending))):
            self._pending.popleft()
            self.delivered += 1

    def _deliver_to_callback(self, events):
        callback = self.callback
        now = self.clock()
        if not self.loss.failing:
            record = self.loss.take_record(self.config, now)
            if record is not None:
                events = [(now, record, None)] + list(events)
        for when, event, _parts in events:
            try:
                callback(event)
            except Exception as error:
                self.loss.add(1, when, when, f"{type(error).__name__}: {error}"[:300])
                self._sink_failed(self.loss.cause, now, retry=False)
                continue
            self.delivered += 1
            if self.loss.failing:
                self._sink_recovered(now)

    def _sink_failed(self, cause, now, retry=True):
        if not self.loss.failing:
            self.loss.failing = True
            self.loss.cause = self.loss.cause or cause
            _log("err", f"audit output {self.config.callback_path} failed: {cause}; retrying")
        if retry:
            self._retry_at = now + self._backoff
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    def _sink_recovered(self, now):
        if self.loss.failing:
            self.loss.failing = False
            self._backoff = _BACKOFF_START
            self._retry_at = 0.0
            _log("info", f"audit output {self.config.callback_path} works again")
            if self.sink is not None:
                self._queue_loss_record(now)
                self._write_pending(now)
            else:
                record = self.loss.take_record(self.config, now)
                if record is not None:
                    self._deliver_to_callback([(now, record, None)])
            self.loss.cause = None  # the next episode names its own cause

    # ---------------------------------------------------------------- control

    def flush(self, timeout=10.0):
        """Wait until everything submitted so far was handed to the sink (tests, `audit` command)."""
        target = self.accepted
        if self._thread is None or not self._thread.is_alive():
            self._drain()  # no writer thread (stopped, or driven by hand in tests)
        deadline = time.monotonic() + timeout
        while self.processed < target and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.002)
        return self.processed >= target

    def stop(self, timeout=10.0):
        """Flush every queued event and close the sink (reactor shutdown: stop, reload, reboot)."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._drain()
        self._give_up_pending()
        if self.sink is not None:
            try:
                self.sink.close()
            except Exception as error:
                _log("err", f"closing audit output: {error}")
        self.submit = self._submit_after_stop

    def _give_up_pending(self):
        """At shutdown: count what the sink still refuses as lost, and say so in the log."""
        if not self._pending:
            return
        first, last = self._pending[0][0], self._pending[-1][0]
        count = sum(lost_in_loss_record or 1 for _, _, lost_in_loss_record in self._pending)
        self.loss.add(count, first, last, self.loss.cause or "sink unavailable")
        _log("err", f"{count} audit events could not be delivered at shutdown ({self.loss.cause})")
        self._pending.clear()

    def stats(self):
        """Counters for admins: what was accepted, delivered, lost, and whether the sink is failing."""
        return {
            "output": self.config.callback_path,
            "accepted": self.accepted,
            "queued": len(self.queue),
            "retrying": len(self._pending),
            "delivered": self.delivered,
            "lost": self.loss.total_lost + (self.overflow - self._overflow_seen),
            "failing": self.loss.failing,
            "last_cause": self.loss.cause,
            "build_errors": self.build_errors,
        }
