"""
Tamper evidence (auditing.chain, auditing.verify): a real FileSink (or a real rsyslogd) under a
ChainingSink with a fake clock writes a trail over several days, reloads, a size rotation, a gzip'd
day and a kill -9; the tests then edit the files as an intruder would, one way per test, and check
that `evennia-audit verify` says exactly where, and that a clean trail verifies.
"""

import contextlib
import io
import os
import re
import shutil
import signal
import tempfile
import time
import unittest

import orjson
from django.test import override_settings
from evennia.utils.test_resources import EvenniaTest

from auditing.testing.base import TempTrailMixin

from auditing import FORMAT_VERSION, conf
from auditing.chain import (
    STATE_NAME, ChainingSink, SealKey, chain_value, chained_line, derive, evolve, key_id, seal_mac,
    split_chained,
)
from auditing.cli import main
from auditing.event import RCV, capture, iso_time
from auditing.filesink import FileSink
from auditing.pipeline import Pipeline
from auditing.retention import gzip_file
from auditing.sinkbase import SinkError
from auditing.testing import requires_servers
from auditing.trail import Reader
from auditing.verify import verify

try:
    from hypothesis import HealthCheck, given, settings, strategies as st
except ImportError:  # hypothesis is a test extra; a game may not have it
    given = None

START = 1_795_000_000.0  # 2026-11-18T...Z
DAY = 86400.0


def needs_hypothesis(test):
    if given is None:
        return unittest.skip("needs hypothesis (pip install hypothesis)")(test)
    return test


class Clock:
    def __init__(self, now=START):
        self.now = now

    def __call__(self):
        return self.now


def event(number, when, text=None):
    return orjson.dumps({"v": FORMAT_VERSION, "kind": "io", "time": iso_time(when), "direction": "RCV",
                         "conn": "c1", "seq": number, "text": text or f"say line {number}"})


class FlakySink:
    """Delivers the first `delivered` records of the next write, then fails (disk full)."""

    def __init__(self, inner):
        self.inner = inner
        self.fail_next = None

    def write(self, records, times=None):
        if self.fail_next is not None:
            count, self.fail_next = self.fail_next, None
            self.inner.write(records[:count], times[:count])
            raise SinkError("disk full (test)", count)
        self.inner.write(records, times)

    def flush(self):
        pass

    def close(self):
        self.inner.close()


