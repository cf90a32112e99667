"""
Delivery under real faults: every loss counted, stated in the trail and logged once per episode.

Each test drives a real `Pipeline` (its writer thread, or by hand with a fake clock) into a real
output: the file sink on a 2 MB tmpfs really filled (root: `mount`), a real rsyslogd killed and
restarted (UDP and TCP), a real slow or failing callback. They check the promise of issue 10:

- every line of every file parses;
- events delivered + events stated lost (loss records in the trail) == events produced, exactly;
- the log says it a bounded number of times per episode;
- under sustained overload a loss record comes within seconds, and the oldest events go first;
- `stop()` returns within AUDIT_STOP_TIMEOUT and what is left reaches the next start (spill file).

Tests that mount a file system or start rsyslogd are opt-in (`auditing.testing.requires_servers`).
"""

import datetime
import json
import os
import queue
import random
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
import types
import unittest
from unittest import mock

from django.test import override_settings
from evennia.utils.test_resources import EvenniaTest

from auditing.testing.base import TempTrailMixin

from . import conf, spill
from .event import RCV, capture
from .pipeline import Pipeline
from .sinkbase import SinkError
from .testing import requires_servers
from .tests import FlakyOutput, FlakySink
from .trail import FILE_RE

try:
    from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
except ImportError:  # a user's game may not have it
    given = None


class FakeClock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


class Recorder:
    """A custom AUDIT_CALLBACK that keeps what it receives and when, optionally slow or failing."""

    def __init__(self, delay=0.0, fail_rate=0.0, seed=1):
        self.delay = delay
        self.fail_rate = fail_rate
        self.random = random.Random(seed)
        self.events = []
        self.arrivals = []  # time.monotonic() of each accepted record
        self.calls = 0

    def __call__(self, event):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail_rate and self.random.random() < self.fail_rate:
            raise RuntimeError("store unavailable")
        self.events.append(event)
        self.arrivals.append(time.monotonic())


class LossOnlySink(FlakySink):
    """Refuses every batch that holds anything but loss records (a receiver that takes short ones)."""

    def write(self, records, times=None):
        if any(json.loads(record)["kind"] != "loss" for record in records):
            raise SinkError("receiver refuses", 0)
        super().write(records, times)


def sink_output(sink):
    """An AUDIT_CALLBACK whose pipeline writes to `sink`."""
    output = FlakyOutput()
    output.sink = sink
    return output


def reconcile(records):
    """(io texts delivered, events stated lost) from the records of a trail or a callback."""
    texts = [r["text"] for r in records if r.get("kind") == "io"]
    stated = sum(r["lost"] for r in records if r.get("kind") == "loss")
    return texts, stated


def read_trail(directory):
    """Every record of every audit file in `directory`; fails the test on a line that does not parse."""
    records = []
    for name in sorted(os.listdir(directory)):
        if not FILE_RE.match(name):
            continue
        with open(os.path.join(directory, name), "rb") as handle:
            data = handle.read()
        if data and not data.endswith(b"\n"):
            raise AssertionError(f"{name} ends inside a record: {data[-80:]!r}")
        for number, line in enumerate(data.split(b"\n")[:-1], 1):
            try:
                records.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"{name}:{number} does not parse: {line[:120]!r}") from None
    return records


def log_lines(log, level=None):
    return [c.args[1] for c in log.call_args_list if level is None or c.args[0] == level]


