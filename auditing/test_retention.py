"""
Retention (auditing.retention) with a fake clock: a real FileSink under a ChainingSink writes day after
day; the writer compresses and deletes the right days at each day rollover and at start, says so in
`retention` records, `trail.Reader` (the CLI's reader) still reads every remaining record, and
`evennia-audit verify` reports the removed start as retention, not tampering.
"""

import datetime
import os

import orjson

from auditing.chain import ChainingSink
from auditing.filesink import FileSink
from auditing.retention import Retention
from auditing.test_chain import DAY, START, TrailTest, given, needs_hypothesis
from auditing.trail import Reader
from auditing.verify import verify

try:
    from hypothesis import HealthCheck, settings, strategies as st
except ImportError:
    pass


def day_name(offset):
    return datetime.datetime.fromtimestamp(START + offset * DAY, datetime.timezone.utc).date().isoformat()


class RetentionTest(TrailTest):
    def run_days(self, days, retention, compress, per_day=4, close_each_day=False):
        """Write `per_day` records on each of `days` days through one sink (or a new one each day)."""
        rules = Retention(self.dir, retention, compress)
        sink = None
        for day in range(days):
            self.clock.now = START + day * DAY + 3600
            if sink is None:
                sink = self.sink(on_new_day=rules)
            self.write(sink, per_day, step=60.0, batch=2)
            if close_each_day:
                sink.close()
                sink = None
        if sink is not None:
            sink.close()
        return rules

    def retention_records(self):
        return [record for record, _line in Reader(self.dir) if record.get("kind") == "retention"]

    def io_records(self):
        return [record for record, _line in Reader(self.dir) if record.get("kind") == "io"]

    def check_layout(self, days, retention, compress):
        """Files on disk are exactly what the rules say for today = the last day."""
        expected = set()
        for day in range(days):
            age = days - 1 - day
            if retention and age > retention:
                continue
            gz = ".gz" if compress and age > compress else ""
            expected.add(f"audit_{day_name(day)}.log{gz}")
        self.assertEqual(set(self.files()), expected)
        return expected


class TestRetention(RetentionTest):
    def test_compress_and_delete_the_right_days_and_the_cli_still_reads_them(self):
        self.keygen()
        self.run_days(days=10, retention=5, compress=2)
        self.check_layout(10, 5, 2)
        kept_days = {day_name(day) for day in range(10 - 1 - 5, 10)}
        self.assertEqual({r["time"][:10] for r in self.io_records()}, kept_days)
        self.assertEqual(len(self.io_records()), 4 * len(kept_days))
        actions = self.retention_records()
        deleted = [name for r in actions if r["action"] == "delete" for name in r["files"]]
        self.assertEqual(deleted, [f"audit_{day_name(day)}.log.gz" for day in range(0, 4)])
        self.assertTrue(all(r["time"][:10] in kept_days or r["action"] == "compress" for r in actions))
        for name in self.files():
            self.assertEqual(os.stat(self.path(name)).st_mode & 0o777, 0o600)
        report = verify(self.dir, self.key)
        self.assertTrue(report["intact"], report["problems"])
        self.assertIn("retention", {n["kind"] for n in report["notes"]})
        start = [n for n in report["notes"] if "removed by retention" in n["detail"]]
        self.assertEqual(len(start), 1)

    def test_retention_runs_at_start(self):
        self.run_days(days=3, retention=0, compress=0, close_each_day=True)
        self.assertEqual(len(self.files()), 3)
        self.clock.now = START + 9 * DAY
        sink = self.sink(on_new_day=Retention(self.dir, retention_days=8, compress_after_days=1))
        sink.on_idle()  # the writer's first tick after a start, before any event
        sink.close()
        self.assertEqual(set(self.files()), {f"audit_{day_name(day)}.log.gz" for day in (1, 2)}
                         | {f"audit_{day_name(9)}.log"})
        self.assertEqual([r["action"] for r in self.retention_records()], ["delete", "compress"])

    def test_default_keeps_everything(self):
        rules = self.run_days(days=6, retention=0, compress=0)
        self.assertFalse(rules)
        self.assertEqual(len(self.files()), 6)
        self.assertEqual(self.retention_records(), [])

    def test_without_chain_the_records_are_still_written(self):
        rules = Retention(self.dir, 2, 1)
        sink = ChainingSink(FileSink(self.dir, clock=self.clock), None, chain=False, trail_dir=self.dir,
                            on_new_day=rules, clock=self.clock)
        for day in range(5):
            self.clock.now = START + day * DAY
            self.write(sink, 2)
        sink.close()
        self.check_layout(5, 2, 1)
        self.assertFalse(any("chain_seq" in record for record, _ in Reader(self.dir)))

    @needs_hypothesis
    def test_any_rules_leave_the_right_layout(self):
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
        @given(days=st.integers(1, 9), retention=st.integers(0, 6), compress=st.integers(0, 6))
        def check(days, retention, compress):
            for name in os.listdir(self.dir) if os.path.isdir(self.dir) else ():
                os.unlink(self.path(name))
            self.run_days(days, retention, compress, per_day=2)
            kept = self.check_layout(days, retention, compress)
            self.assertEqual(len(self.io_records()), 2 * len(kept))
            line_count = sum(1 for _ in Reader(self.dir))
            self.assertGreaterEqual(line_count, len(self.io_records()))
            report = verify(self.dir, None)
            self.assertTrue(report["intact"], orjson.dumps(report["problems"]))

        check()