class TrailTest(unittest.TestCase):
    """Helpers: a temporary trail directory, a seal key beside it (outside), sinks on a fake clock."""

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="audit-chain-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.dir = os.path.join(self.root, "logs")
        self.key_path = os.path.join(self.root, "server", "audit_seal.key")
        self.clock = Clock()
        self.number = 0

    def keygen(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(main(["keygen", "--key-file", self.key_path]), 0)
        key_hex = [line.strip() for line in out.getvalue().splitlines() if len(line.strip()) == 64][0]
        self.key = bytes.fromhex(key_hex)
        return self.key

    def sink(self, max_bytes=0, inner=None, interval=60.0, on_new_day=None):
        inner = inner or FileSink(self.dir, max_bytes=max_bytes, clock=self.clock)
        return ChainingSink(inner, None, self.key_path, interval,
                            trail_dir=self.dir, on_new_day=on_new_day, clock=self.clock)

    def write(self, sink, count, step=7.0, batch=3):
        """`count` records, `batch` per write, `step` seconds apart, with the writer's idle calls."""
        done = 0
        while done < count:
            size = min(batch, count - done)
            records, times = [], []
            for _ in range(size):
                self.number += 1
                records.append(event(self.number, self.clock.now))
                times.append(self.clock.now)
                self.clock.now += step
            sink.write(records, times)
            sink.flush()
            sink.on_idle()
            done += size

    def build(self, key=True, rotate=False):
        """Three days, a reload each day, a size rotation on day 2, day 1 gzip'd."""
        if key:
            self.keygen()
        for day in range(3):
            sink = self.sink(max_bytes=2500 if rotate and day == 1 else 0)
            self.write(sink, 30)
            sink.close()  # evennia reload: the next sink continues the chain
            self.clock.now = START + (day + 1) * DAY
        return self.files()

    def files(self):
        return sorted(name for name in os.listdir(self.dir) if name.startswith("audit_") and ".log" in name)

    def path(self, name):
        return os.path.join(self.dir, name)

    def lines(self, name):
        with open(self.path(name), "rb") as handle:
            return handle.read().split(b"\n")[:-1]

    def rewrite(self, name, lines):
        with open(self.path(name), "wb") as handle:
            handle.write(b"".join(line + b"\n" for line in lines))

    @contextlib.contextmanager
    def edited(self, name, lines):
        """The file `name` holds `lines` while the block runs (it gets the report), then is restored."""
        original = self.lines(name)
        self.rewrite(name, lines)
        try:
            yield self.verify(1)
        finally:
            self.rewrite(name, original)

    def verify(self, expect_exit):
        report = verify(self.dir, self.key)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main(["verify", "--key", self.key.hex(), "--json", self.dir])
        self.assertEqual(status, expect_exit, out.getvalue()[:3000])
        self.assertEqual(orjson.loads(out.getvalue())["problems"], report["problems"])
        return report

    def tampering(self, report):
        return [(p["kind"], p["file"], p["line"]) for p in report["problems"]]


class TestCleanTrail(TrailTest):
    def test_clean_trail_with_reloads_rotation_and_gzip_verifies(self):
        files = self.build(rotate=True)
        self.assertIn("audit_2026-11-19.1.log", files)  # the size rotation happened
        gzip_file(self.path(files[0]))  # day 1 compressed
        report = self.verify(0)
        self.assertTrue(report["intact"])
        self.assertEqual(report["problems"], [])
        self.assertEqual(report["notes"], [])  # reloads are seamless: no crash reported
        self.assertEqual(report["last_chain_seq"], report["records"])
        self.assertGreaterEqual(report["seals"], 3 + 3)  # one a minute, one per close
        self.assertEqual(report["unsealed_records"], 0)  # closed: everything sealed
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            self.assertEqual(main(["verify", "--key", self.key.hex(), self.dir]), 0)
        self.assertIn("INTACT", text.getvalue())

    def test_without_key_file_records_are_chained_but_not_sealed(self):
        self.key = os.urandom(32)
        self.build(key=False)
        report = self.verify(0)
        self.assertEqual(report["seals"], 0)
        self.assertEqual(report["unsealed_records"], 90)
        self.assertEqual(set(os.listdir(self.dir)), {f"audit_{day}.log" for day in ("2026-11-18", "2026-11-19", "2026-11-20")})
        self.assertFalse(os.path.exists(self.key_path))

    def test_a_key_file_that_is_a_symlink_is_refused(self):
        self.keygen()
        elsewhere = os.path.join(self.root, "elsewhere.key")
        os.rename(self.key_path, elsewhere)
        os.symlink(elsewhere, self.key_path)
        with self.assertRaises(OSError):
            SealKey.load(self.key_path)
        sink = self.sink()
        self.write(sink, 3)
        sink.close()  # chained, not sealed, and the file it points to is left alone
        self.assertEqual(verify(self.dir, self.key)["seals"], 0)
        self.assertEqual(SealKey.load(elsewhere).epoch, 0)

    def test_exit_status_2_for_no_trail_or_a_bad_key(self):
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertEqual(main(["verify", os.path.join(self.root, "nothing")]), 2)
            self.assertEqual(main(["verify", "--key", "not-hex", self.root]), 2)
            self.keygen()
            self.assertEqual(main(["keygen", "--key-file", self.key_path]), 2)  # never replaced silently
        self.assertIn("no such file or directory", err.getvalue())
        self.assertEqual(SealKey.load(self.key_path).key_id, key_id(self.key))

    def test_key_file_evolves_and_old_key_is_gone(self):
        self.keygen()
        sink = self.sink()
        self.write(sink, 30)
        sink.close()
        current = SealKey.load(self.key_path)
        self.assertGreater(current.epoch, 1)
        self.assertEqual(bytes(current.key), derive(self.key, current.epoch))
        self.assertEqual(os.stat(self.key_path).st_mode & 0o777, 0o600)
        with open(self.key_path, "rb") as handle:
            stored = handle.read()
        for epoch in range(current.epoch):
            self.assertNotIn(derive(self.key, epoch).hex().encode(), stored)

    def test_records_written_after_close_still_end_with_a_final_seal(self):
        self.keygen()
        sink = self.sink()
        self.write(sink, 5)
        sink.close()
        self.write(sink, 2)  # the pipeline writes late events on the caller's thread after stop
        last = orjson.loads(self.lines(self.files()[-1])[-1])
        self.assertEqual((last["kind"], last.get("final")), ("seal", True))
        sink = self.sink()  # the next start: a clean stop, no chain_start
        self.write(sink, 2)
        sink.close()
        report = self.verify(0)
        self.assertEqual((report["problems"], report["notes"]), ([], []))

    def test_refused_records_are_chained_again_from_the_right_head(self):
        self.keygen()
        flaky = FlakySink(FileSink(self.dir, clock=self.clock))
        sink = self.sink(inner=flaky)
        self.write(sink, 6)
        flaky.fail_next = 1
        batch = [event(100, self.clock.now), event(101, self.clock.now)]
        with self.assertRaises(SinkError) as caught:
            sink.write(batch, [self.clock.now] * 2)
        self.assertEqual(caught.exception.delivered, 1)
        sink.write(batch[1:], [self.clock.now])  # the pipeline retries the rest
        loss = orjson.dumps({"v": 1, "kind": "loss", "time": iso_time(self.clock.now), "lost": 3,
                             "first_time": iso_time(START), "last_time": iso_time(START), "cause": "test"})
        sink.write([loss], [self.clock.now])
        sink.close()
        report = self.verify(0)
        self.assertEqual([n["kind"] for n in report["notes"]], ["loss"])


class TestCrash(TrailTest):
    def cut_write(self, name):
        """What kill -9 during `os.write` leaves: the start of a record the sink never saw written."""
        with open(self.path(name), "ab") as handle:
            handle.write(event(500, self.clock.now)[:40])

    def test_kill_9_with_a_cut_last_line_is_a_crash_not_tampering(self):
        self.keygen()
        sink = self.sink()
        self.write(sink, 20)
        name = self.files()[-1]
        self.cut_write(name)  # kill -9 in the middle of a write; no close
        cut_line = len(self.lines(name)) + 1
        sink = self.sink()
        self.write(sink, 20)
        sink.close()
        report = self.verify(0)
        self.assertEqual(report["problems"], [])
        crashes = [(n["kind"], n["line"]) for n in report["notes"]]
        # The file sink cut the partial record away before writing again (counted lost by the
        # pipeline); the chain_start in its place states the crash and the head it recovered.
        self.assertEqual(crashes, [("crash", cut_line)])
        for line in self.lines(name):
            orjson.loads(line)

    def test_kill_9_just_before_midnight_and_restart_the_next_day(self):
        self.keygen()
        sink = self.sink()
        self.write(sink, 10)
        name = self.files()[-1]
        self.cut_write(name)  # the last line of that day's file stays cut
        self.clock.now += DAY
        sink = self.sink()
        self.write(sink, 10)
        sink.close()
        report = self.verify(0)
        self.assertEqual(report["problems"], [])
        self.assertEqual([(n["kind"], n["file"]) for n in report["notes"]],
                         [("crash", name), ("crash", self.files()[-1])])

    def test_kill_9_between_writes_resumes_the_chain(self):
        self.keygen()
        sink = self.sink()
        self.write(sink, 10)  # no close
        sink = self.sink()
        self.write(sink, 10)
        sink.close()
        report = self.verify(0)
        self.assertEqual(report["problems"], [])
        self.assertEqual([n["kind"] for n in report["notes"]], ["crash"])
        self.assertIn("resumes from chain_seq 10", report["notes"][0]["detail"])

    def test_cut_last_line_of_the_newest_file_is_reported_as_a_crash(self):
        self.keygen()
        sink = self.sink()
        self.write(sink, 10)
        name = self.files()[-1]
        self.cut_write(name)
        report = verify(self.dir, self.key)
        self.assertTrue(report["intact"])
        self.assertEqual([n["kind"] for n in report["notes"]], ["crash"])


class TestTampering(TrailTest):
    """One kind of edit per test; each must be found at the right file and line."""

    def setUp(self):
        super().setUp()
        self.names = self.build()

    @needs_hypothesis
    def test_modified_record(self):
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
        @given(index=st.integers(0, 29), text=st.text(min_size=1, max_size=40))
        def check(index, text):
            name = self.names[1]
            original = self.lines(name)
            lines = list(original)
            record = orjson.loads(lines[index])
            if record.get("kind") != "io" or record["text"] == text:
                return
            lines[index] = lines[index].replace(orjson.dumps(record["text"]), orjson.dumps(text), 1)
            with self.edited(name, lines) as report:
                self.assertEqual(self.tampering(report), [("modified", name, index + 1)])
                self.assertEqual(report["problems"][0]["chain_seq"], record["chain_seq"])
                self.assertIsInstance(report["problems"][0]["interval"], dict)  # a sealed interval

        check()

    def assert_found(self, edit, kind, line):
        """Edit the lines of the day-2 file with `edit(lines)`; verify finds `kind` there, only."""
        name = self.names[1]
        lines = self.lines(name)
        edit(lines)
        self.rewrite(name, lines)
        self.assertEqual(self.tampering(self.verify(1)), [(kind, name, line)])

    def test_inserted_record(self):
        self.assert_found(lambda lines: lines.insert(4, event(999, START + DAY + 5, "give me admin")),
                          "inserted", 5)

    def test_inserted_copy_of_a_chained_record(self):
        self.assert_found(lambda lines: lines.insert(10, lines[3]), "inserted", 11)

    @needs_hypothesis
    def test_deleted_records(self):
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
        @given(start=st.integers(1, 25), count=st.integers(1, 4))
        def check(start, count):
            name = self.names[1]
            original = self.lines(name)
            with self.edited(name, original[:start] + original[start + count:]) as report:
                self.assertEqual(self.tampering(report), [("deleted", name, start + 1)])
                self.assertEqual(report["problems"][0]["missing"], count)
                self.assertIsInstance(report["problems"][0]["interval"], dict)  # the seal after the gap

        check()

    def test_resent_copies_are_not_tampering(self):
        """Syslog over TCP resends what it could not confirm: the copies replay the records before them."""
        name = self.names[1]
        lines = self.lines(name)
        lines[12:12] = lines[8:12]
        self.rewrite(name, lines)
        report = self.verify(0)
        self.assertEqual([(n["kind"], n["line"]) for n in report["notes"]], [("resent", 13)])

    def test_copies_that_are_no_replay_are_inserted(self):
        def copy(lines):
            lines[12:12] = lines[8:11]  # stops short of the record just before: not what a resend does

        self.assert_found(copy, "inserted", 13)

    def test_reordered_records(self):
        def swap(lines):
            lines[6], lines[7] = lines[7], lines[6]

        self.assert_found(swap, "reordered", 8)

    def test_truncated_file(self):
        name = self.names[0]
        size = os.path.getsize(self.path(name))
        os.truncate(self.path(name), size // 2)  # cut inside a record, in a file that is not the newest
        report = self.verify(1)
        kinds = {p["kind"] for p in report["problems"]}
        self.assertEqual(kinds, {"truncated"})
        self.assertTrue(all(p["file"] in (name, self.names[1]) for p in report["problems"]))

    def test_removed_file(self):
        os.unlink(self.path(self.names[1]))
        report = self.verify(1)
        self.assertEqual([p["kind"] for p in report["problems"]], ["file_removed"])
        self.assertIn(self.names[1], report["problems"][0]["detail"])
        self.assertEqual(report["problems"][0]["file"], self.names[2])

    def test_removed_first_file(self):
        os.unlink(self.path(self.names[0]))
        report = self.verify(1)
        self.assertEqual([p["kind"] for p in report["problems"]], ["file_removed"])

    def test_recomputed_chain_is_caught_by_the_seal(self):
        """An intruder who edits a record and recomputes every chain value after it."""
        name = self.names[1]
        lines = self.lines(name)
        index = 5
        lines[index] = lines[index].replace(b"say line", b"say LINE")
        head = split_chained(lines[index - 1])[2]
        for position in range(index, len(lines)):
            record, seq, _chain = split_chained(lines[position])
            head = chain_value(head, seq, record)
            lines[position] = chained_line(record, seq, head)
        self.rewrite(name, lines)
        report = self.verify(1)
        kinds = [p["kind"] for p in report["problems"]]
        self.assertIn("bad_seal", kinds)
        self.assertNotIn("modified", kinds[:1])  # the chain itself was made consistent
        first = report["problems"][0]
        self.assertEqual(first["file"], name)
        self.assertEqual(first["interval"]["epoch"], orjson.loads(self.lines(name)[first["line"] - 1])["epoch"])

    def test_evolved_key_cannot_forge_an_older_seal(self):
        """The intruder holds the key file (k(n) now) and re-seals an old interval after editing it."""
        stolen = SealKey.load(self.key_path)
        name = self.names[0]
        lines = self.lines(name)
        seals = [i for i, line in enumerate(lines) if b'"kind":"seal"' in line]
        target = seals[0]
        seal = orjson.loads(lines[target])
        self.assertLess(seal["epoch"], stolen.epoch)
        # The best the intruder can do: MAC with the key held, or with keys evolved from it.
        for attempt_key in (bytes(stolen.key), evolve(stolen.key)):
            forged_mac = seal_mac(attempt_key, seal["epoch"], seal["sealed_seq"], seal["sealed_head"], seal["time"])
            self.assertNotEqual(forged_mac, seal["mac"])
        lines[target] = lines[target].replace(seal["mac"].encode(), forged_mac.encode())
        record, seq, _chain = split_chained(lines[target])
        lines[target] = chained_line(record, seq, chain_value(split_chained(lines[target - 1])[2], seq, record))
        self.rewrite(name, lines)
        report = self.verify(1)
        self.assertEqual(self.tampering(report)[0], ("bad_seal", name, target + 1))
        self.assertIn("MAC", report["problems"][0]["detail"])


class TestThroughThePipeline(TempTrailMixin, EvenniaTest):
    """The settings, `outputs.to_file` and the pipeline's writer thread: what a game runs."""

    start_service = False  # it builds its own pipelines (a service would restart on its overrides)

    def seals(self, directory):
        return [r for r, _ in Reader(directory) if r.get("kind") == "seal"] if os.path.isdir(directory) else []

    def test_settings_reload_and_the_seal_timer_in_the_writer_process(self):
        self.check_settings_reload_and_the_seal_timer("process")

    def test_settings_reload_and_the_seal_timer_on_the_writer_thread(self):
        self.check_settings_reload_and_the_seal_timer("thread")

    def check_settings_reload_and_the_seal_timer(self, writer):
        root = tempfile.mkdtemp(prefix="audit-chain-")
        self.addCleanup(shutil.rmtree, root, True)
        log_dir, key_file = os.path.join(root, "logs"), os.path.join(root, "server", "audit_seal.key")
        initial = SealKey.create(key_file)
        with override_settings(AUDIT_CALLBACK="auditing.outputs.to_file", AUDIT_LOG_DIR=log_dir,
                               AUDIT_SEAL_KEY_FILE=key_file, AUDIT_SEAL_INTERVAL=0.05, AUDIT_FLUSH_INTERVAL=0.01,
                               AUDIT_WRITER=writer):
            config = conf.load()
        self.assertEqual((config.chain, config.seal_interval, config.seal_key_file), (True, 0.05, key_file))
        for run in range(2):  # a reload in between: the chain and the key carry over
            pipeline = Pipeline(config).start()
            self.addCleanup(pipeline.stop)
            self.assertEqual(pipeline.stats()["writer"], writer)
            if writer == "thread":  # in process mode the chaining sink lives in the child
                self.assertIsInstance(pipeline.sink, ChainingSink)
            before = len(self.seals(log_dir))
            for index in range(30):
                pipeline.submit(capture(self.session, RCV, {"text": ([f"say {run}-{index}"], {})}))
            deadline = time.monotonic() + 10
            while len(self.seals(log_dir)) == before and time.monotonic() < deadline:
                time.sleep(0.02)  # no event comes: the writer's idle tick seals
            self.assertGreater(len(self.seals(log_dir)), before)
            pipeline.stop()
        report = verify(log_dir, initial)
        self.assertEqual((report["problems"], report["notes"]), ([], []))
        self.assertEqual(report["unsealed_records"], 0)
        io = [r["text"] for r, _ in Reader(log_dir) if r.get("kind") == "io"]
        self.assertEqual(io, [f"say {run}-{index}" for run in range(2) for index in range(30)])
        self.assertEqual(SealKey.load(key_file).epoch, report["seals"])


@requires_servers
class TestRsyslog(TrailTest):
    """A central rsyslog's file (%msg%, one record per line) verifies the same way."""

    def setUp(self):
        super().setUp()
        from auditing.testing.rsyslog import RsyslogServer

        workdir = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: it holds a unix socket
        self.addCleanup(shutil.rmtree, workdir, True)
        self.server = RsyslogServer(workdir)
        self.server.start()
        self.addCleanup(self.server.stop)
        self.keygen()
        self.state = os.path.join(self.root, STATE_NAME.format("to_syslog"))

    def syslog_sink(self, interval):
        from auditing.syslog import syslog_sink

        inner = syslog_sink(("127.0.0.1", self.server.tcp_port), "tcp")
        return ChainingSink(inner, self.state, self.key_path, interval, clock=self.clock)

    def test_rsyslog_file_verifies_and_shows_an_edit(self):
        server = self.server
        for _ in range(2):  # a reload in between
            sink = self.syslog_sink(60.0)
            self.write(sink, 25)
            sink.close()
        lines = server.wait_for(52)
        self.assertGreaterEqual(len(lines), 52)
        report = verify(server.out_path, self.key)
        self.assertEqual(report["problems"], [], report)
        self.assertGreater(report["seals"], 2)
        with open(server.out_path, "rb") as handle:
            data = handle.read().split(b"\n")
        data[7] = data[7].replace(b"say line", b"say lime")
        with open(server.out_path, "wb") as handle:
            handle.write(b"\n".join(data))
        report = verify(server.out_path, self.key)
        self.assertEqual(self.tampering(report), [("modified", "out.log", 8)])

    def test_rsyslog_restarted_while_records_flow_still_verifies(self):
        """rsyslogd restarted twice over TCP: what the sink refused is chained again; copies it resent
        are reported as resent; the central file verifies with no tampering."""
        server = self.server
        sink = self.syslog_sink(5.0)
        pending = []
        for round_number in range(90):
            if round_number in (30, 60):
                server.restart()
            for _ in range(3):
                self.number += 1
                pending.append(event(self.number, self.clock.now))
                self.clock.now += 1
            for _attempt in range(200):  # what the pipeline does: retry the rest, in order
                try:
                    sink.write(pending)
                    pending = []
                    break
                except SinkError as error:
                    pending = pending[error.delivered + error.rejected:]
                    time.sleep(0.05)
            sink.on_idle()
        sink.close()
        self.assertEqual(pending, [])
        deadline = time.monotonic() + 20
        while True:  # resent copies count as lines too: wait for 270 distinct records
            records = [orjson.loads(line) for line in server.wait_for(270)]
            distinct = {r["seq"] for r in records if r["kind"] == "io"}
            if len(distinct) >= 270 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertGreaterEqual(len(distinct), 270)
        report = verify(server.out_path, self.key)
        self.assertEqual(report["problems"], [], report["notes"])
        self.assertTrue({n["kind"] for n in report["notes"]} <= {"resent"})
        self.assertGreater(report["seals"], 10)


def _alive(pid):
    """Is `pid` a live process (not a zombie)?"""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@requires_servers
class TestRealGame(unittest.TestCase):
    """A real Evennia game: a reload, the writer's own seals, a kill -9 of the server, a restart."""

    def test_reload_and_kill_9_of_a_real_game_verify(self):
        from auditing.testing.game import GameServer

        root = tempfile.mkdtemp(prefix="audit-chain-game-")
        self.addCleanup(shutil.rmtree, root, True)
        key_file, log_dir = os.path.join(root, "audit_seal.key"), os.path.join(root, "trail")
        initial = SealKey.create(key_file)
        game = GameServer(root, name="chaingame", audit_dir=log_dir, stop_at_exit=True, settings_extra=(
            f"AUDIT_LOG_DIR = {log_dir!r}\nAUDIT_SEAL_KEY_FILE = {key_file!r}\nAUDIT_SEAL_INTERVAL = 1"))
        self.addCleanup(game.stop)
        game.up()
        game.reload()  # a clean stop: sealed at close, the chain continues
        game.probe()
        time.sleep(2.5)  # the writer seals on its own clock
        with open(game.server_log, encoding="utf-8", errors="replace") as handle:
            children = [int(pid) for pid in re.findall(r"audit writer process (\d+) started", handle.read())]
        self.assertTrue(children, "no writer process started (AUDIT_WRITER defaults to a child process)")
        os.kill(game.pids()["server"], signal.SIGKILL)
        # The writer process sees its pipe end, writes what it holds and ends too: no orphan.
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertFalse([pid for pid in children if _alive(pid)], "writer process outlived its server")
        game.stop()
        game.start()
        game.probe()
        game.stop()
        report = verify(log_dir, initial)
        self.assertEqual(report["problems"], [], report["notes"])
        self.assertTrue(report["notes"])
        self.assertEqual({note["kind"] for note in report["notes"]}, {"crash"})  # the kill -9, nothing else
        restarts = [note for note in report["notes"] if note["detail"].startswith("the writer")]
        self.assertEqual(len(restarts), 1, report["notes"])  # the reload and the stops were clean
        self.assertGreaterEqual(report["seals"], 3)
        self.assertEqual(report["unsealed_records"], 0)  # the last stop sealed everything
        self.assertEqual(SealKey.load(key_file).epoch, report["seals"])
