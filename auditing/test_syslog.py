"""
The syslog sink against a real rsyslogd (see `auditing.testing.rsyslog`), over unix, UDP and TCP.

No Evennia database is needed; `evennia test` runs these like any other unittest cases.
"""

import json
import os
import shutil
import tempfile
import threading
import time
import unittest
import uuid

from auditing.sinkbase import SinkError
from auditing.syslog import FACILITIES, SyslogSink, syslog_sink
from auditing.testing.rsyslog import RsyslogServer
from auditing.testing import requires_servers


def _workdir():
    # Short path: it holds a unix socket (108-byte limit).
    return tempfile.mkdtemp(prefix="audsys")


class _RsyslogCase(unittest.TestCase):
    """Starts one rsyslogd for the class; each test tags its records with its own `run` id."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.workdir = _workdir()
        cls.server = RsyslogServer(cls.workdir)
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.workdir, ignore_errors=True)
        super().tearDownClass()

    def setUp(self):
        self.run_id = uuid.uuid4().hex
        self.sinks = []

    def tearDown(self):
        for sink in self.sinks:
            sink.close()

    def sink(self, transport, **options):
        server = self.server
        address = {
            "unix": server.unix_path,
            "udp": ("127.0.0.1", server.udp_port),
            "tcp": ("127.0.0.1", server.tcp_port),
        }[transport]
        sink = syslog_sink(address, transport=transport, **options)
        self.sinks.append(sink)
        return sink

    def records(self, count, start=0, **extra):
        """`count` events of this test and their serialised form (as the pipeline makes them)."""
        events = [
            {"v": 1, "run": self.run_id, "n": n, **extra} for n in range(start, start + count)
        ]
        return events, [
            json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode() for e in events
        ]

    def received(self, server=None):
        """Events of this test that rsyslog wrote out, parsed, in order."""
        events = []
        for line in (server or self.server).lines():
            if self.run_id in line:
                events.append(json.loads(line))
        return events

    def wait_received(self, count, server=None, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            events = self.received(server)
            if len(events) >= count or time.monotonic() > deadline:
                return events
            time.sleep(0.02)


@requires_servers
class SyslogDeliveryTest(_RsyslogCase):
    def roundtrip(self, transport, count=300, batch=50):
        sink = self.sink(transport)
        events, records = self.records(count, transport=transport)
        for start in range(0, count, batch):
            sink.write(records[start : start + batch])
            if transport == "udp":  # UDP drops what the receive buffer cannot hold: pace it
                self.wait_received(start + batch)
        sink.flush()
        self.assertEqual(self.wait_received(count), events)

    def test_unix_records_arrive_intact_and_in_order(self):
        self.roundtrip("unix")

    def test_udp_records_arrive_intact_and_in_order(self):
        self.roundtrip("udp")

    def test_tcp_records_arrive_intact_and_in_order(self):
        self.roundtrip("tcp")

    def test_facility_app_name_and_header_fields(self):
        options = {
            "unix": {"facility": "local3", "app_name": "audit-unix"},
            "udp": {"facility": "daemon", "app_name": "audit-udp", "hostname": "udp-host"},
            "tcp": {"facility": "local7", "app_name": "audit-tcp", "hostname": "tcp-host"},
        }
        for transport, opts in options.items():
            self.sink(transport, **opts).write(self.records(2, transport=transport)[1])
        self.wait_received(6)
        meta = [m for m in self.server.meta() if self.run_id in m["payload"]]
        self.assertEqual(len(meta), 6)
        inputs = {"unix": "imuxsock", "udp": "imudp", "tcp": "imtcp"}
        for entry in meta:
            transport = json.loads(entry["payload"])["transport"]
            opts = options[transport]
            self.assertEqual(entry["input"], inputs[transport])
            self.assertEqual(entry["facility"], opts["facility"])
            self.assertEqual(entry["severity"], "info")
            self.assertEqual(entry["app_name"], opts["app_name"])
            self.assertEqual(entry["procid"], str(os.getpid()))
            if "hostname" in opts:  # the local socket gets the daemon's own host name
                self.assertEqual(entry["hostname"], opts["hostname"])

    def test_awkward_records_arrive_as_one_message_each(self):
        texts = [
            "line one\nline two\r\nthree\x00nul\x07bell\x1b[31mred\x7f",
            "unicode: ü ß 日本語 🙂 \u2028 \u2029 \x85 \ufeff",
            "x" * 20_000,
        ]
        for transport in ("unix", "udp", "tcp"):
            with self.subTest(transport=transport):
                self.run_id = uuid.uuid4().hex
                events = [{"run": self.run_id, "text": text} for text in texts]
                records = [json.dumps(e, ensure_ascii=False).encode() for e in events]
                self.assertGreater(len(records[2]), 20_000)
                self.sink(transport).write(records)
                self.assertEqual(self.wait_received(3), events)
                # One line per record: nothing was split or merged.
                self.assertEqual(sum(self.run_id in line for line in self.server.lines()), 3)

    def test_udp_error_reports_records_sent_before_it(self):
        # A datagram over the 64 KiB UDP limit fails to send: the two before it are delivered.
        events, records = self.records(4)
        records[2] = json.dumps({"run": self.run_id, "big": "y" * 70_000}).encode()
        sink = self.sink("udp")
        with self.assertRaises(SinkError) as caught:
            sink.write(records)
        self.assertEqual(caught.exception.delivered, 2)
        self.assertIn("udp:127.0.0.1", caught.exception.cause)
        sink.write(records[3:])  # the sink is usable again
        self.assertEqual(self.wait_received(3), [events[0], events[1], events[3]])

    def test_non_socket_errors_become_sink_errors(self):
        sink = self.sink("tcp")
        events, records = self.records(3)
        records[1] = "not bytes"
        with self.assertRaises(SinkError) as caught:
            sink.write(records)
        self.assertEqual(caught.exception.delivered, 0)  # TCP sends a batch as one buffer
        sink.write([])  # an empty batch is a no-op


@requires_servers
class SyslogFailureTest(unittest.TestCase):
    """Tests that stop or restart rsyslogd get their own server."""

    def setUp(self):
        self.run_id = uuid.uuid4().hex
        self.workdir = _workdir()
        self.server = RsyslogServer(self.workdir)
        self.server.start()
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
        self.addCleanup(self.server.stop)

    def ids(self):
        """`n` of this test's records in the order rsyslog wrote them."""
        return [json.loads(line)["n"] for line in self.server.lines() if self.run_id in line]

    def wait_ids(self, count, timeout=10.0):
        deadline = time.monotonic() + timeout
        while len(self.ids()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.ids()

    def record(self, n):
        return b'{"run":"%s","n":%d,"pad":"%s"}' % (self.run_id.encode(), n, b"p" * 100)

    def test_unix_socket_of_stopped_server_raises(self):
        sink = syslog_sink(self.server.unix_path)
        self.addCleanup(sink.close)
        sink.write([self.record(0)])
        self.assertEqual(self.wait_ids(1), [0])  # read by rsyslogd before it stops
        self.server.stop()
        for _ in range(2):  # stays an error, on the old connection and on a new one
            with self.assertRaises(SinkError) as caught:
                sink.write([self.record(1), self.record(2)])
            self.assertEqual(caught.exception.delivered, 0)
        self.server.start()
        sink.write([self.record(3)])  # reconnects on the next write
        self.assertEqual(self.wait_ids(2), [0, 3])

    def test_tcp_restart_every_record_accounted_for(self):
        total, size = 2000, 25
        batches = [
            [self.record(n) for n in range(start, start + size)] for start in range(0, total, size)
        ]
        batch_ids = [list(range(start, start + size)) for start in range(0, total, size)]
        stop_after, down_batches = 40, 4  # batches 0..39 up, 40..43 while down, 44.. after restart
        # resend_window=0: the last batch only, so that what is resent is known exactly here.
        sink = syslog_sink(("127.0.0.1", self.server.tcp_port), transport="tcp", resend_window=0)
        self.addCleanup(sink.close)
        delivered, undelivered = [], []
        for index, (batch, ids) in enumerate(zip(batches, batch_ids)):
            if index == stop_after - 1:
                # Everything before the last batch is written out, so only that batch can be
                # caught in rsyslogd's receive buffer when it is stopped.
                self.assertEqual(len(self.wait_ids(len(delivered))), len(delivered))
            if index == stop_after:
                self.server.stop()
            if index == stop_after + down_batches:
                self.server.start()
            try:
                sink.write(batch)
                delivered += ids
            except SinkError as err:
                delivered += ids[: err.delivered]
                undelivered += ids[err.delivered :]
                self.assertTrue(
                    stop_after <= index < stop_after + down_batches, f"batch {index}: {err}"
                )
                self.assertEqual(
                    err.delivered, 0
                )  # the closed connection is noticed before sending
        in_flight = set(batch_ids[stop_after - 1])
        expected = total - len(undelivered)
        received = self.wait_ids(expected)
        if len(received) < expected:  # rsyslogd may lose what it had not read yet when stopped
            time.sleep(0.5)
            received = self.ids()

        # The last batch before the stop is sent again after the restart (the sink cannot know
        # what rsyslogd had processed): duplicates of it are allowed, nothing else is.
        duplicates = {n for n in received if received.count(n) > 1}
        self.assertLessEqual(duplicates, in_flight, "duplicates outside the resent batch")
        received = sorted(set(received))
        self.assertEqual(len(delivered) + len(undelivered), total)
        self.assertEqual(
            undelivered,
            [n for ids in batch_ids[stop_after : stop_after + down_batches] for n in ids],
        )
        self.assertFalse(
            set(received) & set(undelivered), "records reported undelivered were delivered"
        )
        missing = set(delivered) - set(received)
        self.assertEqual(missing, set(), "records lost silently (the last batch is resent)")
        self.assertEqual(set(received) | set(undelivered), set(range(total)))

    def test_tcp_resends_what_went_out_in_the_window(self):
        """Two batches sent, then the server stops before reading them: both are sent again (the
        last batch alone would lose the first), nothing older is."""
        sink = syslog_sink(("127.0.0.1", self.server.tcp_port), transport="tcp", resend_window=5.0)
        self.addCleanup(sink.close)
        sink.write([self.record(n) for n in range(0, 10)])
        self.assertEqual(len(self.wait_ids(10)), 10)
        # The first batch went out 10 s ago: outside the window, it is not sent again.
        sink._unconfirmed = type(sink._unconfirmed)((when - 10, record) for when, record in sink._unconfirmed)
        sink.write([self.record(n) for n in range(10, 20)])
        sink.write([self.record(n) for n in range(20, 30)])
        self.server.stop()
        self.server.start()
        sink.write([self.record(n) for n in range(30, 40)])
        received = self.wait_ids(40, timeout=10)
        self.assertEqual(set(received), set(range(40)), "nothing lost")
        duplicates = {n for n in received if received.count(n) > 1}
        self.assertLessEqual(duplicates, set(range(10, 30)), "only what went out in the window is resent")

    def test_tcp_restart_while_streaming(self):
        """rsyslogd restarts (another thread) while records stream; failed parts are retried.

        The only loss allowed is what TCP cannot report: records handed to the kernel after the
        restart began and before the sink could see the server had gone.
        """
        total, size = 2000, 20
        sink = syslog_sink(("127.0.0.1", self.server.tcp_port), transport="tcp", resend_window=0)
        self.addCleanup(sink.close)
        go, stopped = threading.Event(), threading.Event()

        def restart():
            go.wait(30)
            self.server.stop()
            stopped.set()
            self.server.start()

        thread = threading.Thread(target=restart)
        thread.start()
        self.addCleanup(thread.join, 30)
        window_start = window_end = None
        retried = []
        for start in range(0, total, size):
            if start == total // 2:
                # All written so far is in the file: nothing before this point can be lost.
                self.assertEqual(len(self.wait_ids(start)), start)
                window_start = start
                go.set()
            if window_end is None and stopped.is_set():
                window_end = start  # the server is gone: from here the sink must notice it
            pending = [self.record(n) for n in range(start, start + size)]
            deadline = time.monotonic() + 20
            while pending:
                try:
                    sink.write(pending)
                    pending = []
                except SinkError as err:
                    # What the pipeline does: keep the undelivered rest and retry it.
                    self.assertLess(time.monotonic(), deadline, err.cause)
                    pending = pending[err.delivered :]
                    retried.append(json.loads(pending[0])["n"])
                    if window_end is None:
                        window_end = json.loads(pending[0])["n"]
                    time.sleep(0.02)
            time.sleep(0.002)  # a steady stream, as from the pipeline's flushes
        thread.join(30)
        self.assertTrue(stopped.is_set())
        self.assertIsNotNone(window_end)

        time.sleep(0.3)
        received = self.wait_ids(total - (window_end - window_start), timeout=5)
        time.sleep(0.3)
        received, partial = [], []
        for line in self.server.lines():
            if self.run_id in line:
                try:
                    received.append(json.loads(line)["n"])
                except ValueError:
                    partial.append(line)  # a message cut by the stop, resent whole afterwards
        duplicates = {n for n in received if received.count(n) > 1}
        self.assertLessEqual(duplicates, set(range(window_start, total)), "duplicates before the restart")
        received = sorted(set(received))
        missing = set(range(total)) - set(received)
        self.assertLessEqual(
            missing, set(range(window_start, window_end)), "lost outside the window"
        )
        self.assertLessEqual(len(partial), 1)
        for line in partial:
            self.assertTrue(
                any(self.record(n).decode().startswith(line) for n in range(window_start, total))
            )


class SyslogSinkOptionsTest(unittest.TestCase):
    def test_defaults_and_validation(self):
        sink = syslog_sink()
        self.assertIsInstance(sink, SyslogSink)
        self.assertEqual((sink.address, sink.transport), ("/dev/log", "unix"))  # not connected yet
        self.assertEqual(syslog_sink(("127.0.0.1", 514)).transport, "tcp")  # UDP only when asked for: its loss is unknowable
        self.assertEqual(FACILITIES["local7"], 23)
        self.assertEqual(FACILITIES["authpriv"], 10)
        for bad in (
            {"facility": "nope"},
            {"address": "/dev/log", "transport": "tcp"},
            {"address": ("127.0.0.1", 514), "transport": "unix"},
            {"address": 514},
        ):
            with self.subTest(**bad), self.assertRaises(ValueError):
                syslog_sink(**bad)

    def test_header_formats(self):
        tcp = syslog_sink(
            ("127.0.0.1", 514), "tcp", facility="local0", app_name="my app", hostname="h"
        )
        head = tcp._header().decode()
        self.assertRegex(
            head, r"^<134>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z h my_app %d - - $" % os.getpid()
        )
        unix = syslog_sink("/nonexistent", facility="auth", app_name="a:b[c]")
        self.assertEqual(unix._header(), b"<38>a_b_c_[%d]: " % os.getpid())


if __name__ == "__main__":
    unittest.main()
