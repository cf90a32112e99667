"""
`AUDIT_WRITER = "process"`: the built-in outputs written by a child process (`auditing.writerproc`).

Each test drives a real `Pipeline` in process mode (a real `python -m auditing.writerproc` child,
the real file sink in a temporary directory, a real Evennia session as the events' connection):

- the child killed with SIGKILL mid-stream: every event produced is in the trail (the new child is
  sent the unacknowledged batches), at most one batch twice, every line parses, `stats()` exact;
- a password prompt before a child restart still masks the answer typed after it (and its echo);
- the game thread's part is unchanged (the same `submit`, the captured tuple queued as is);
- the watch feed's observers get the scrubbed events back; custom callbacks stay in process;
- a child that does not answer at stop is killed, and what it held is spilled by the server;
- a real game with AUDIT_WRITER = "process", through a reload (`ProcessGameTest`, requires_servers).
"""

import os
import re
import shutil
import signal
import tempfile
import time
import unittest
from unittest import mock

from django.test import override_settings
from evennia.utils.test_resources import EvenniaTest

from auditing.testing.base import TempTrailMixin

from . import conf, test_prompts
from .event import RCV, SND, capture
from .pipeline import _BATCH, Pipeline
from .procdelivery import ProcessPipeline
from .scrub import MASK
from .test_faults import read_trail
from .testing import requires_servers

try:
    from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
except ImportError:  # a game may not have it: these tests say why they did not run
    given = None

needs_hypothesis = unittest.skipIf(given is None, "needs the hypothesis package (pip install hypothesis)")

# A typed secret: long enough to be remembered (secrets.MIN_LENGTH), no spaces (one word).
_SECRET_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&*+-./:;<>?@^_~"


def _examples(count):
    def decorate(test):
        if given is None:
            return test
        return hypothesis_settings(max_examples=count, deadline=None, derandomize=True,
                                   suppress_health_check=list(HealthCheck))(test)

    return decorate


def keep(event):
    """A custom AUDIT_CALLBACK (it gets live objects, so it runs in the game process)."""


class _OwnSinkOutput:
    """A custom output with its own sink (as tests and plugins make): written in this process."""

    def __call__(self, event):
        pass

    def make_sink(self, config):
        from .filesink import FileSink

        return FileSink(config.log_dir)


own_sink = _OwnSinkOutput()


class ProcessCase(TempTrailMixin, EvenniaTest):
    """A process-mode pipeline writing to a temporary directory (no service: it builds its own
    pipelines; sessions of our class whatever the game's settings say)."""

    start_service = False

    def setUp(self):
        super().setUp()
        self.session.audit_conn = "writerproc-test-conn"
        self.directory = tempfile.mkdtemp(prefix="audit-writerproc-")
        self.addCleanup(shutil.rmtree, self.directory, True)

    def pipeline(self, **audit):
        audit.setdefault("AUDIT_LOG_DIR", self.directory)
        audit.setdefault("AUDIT_SEAL_KEY_FILE", os.path.join(self.directory, "seal.key"))
        with override_settings(AUDIT_CALLBACK="auditing.outputs.to_file", AUDIT_WRITER="process",
                               AUDIT_IN=True, AUDIT_OUT=True, **audit):
            config = conf.load()
        pipeline = Pipeline(config)
        self.assertIsInstance(pipeline, ProcessPipeline)
        self.addCleanup(pipeline.stop, 5)
        return pipeline

    def say(self, pipeline, text, direction=RCV):
        pipeline.submit(capture(self.session, direction, {"text": ([text], {})}))

    def kill_child(self, pipeline):
        """SIGKILL the child and wait until it is really gone."""
        child = pipeline._child
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        return child.pid