class FaultMixin:
    """A real Pipeline for given settings, and a producer of numbered `say N` events."""

    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.produced = 0

    writer = None  # AUDIT_WRITER for the pipelines built here (None: the default)

    def pipeline(self, callback, clock=None, start=False, **audit):
        audit.setdefault("AUDIT_LOG_DIR", self.directory)
        if self.writer is not None:
            audit.setdefault("AUDIT_WRITER", self.writer)
        with override_settings(AUDIT_CALLBACK=callback, **audit):
            config = conf.load()
        pipeline = Pipeline(config, clock=clock or time.time)
        self.addCleanup(pipeline.stop, 0)
        return pipeline.start() if start else pipeline

    def produce(self, pipeline, count, clock=None):
        for _ in range(count):
            if clock is not None:
                clock.now += 0.001
            pipeline.submit(capture(self.session, RCV, {"text": ([f"say {self.produced}"], {})},
                                    now=clock or time.time))
            self.produced += 1

    def assertExact(self, records, label=""):
        texts, stated = reconcile(records)
        self.assertEqual(len(texts), len(set(texts)), f"{label}: duplicated records")
        self.assertEqual(len(texts) + stated, self.produced,
                         f"{label}: {len(texts)} delivered + {stated} stated lost != {self.produced}")
        return texts, stated


class FaultCase(FaultMixin, TempTrailMixin, EvenniaTest):
    """With a real Evennia session (`self.session`) as the events' connection.

    No audit service runs here: these tests build their own pipelines, and a running service would
    restart on their settings overrides and write to their directories too.
    """

    start_service = False

    def setUp(self):
        super().setUp()
        self.session.audit_conn = "fault-test-conn"


# ---------------------------------------------------------------------------- queue full


class TestQueueOverload(FaultCase):
    def test_sustained_overload_states_loss_within_seconds_and_gives_up_the_oldest(self):
        recorder = Recorder(delay=0.002)  # at most 500 events/s
        pipeline = self.pipeline(recorder, start=True, AUDIT_QUEUE_SIZE=300, AUDIT_FLUSH_INTERVAL=0.05)
        with mock.patch("auditing.pipeline._log") as log:
            started = time.monotonic()
            while time.monotonic() - started < 4.0:  # ~2,000 events/s: four times what it can take
                self.produce(pipeline, 20)
                time.sleep(0.01)
            overload_end = time.monotonic()
            self.assertTrue(pipeline.flush(30))
            deadline = time.monotonic() + 10
            while pipeline.stats().get("unstated_lost", 0) and time.monotonic() < deadline:
                time.sleep(0.1)
        losses = [(at, e) for at, e in zip(recorder.arrivals, recorder.events) if e["kind"] == "loss"]
        self.assertTrue(losses, "no loss record")
        first_at = losses[0][0]
        self.assertLess(first_at, overload_end, "the loss record came only after the overload")
        self.assertLess(first_at - started, 3.0, "no loss record within 3 s of the overload")
        texts, stated = self.assertExact(recorder.events, "overload")
        self.assertGreater(stated, 1000)
        # The newest are kept: the last event produced reached the callback.
        self.assertIn(f"say {self.produced - 1}", texts)
        # ... and loss records come at most about once a second, not per event
        self.assertLessEqual(len(losses), 4.0 / 1.0 + 3)
        self.assertEqual(pipeline.stats()["lost"], stated)
        self.assertLessEqual(len(log_lines(log)), 3, log_lines(log))

    def test_full_queue_gives_up_the_oldest_with_their_time_range(self):
        recorder = Recorder()
        clock = FakeClock(1_790_000_000.0)
        pipeline = self.pipeline(recorder, clock=clock, AUDIT_QUEUE_SIZE=100)
        with mock.patch("auditing.pipeline._log"):
            self.produce(pipeline, 250, clock)
            pipeline.flush()
        texts, stated = self.assertExact(recorder.events)
        self.assertEqual(texts, [f"say {n}" for n in range(150, 250)])
        (loss,) = [e for e in recorder.events if e["kind"] == "loss"]
        self.assertEqual(loss["lost"], 150)
        first = [e for e in recorder.events if e["kind"] == "io"][0]
        self.assertLess(loss["last_time"], first["time"])  # they cover what came before the kept ones


    def test_loss_record_given_up_keeps_its_own_count_time_range_and_cause(self):
        sink = FlakySink()
        clock = FakeClock(1_790_000_000.0)
        pipeline = self.pipeline(sink_output(sink), clock=clock, AUDIT_QUEUE_SIZE=10)
        with mock.patch("auditing.pipeline._log"):
            self.produce(pipeline, 30, clock)  # 20 given up by the full queue
            sink.broken = True
            pipeline.flush()  # the loss record waits with 10 events: 11 > 10, it is given up
            self.produce(pipeline, 10, clock)
            pipeline.flush()  # 10 more given up by the retry buffer, for the outage
            sink.broken = False
            clock.now += 10
            pipeline.flush()
        texts, stated = self.assertExact(sink.accepted)
        self.assertEqual(texts, [f"say {n}" for n in range(30, 40)])
        losses = [(r["lost"], r["cause"]) for r in sink.accepted if r["kind"] == "loss"]
        self.assertEqual(losses, [(20, "queue full (AUDIT_QUEUE_SIZE=10)"), (10, "disk on fire")])
        by_text = {r["text"]: r["time"] for r in sink.accepted if r["kind"] == "io"}
        queue_full = [r for r in sink.accepted if r["kind"] == "loss"][0]
        self.assertLess(queue_full["last_time"], by_text["say 30"])