class TestChildKilled(ProcessCase):
    @needs_hypothesis
    def test_sigkill_mid_stream_loses_nothing(self):
        @_examples(3)
        @given(before=st.integers(1, 30_000), after=st.integers(0, 20_000),
               kill_in_flight=st.booleans())
        def run(before, after, kill_in_flight):
            with tempfile.TemporaryDirectory() as directory:
                self._kill_run(directory, before, after, kill_in_flight)

        run()

    def _kill_run(self, directory, before, after, kill_in_flight):
        pipeline = self.pipeline(AUDIT_LOG_DIR=directory).start()
        produced = 0
        for _ in range(before):
            self.say(pipeline, f"say {produced}")
            produced += 1
        if not kill_in_flight:
            self.assertTrue(pipeline.flush(60))
        else:  # kill while batches are on their way (sent, not acknowledged)
            deadline = time.monotonic() + 10
            while not pipeline._unacked and pipeline.queue and time.monotonic() < deadline:
                pipeline._wake.set()
                time.sleep(0.0005)
        old = self.kill_child(pipeline)
        for _ in range(after):
            self.say(pipeline, f"say {produced}")
            produced += 1
        self.assertTrue(pipeline.flush(60), pipeline.stats())
        deadline = time.monotonic() + 15  # with nothing to send, the feeder starts it within a wake
        while not (pipeline._child_alive() and pipeline._child.pid != old) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertNotEqual(pipeline._child.pid, old)
        stats = pipeline.stats()
        pipeline.stop(10)
        records = read_trail(directory)  # fails on any line that does not parse
        texts = [r["text"] for r in records if r.get("kind") == "io"]
        self.assertEqual(set(texts), {f"say {n}" for n in range(produced)}, "an event was lost")
        self.assertLessEqual(len(texts) - produced, _BATCH, "more than one batch written twice")
        self.assertEqual(stats["delivered"], produced)
        self.assertEqual(stats["lost"], 0)
        self.assertEqual(stats["writer_restarts"], 1)
        # A cut line the dead child left is repaired and stated lost by the next start; its record
        # was in an unacknowledged batch, so it was written again: at most that one is stated.
        self.assertLessEqual(sum(r["lost"] for r in records if r.get("kind") == "loss"), 1)


class TestServerDied(ProcessCase):
    def test_child_writes_what_it_received_ends_the_chain_as_a_crash_and_exits(self):
        """The server's end of the pipe closes without a stop (what `kill -9` of the server does)."""
        from .chain import SealKey
        from .verify import verify

        key_file = os.path.join(self.directory, "seal.key")
        initial = SealKey.create(key_file)
        pipeline = self.pipeline(AUDIT_SEAL_KEY_FILE=key_file)
        for n in range(3000):
            self.say(pipeline, f"say {n}")
        pipeline._drain()  # sent to the child (no feeder thread: nothing else is)
        child = pipeline._child
        child.stdin.close()  # the server is gone: no "stop" message comes
        self.assertEqual(child.wait(15), 0)
        pipeline._closed = True  # this test's stand-in for the dead server: nothing to restart
        texts = [r["text"] for r in read_trail(self.directory) if r.get("kind") == "io"]
        self.assertEqual(texts, [f"say {n}" for n in range(3000)])
        report = verify(self.directory, initial)
        self.assertEqual(report["problems"], [])
        self.assertGreater(report["unsealed_records"], 0)  # no final seal: not a clean stop
        # The next start continues the chain, and `verify` says the writer stopped uncleanly.
        after = self.pipeline(AUDIT_SEAL_KEY_FILE=key_file)
        self.say(after, "say after")
        self.assertTrue(after.flush(30))
        after.stop(10)
        report = verify(self.directory, initial)
        self.assertEqual(report["problems"], [])
        self.assertEqual([note["kind"] for note in report["notes"]], ["crash"])
        self.assertIn("without closing the chain", report["notes"][0]["detail"])


class TestScrubStateAcrossRestart(ProcessCase):
    @needs_hypothesis
    def test_prompt_before_restart_masks_answer_after_it(self):
        @_examples(4)
        @given(secret=st.text(_SECRET_ALPHABET, min_size=8, max_size=30))
        def run(secret):
            with tempfile.TemporaryDirectory() as directory:
                self._restart_run(directory, secret)

        run()

    def _restart_run(self, directory, secret):
        pipeline = self.pipeline(AUDIT_LOG_DIR=directory).start()
        self.session.logged_in = False  # the login screen: the game's prompt arms the mask
        pipeline.submit(capture(self.session, SND, {"text": "Password:"}))
        self.assertTrue(pipeline.flush(30))
        self.assertEqual(pipeline.builder.export_state(self.session.audit_conn)["armed_by"],
                         "password_prompt")
        self.kill_child(pipeline)
        pipeline.submit(capture(self.session, RCV, {"text": secret}))  # the answer, to a new child
        self.assertTrue(pipeline.flush(30))
        pipeline.submit(capture(self.session, SND, {"text": f"You typed {secret} there."}))
        self.assertTrue(pipeline.flush(30))
        pipeline.stop(10)
        records = read_trail(directory)
        answer = [r for r in records if r.get("direction") == RCV]
        self.assertEqual([r["text"] for r in answer], [MASK])
        self.assertEqual(answer[0]["masked"], ["password_prompt"])
        for name in os.listdir(directory):  # no file of the directory holds the secret
            with open(os.path.join(directory, name), "rb") as handle:
                self.assertNotIn(secret.encode(), handle.read(), name)