# ---------------------------------------------------------------------------- failing callback


class TestFailingCallback(FaultCase):
    def test_callback_failing_30_percent_exact_accounting_and_bounded_log(self):
        recorder = Recorder(fail_rate=0.3, seed=7)
        pipeline = self.pipeline(recorder, start=True, AUDIT_FLUSH_INTERVAL=0.05)
        with mock.patch("auditing.pipeline._log") as log:
            for _ in range(20):
                self.produce(pipeline, 250)
                time.sleep(0.05)
            self.assertTrue(pipeline.flush(30))
            deadline = time.monotonic() + 20  # loss records fail 30 % too: they keep their count
            while pipeline.stats().get("unstated_lost", 0) and time.monotonic() < deadline:
                time.sleep(0.1)
        texts, stated = self.assertExact(recorder.events, "30 % failing")
        self.assertGreater(stated, 1000)
        stats = pipeline.stats()
        self.assertEqual((stats["lost"], stats["stated_lost"], stats["delivered"]),
                         (stated, stated, len(texts)))
        lines = log_lines(log)
        self.assertLessEqual(len(lines), 3, lines)  # 5,000 events, ~1,500 failures: a few lines
        self.assertIn("store unavailable", lines[0])

    def test_records_given_to_callbacks_all_have_objects_dicts(self):
        recorder = Recorder()
        clock = FakeClock(1_790_000_000.0)
        pipeline = self.pipeline(recorder, clock=clock, AUDIT_QUEUE_SIZE=10)
        with mock.patch("auditing.pipeline._log"):
            self.produce(pipeline, 30, clock)
            pipeline.flush()
            with mock.patch.object(pipeline.builder, "build", side_effect=ValueError("boom")):
                self.produce(pipeline, 1, clock)
                pipeline.flush()
        kinds = {e["kind"] for e in recorder.events}
        self.assertEqual(kinds, {"io", "loss", "error"})
        for event in recorder.events:
            self.assertIsInstance(event.get("objects"), dict, event["kind"])
            self.assertIsInstance(event["objects"]["time"], datetime.datetime, event["kind"])
        # the README's callback example ("Writing your own callback") works on every record
        store = queue.Queue()

        def to_my_store(event):
            objects = event.pop("objects", None)  # live Evennia objects: read them, don't keep them
            event["account_is_staff"] = bool(objects.get("account") and objects["account"].is_superuser)
            store.put(json.dumps(event))

        for event in recorder.events:
            to_my_store(dict(event))
        self.assertEqual(store.qsize(), len(recorder.events))


@unittest.skipIf(given is None, "hypothesis is not installed (pip install hypothesis)")
class TestLossAccountingProperty(FaultMixin, unittest.TestCase):
    """Whatever fails when, every event is delivered or stated lost exactly once.

    A plain TestCase (Hypothesis runs each example outside Django's per-test transaction): the
    pipeline never touches the database, and the connection is a stand-in with the attributes
    `capture` and `Builder` read.
    """

    def setUp(self):
        super().setUp()
        self.session = types.SimpleNamespace(audit_conn=None, audit_seq=0, logged_in=False,
                                             protocol_key="telnet", address="127.0.0.1", sessid=1)

    if given is not None:

        @hypothesis_settings(max_examples=60, deadline=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(
            queue_size=st.integers(1, 40),
            rounds=st.lists(st.tuples(st.integers(0, 60), st.lists(st.booleans(), max_size=80)),
                            min_size=1, max_size=8),
        )
        def test_any_failure_pattern_is_accounted_exactly(self, queue_size, rounds):
            failures = []

            def callback(event):
                if failures and failures.pop(0):
                    raise OSError("flaky")
                delivered.append(event)

            delivered = []
            clock = FakeClock(1_790_000_000.0)
            self.produced = 0
            pipeline = self.pipeline(callback, clock=clock, AUDIT_QUEUE_SIZE=queue_size)
            with mock.patch("auditing.pipeline._log"):
                for count, pattern in rounds:
                    failures[:] = pattern
                    self.produce(pipeline, count, clock)
                    clock.now += 0.6
                    pipeline.flush()
                failures.clear()
                clock.now += 2
                pipeline.flush()
            self.assertEqual(pipeline.stats().get("unstated_lost", 0), 0)
            self.assertExact(delivered)


# ---------------------------------------------------------------------------- bounded stop


class TestBoundedStop(FaultCase):
    def test_slow_callback_100k_queued_stop_is_bounded_and_next_start_delivers_the_rest(self):
        slow = Recorder(delay=0.05)
        pipeline = self.pipeline(slow, start=True, AUDIT_STOP_TIMEOUT=2)
        self.produce(pipeline, 100_000)
        stopper = threading.Thread(target=pipeline.stop, daemon=True)
        began = time.monotonic()
        with mock.patch("auditing.pipeline._log") as log:
            stopper.start()
            stopper.join(30)
        took = time.monotonic() - began
        self.assertFalse(stopper.is_alive(), "stop still running after 30 s")
        self.assertLess(took, 2 + 6 + 5)  # timeout + the grace for a call in progress + building
        (path,) = spill.find(self.directory)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertTrue(any(path in line for line in log_lines(log)), log_lines(log))
        # The next start delivers the spill file first, then the new events; nothing is lost.
        fast = Recorder()
        after = self.pipeline(fast, start=True)
        self.produce(after, 10)
        self.assertTrue(after.flush(60))
        deadline = time.monotonic() + 60
        while len(fast.events) < self.produced - len(slow.events) and time.monotonic() < deadline:
            time.sleep(0.05)
        texts, stated = self.assertExact(slow.events + fast.events, "stop + next start")
        self.assertEqual(stated, 0)
        self.assertEqual(texts, [f"say {n}" for n in range(self.produced)])  # in order
        self.assertTrue(all(isinstance(e["objects"], dict) for e in fast.events))
        self.assertEqual(spill.find(self.directory), [])  # removed once delivered

    def test_sink_down_at_stop_spills_and_next_start_delivers_first(self):
        sink = FlakySink()
        pipeline = self.pipeline(sink_output(sink), start=True, AUDIT_STOP_TIMEOUT=0.5)
        with mock.patch("auditing.pipeline._log"):
            self.produce(pipeline, 50)
            self.assertTrue(pipeline.flush())
            sink.broken = True
            self.produce(pipeline, 50)
            pipeline.stop()
        self.assertEqual(len(spill.find(self.directory)), 1)
        later = FlakySink()
        after = self.pipeline(sink_output(later), start=True)
        self.produce(after, 5)
        self.assertTrue(after.flush())
        texts, _stated = self.assertExact(sink.accepted + later.accepted)
        self.assertEqual(texts, [f"say {n}" for n in range(105)])
        self.assertEqual(spill.find(self.directory), [])

    def test_spill_impossible_is_stated_lost(self):
        sink = LossOnlySink()
        blocker = os.path.join(self.directory, "not-a-dir")
        with open(blocker, "w"):
            pass
        pipeline = self.pipeline(sink_output(sink), start=True, AUDIT_STOP_TIMEOUT=0.2,
                                 AUDIT_LOG_DIR=blocker)
        with mock.patch("auditing.pipeline._log") as log:
            self.produce(pipeline, 20)
            self.assertTrue(pipeline.flush())
            pipeline.stop()
        self.assertEqual(reconcile(sink.accepted), ([], 20))
        self.assertEqual((pipeline.stats()["lost"], pipeline.stats()["stated_lost"]), (20, 20))
        self.assertTrue(any("20 audit events were lost at stop" in line
                            for line in log_lines(log, "err")), log_lines(log))


# ---------------------------------------------------------------------------- file sink


class TestFileRepairAndRefusals(FaultCase):
    """The file sink through `Pipeline("auditing.outputs.to_file")`: the default writer (a child process)."""

    day = "2026-09-21"
    expected_writer = "process"
    now = 1_790_000_000.0  # in that day

    def trail_path(self):
        return os.path.join(self.directory, f"audit_{self.day}.log")

    def write_with_pipeline(self, count):
        clock = FakeClock(self.now)
        pipeline = self.pipeline("auditing.outputs.to_file", clock=clock)
        self.assertEqual(pipeline.stats()["writer"], self.expected_writer)
        self.produce(pipeline, count, clock)
        self.assertTrue(pipeline.flush())
        return pipeline

    def test_record_cut_by_a_crash_is_removed_at_start_and_counted(self):
        whole = b'{"v":1,"kind":"io","text":"before the crash"}\n'
        with open(self.trail_path(), "wb") as handle:
            handle.write(whole + b'{"v":1,"kind":"io","text":"cut by kil')
        with mock.patch("auditing.pipeline._log"):
            pipeline = self.write_with_pipeline(3)
        records = read_trail(self.directory)
        self.assertEqual(records[0]["text"], "before the crash")
        (loss,) = [r for r in records if r["kind"] == "loss"]
        self.assertEqual(loss["lost"], 1)
        self.assertIn("cut off by a crash", loss["cause"])
        self.assertEqual([r["text"] for r in records if r["kind"] == "io"][1:],
                         ["say 0", "say 1", "say 2"])
        self.assertEqual(pipeline.stats()["lost"], 1)

    def test_contrib_file_is_moved_aside_not_appended_to(self):
        contrib = (b'2026-09-21 07:40:12+0000 [-] {"account": "bob", "text": "look"}\n'
                   b'26-09-21 07:40:13 [-] {"account": "bob", "text": "say hi"}\n'
                   b'a line of neither format\n')
        with open(self.trail_path(), "wb") as handle:
            handle.write(contrib)
        with mock.patch("auditing.hooks.log") as report:
            self.write_with_pipeline(2)
        # Every line of every file parses: the contrib's records became JSON Lines, marked legacy.
        records = read_trail(self.directory)
        legacy = [r for r in records if r.get("legacy")]
        self.assertEqual([(r.get("text"), r.get("time")) for r in legacy[:2]],
                         [("look", "2026-09-21T07:40:12.000000Z"), ("say hi", "2026-09-21T07:40:13.000000Z")])
        self.assertEqual(legacy[2]["raw"], "a line of neither format")
        self.assertEqual([r["text"] for r in records if not r.get("legacy")], ["say 0", "say 1"])
        self.assertTrue(os.path.exists(os.path.join(self.directory, f"audit_{self.day}.contrib.log")))
        lines = [c.args[1] for c in report.call_args_list if self.trail_path() in c.args[1]]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("contrib.log", lines[0])

    def test_planted_symlink_is_refused_and_reported(self):
        outside = os.path.join(self.directory, "outside")
        os.mkdir(outside)
        target = os.path.join(outside, "victim")
        with open(target, "wb") as handle:
            handle.write(b"precious\n")
        os.chmod(target, 0o644)
        os.symlink(target, self.trail_path())
        with mock.patch("auditing.hooks.log") as report:
            pipeline = self.write_with_pipeline(2)
        with open(target, "rb") as handle:
            self.assertEqual(handle.read(), b"precious\n")
        self.assertEqual(stat.S_IMODE(os.stat(target).st_mode), 0o644)
        self.assertFalse(os.path.islink(self.trail_path()))
        self.assertEqual([r["text"] for r in read_trail(self.directory)], ["say 0", "say 1"])
        self.assertEqual(pipeline.stats()["output_stats"]["refused_symlinks"], 1)
        self.assertTrue(any("symlink" in c.args[1] for c in report.call_args_list))

    def test_spill_file_refuses_a_planted_temporary_name(self):
        with mock.patch("auditing.spill.time.strftime", return_value="20260921T000000"), \
                mock.patch("auditing.spill._counter", iter([1, 2])):
            planted = os.path.join(self.directory, f".audit-spill-20260921T000000-{os.getpid()}-1.jsonl.tmp")
            os.symlink(os.path.join(self.directory, "victim"), planted)
            with self.assertRaises(FileExistsError):
                spill.write(self.directory, [b'{"n":1}'])
            path = spill.write(self.directory, [b'{"n":2}'])
        self.assertFalse(os.path.exists(os.path.join(self.directory, "victim")))
        self.assertEqual(spill.read(path), ([(mock.ANY, b'{"n":2}', 0)], 0))


class TestFileRepairAndRefusalsThreadWriter(TestFileRepairAndRefusals):
    """The same, written by the in-process writer thread (`AUDIT_WRITER = "thread"`)."""

    writer = expected_writer = "thread"


def _mount_tmpfs(directory, size="2m"):
    """Mount a tmpfs of `size` on `directory`, or skip the test saying why."""
    if not shutil.which("mount"):
        raise unittest.SkipTest("no mount command")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", directory],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise unittest.SkipTest(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")