class TestGameThread(ProcessCase):
    def test_game_thread_part_unchanged(self):
        """The tap's work is `Pipeline`'s own: the captured tuple is queued as is, nothing converted."""
        pipeline = self.pipeline()  # not started: nothing takes from the queue
        self.assertIs(pipeline.submit.__func__, Pipeline._submit)
        item = capture(self.session, RCV, {"text": "look"})
        pipeline.submit(item)
        self.assertIs(pipeline.queue[0], item)
        self.assertIsNone(pipeline._child)  # no child yet: nothing was sent on this thread

    def test_taps_queue_kwargs_frozen_and_the_records_are_the_same(self):
        """The service's taps hand the writer process marshal bytes (`event.frozen`): a deep copy
        the game's garbage collector never scans. What marshal refuses keeps a dict copy; a writer
        thread gets dict copies. The records are the same either way."""
        import marshal

        from . import service

        records, thing = {}, object()
        for writer in ("process", "thread"):
            directory = tempfile.mkdtemp(prefix=f"audit-frozen-{writer}-")
            self.addCleanup(shutil.rmtree, directory, True)
            with override_settings(AUDIT_CALLBACK="auditing.outputs.to_file", AUDIT_WRITER=writer,
                                   AUDIT_IN=True, AUDIT_OUT=True, AUDIT_LOG_DIR=directory,
                                   AUDIT_SEAL_KEY_FILE=os.path.join(directory, "seal.key")):
                live = service.AuditService(conf.load())  # not started: the taps only queue
            self.addCleanup(live.pipeline.stop, 5)
            options = {"type": "say"}
            live.tap_in(self.session, {"text": (["say hello"], options)})
            options["type"] = "changed after the call"  # the copy was taken at the call
            live.tap_out(self.session, {"text": "look", "thing": thing})
            first, second = live.pipeline.queue[0][-1], live.pipeline.queue[1][-1]
            if writer == "process":
                self.assertEqual(marshal.loads(first), {"text": (["say hello"], {"type": "say"})})
            else:
                self.assertEqual(first, {"text": (["say hello"], {"type": "say"})})
            self.assertIsInstance(second, dict)
            live.pipeline.start()
            self.assertTrue(live.pipeline.flush(30))
            live.pipeline.stop(10)
            records[writer] = [(r["direction"], r["text"], r.get("data")) for r in read_trail(directory)
                               if r.get("kind") == "io"]
        self.assertEqual(records["process"], records["thread"])
        self.assertEqual([text for _direction, text, _data in records["process"]], ["say hello", "look"])

    def test_queue_full_gives_up_oldest_counted(self):
        pipeline = self.pipeline(AUDIT_QUEUE_SIZE=50)
        for n in range(80):
            self.say(pipeline, f"say {n}")
        pipeline.start()
        self.assertTrue(pipeline.flush(30))
        pipeline.stop(10)
        records = read_trail(self.directory)
        texts = [r["text"] for r in records if r.get("kind") == "io"]
        self.assertEqual(texts, [f"say {n}" for n in range(30, 80)])
        self.assertEqual(sum(r["lost"] for r in records if r.get("kind") == "loss"), 30)
        self.assertEqual(pipeline.stats()["delivered"], 50)

    def test_custom_callback_stays_in_process(self):
        # A plain function, and a custom object with its own sink (`make_sink`): both in process.
        for callback in ("auditing.test_writerproc.keep", "auditing.test_writerproc.own_sink"):
            with override_settings(AUDIT_CALLBACK=callback, AUDIT_WRITER="process",
                                   AUDIT_LOG_DIR=self.directory):
                config = conf.load()
            self.assertIs(type(Pipeline(config)), Pipeline, callback)

    def test_bad_setting_refused(self):
        with override_settings(AUDIT_WRITER="fork"):
            with self.assertRaisesRegex(conf.AuditConfigError, "AUDIT_WRITER"):
                conf.load()


class _Recorder:
    """A pipeline observer (like `watch.Watchers`): it watches while it holds anything."""

    def __init__(self):
        self.events, self.batches = [], 0

    def __bool__(self):
        return True

    def observe(self, event):
        self.events.append(event)

    def batch_done(self):
        self.batches += 1