@requires_servers
class TestDiskFull(FaultCase):
    """A 2 MB tmpfs really filled while events flow, then space freed."""

    def setUp(self):
        super().setUp()
        self.mount = os.path.join(self.directory, "mnt")
        os.mkdir(self.mount)
        _mount_tmpfs(self.mount)
        self.addCleanup(subprocess.run, ["umount", "-l", self.mount], check=False)

    def fill(self, leave):
        """Fill the file system, then free `leave` bytes (a partial page: a record will be cut)."""
        filler = os.path.join(self.mount, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError:
            pass
        finally:
            os.close(fd)
        os.truncate(filler, max(0, os.path.getsize(filler) - leave))
        return filler

    def test_disk_full_leaves_no_cut_record_and_accounts_exactly(self):
        pipeline = self.pipeline("auditing.outputs.to_file", start=True, AUDIT_LOG_DIR=self.mount,
                                 AUDIT_QUEUE_SIZE=2000, AUDIT_FLUSH_INTERVAL=0.05)
        self.assertEqual(pipeline.stats()["writer"], self.writer or "process")
        with mock.patch("auditing.pipeline._log") as log:
            self.produce(pipeline, 100)
            self.assertTrue(pipeline.flush())
            filler = self.fill(leave=4096 + 1000)
            for _ in range(40):  # 4,000 events while the disk is full: the retry buffer overflows
                self.produce(pipeline, 100)
                time.sleep(0.02)
            self.assertTrue(pipeline.flush(), pipeline.stats())
            self.assertTrue(pipeline.stats()["failing"])
            os.unlink(filler)
            deadline = time.monotonic() + 15
            while (pipeline.stats()["failing"] or pipeline.stats().get("unstated_lost", 0)
                   or pipeline.stats()["retrying"]) and time.monotonic() < deadline:
                time.sleep(0.1)
        records = read_trail(self.mount)
        texts, stated = self.assertExact(records, "disk full")
        self.assertGreater(stated, 0)
        self.assertEqual(pipeline.stats()["lost"], stated)
        failed = [line for line in log_lines(log, "err") if "failed" in line]
        self.assertEqual(len(failed), 1, log_lines(log))
        self.assertIn("No space left on device", failed[0])


class TestDiskFullThreadWriter(TestDiskFull):
    """The same, written by the in-process writer thread (`AUDIT_WRITER = "thread"`)."""

    writer = "thread"


# ---------------------------------------------------------------------------- syslog


@requires_servers
class TestSyslogOutage(FaultCase):
    """A real rsyslogd stopped for 2 s while events flow, then started again."""

    def setUp(self):
        super().setUp()
        from .testing.rsyslog import RsyslogServer

        try:
            from .testing.rsyslog import find_rsyslogd

            find_rsyslogd()
        except RuntimeError as error:
            self.skipTest(str(error))
        self.workdir = tempfile.mkdtemp(prefix="rsl", dir="/tmp")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.server = RsyslogServer(self.workdir)
        self.server.start()
        self.addCleanup(self.server.stop)

    def outage(self, transport):
        port = self.server.udp_port if transport == "udp" else self.server.tcp_port
        pipeline = self.pipeline(
            "auditing.outputs.to_syslog", start=True, AUDIT_FLUSH_INTERVAL=0.05,
            AUDIT_SYSLOG={"address": ("127.0.0.1", port), "transport": transport},
        )
        self.assertEqual(pipeline.stats()["writer"], self.writer or "process")
        with mock.patch("auditing.pipeline._log") as log:
            for step in range(60):
                if step == 15:
                    self.server.stop()
                if step == 35:
                    self.server.start()
                self.produce(pipeline, 5)
                time.sleep(0.1)
            self.assertTrue(pipeline.flush())
            deadline = time.monotonic() + 20
            while (pipeline.stats()["retrying"] or pipeline.stats()["failing"]) \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
        records = [json.loads(line) for line in self.server.wait_for(self.produced, timeout=10)]
        # TCP may send the last batch again after a restart (same conn and seq): count each once
        unique = list({(r.get("conn"), r.get("seq"), r.get("kind"), r.get("time")): r
                       for r in records}.values())
        texts, stated = self.assertExact(unique, transport)
        failed = [line for line in log_lines(log, "err") if "failed" in line]
        self.assertEqual(len(failed), 1, log_lines(log))
        return pipeline, texts, stated

    def test_udp_receiver_down_nothing_lost_unsaid(self):
        pipeline, texts, stated = self.outage("udp")
        self.assertEqual(stated, 0)
        self.assertEqual(len(texts), self.produced)
        self.assertIn("unknowable", pipeline.stats()["output_limits"])

    def test_tcp_receiver_down_nothing_lost_unsaid(self):
        self.outage("tcp")


class TestSyslogOutageThreadWriter(TestSyslogOutage):
    """The same, written by the in-process writer thread (`AUDIT_WRITER = "thread"`)."""

    writer = "thread"


class TestSyslogUdpRefusal(unittest.TestCase):
    """UDP to a port of this host where nothing listens: the kernel's ICMP error is read, not ignored."""

    def closed_port(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    def test_refused_datagrams_are_reported_undelivered(self):
        from .syslog import SyslogSink

        sink = SyslogSink(("127.0.0.1", self.closed_port()), "udp")
        self.addCleanup(sink.close)
        for count in (1, 3, 50):
            with self.subTest(count=count), self.assertRaises(SinkError) as caught:
                sink.write([b'{"n":%d}' % n for n in range(count)])
            self.assertEqual(caught.exception.delivered, 0)
            self.assertIn("refused", caught.exception.cause)
        self.assertIn("unknowable", sink.limits)


class TestSyslogDefaults(unittest.TestCase):
    def test_host_port_defaults_to_tcp(self):
        with override_settings(AUDIT_SYSLOG={"address": ("127.0.0.1", 514)}):
            self.assertEqual(conf.load().syslog["transport"], "tcp")
        with override_settings(AUDIT_SYSLOG={"address": ("127.0.0.1", 514), "transport": "udp"}):
            self.assertEqual(conf.load().syslog["transport"], "udp")