class TestFeedsBack(ProcessCase):
    def test_watch_observers_get_scrubbed_events(self):
        pipeline = self.pipeline()
        recorder = _Recorder()
        pipeline.observers.append(recorder)
        pipeline.start()
        self.session.logged_in = False
        pipeline.submit(capture(self.session, SND, {"text": "Password:"}))
        pipeline.submit(capture(self.session, RCV, {"text": "Wat3r-melon!"}))
        self.assertTrue(pipeline.flush(30))
        self.assertEqual([e["text"] for e in recorder.events], ["Password:", MASK])
        self.assertGreaterEqual(recorder.batches, 1)

    def test_capture_policy_changes_reach_the_child(self):
        pipeline = self.pipeline(AUDIT_CAPTURE="lifecycle").start()
        self.say(pipeline, "say before")
        self.assertTrue(pipeline.flush(30))
        pipeline.policy.flag(self.account.key, True)  # `audit/flag`: this account in full
        self.session.logged_in = True
        self.session.account = self.account
        self.say(pipeline, "say after")
        self.assertTrue(pipeline.flush(30))
        pipeline.stop(10)
        texts = [r["text"] for r in read_trail(self.directory) if r.get("kind") == "io"]
        self.assertEqual(texts, ["say after"])

    def test_unmarshallable_kwargs_become_repr_counted(self):
        pipeline = self.pipeline().start()
        pipeline.submit(capture(self.session, RCV, {"text": "look", "thing": object()}))
        self.assertTrue(pipeline.flush(30))
        pipeline.stop(10)
        self.assertEqual(pipeline.stats()["unmarshallable"], 1)
        records = [r for r in read_trail(self.directory) if r.get("kind") == "io"]
        self.assertEqual(records[0]["text"], "look")
        self.assertIn("object object at", records[0]["data"]["thing"])

    def test_stop_spills_when_child_cannot_deliver_in_time(self):
        """A stop with no time left: the child spills what it holds; the next start delivers it."""
        pipeline = self.pipeline(AUDIT_FLUSH_INTERVAL=30)
        pipeline.start()
        for n in range(5000):
            self.say(pipeline, f"say {n}")
        pipeline.stop(0)
        spilled = pipeline.stats()["spilled"]
        self.assertEqual(pipeline.stats()["delivered"] + spilled, 5000)
        following = self.pipeline().start()
        following.stop(10)
        self.assertEqual(following.stats()["from_spill"], spilled)
        texts = [r["text"] for r in read_trail(self.directory) if r.get("kind") == "io"]
        self.assertEqual(sorted(texts), sorted(f"say {n}" for n in range(5000)))


    def test_child_that_does_not_answer_at_stop_is_killed_and_spilled_here(self):
        """A stopped (SIGSTOP) child: the server kills it and spills what it held; nothing lost."""
        pipeline = self.pipeline(AUDIT_FLUSH_INTERVAL=0.05).start()
        for n in range(300):
            self.say(pipeline, f"say {n}")
        self.assertTrue(pipeline.flush(30))
        child = pipeline._child
        os.kill(child.pid, signal.SIGSTOP)
        self.addCleanup(lambda: child.poll() is None and os.kill(child.pid, signal.SIGKILL))
        for n in range(300, 700):
            self.say(pipeline, f"say {n}")
        with mock.patch("auditing.procdelivery._STOP_GRACE", 0.5):
            pipeline.stop(0.2)
        self.assertIsNotNone(child.poll(), "the child was not killed")
        self.assertEqual(pipeline.stats()["spilled"], 400)
        after_stop = capture(self.session, RCV, {"text": (["say 700"], {})})
        pipeline.submit(after_stop)  # a record after the stop (disconnects at exit): written here
        following = self.pipeline().start()
        following.stop(10)
        texts = [r["text"] for r in read_trail(self.directory) if r.get("kind") == "io"]
        self.assertEqual(sorted(texts), sorted(f"say {n}" for n in range(701)))


_PROCESS_SETTINGS = test_prompts.SETTINGS_EXTRA + '\nAUDIT_WRITER = "process"\n'


@requires_servers
class ProcessGameTest(test_prompts.PromptScrubEndToEndTest):
    """The prompts end-to-end game (menu login, get_input, echo off, a password prompt answered
    after `evennia reload`) with the built-in output in a child process: every check holds."""

    @classmethod
    def setUpClass(cls):
        with mock.patch.object(test_prompts, "SETTINGS_EXTRA", _PROCESS_SETTINGS):
            super().setUpClass()

    def test_writer_is_a_child_process(self):
        """One writer process per server process (the first start and the reload), none died."""
        with open(self.game.server_log, encoding="utf-8", errors="replace") as handle:
            log = handle.read()
        started = re.findall(r"audit writer process (\d+) started", log)
        self.assertGreaterEqual(len(started), 2, "no writer process before and after the reload")
        self.assertEqual(len(set(started)), len(started))
        self.assertNotIn("audit writer process ended", log)
