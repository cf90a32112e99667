"""
End-to-end delivery tests: a real Evennia game (auditing.testing.game), real telnet clients and, for
syslog, a real rsyslogd (auditing.testing.rsyslog); everything on 127.0.0.1.

Run with `make test-py311 TESTS=auditing.test_delivery` (about three minutes per interpreter).

One game serves every test: each test writes the `AUDIT_*` settings it needs (its own AUDIT_LOG_DIR,
so it reads only its own trail) and reloads or starts the game. The class always stops the game.

- test_1: 20 telnet clients x 200 `say` commands with an `evennia reload` half-way: every executed
  command (the game echoed it) has exactly one RCV record; conn ids survive the reload; seq gapless.
- test_2: queued events are flushed by `evennia reload`, `evennia stop` and `evennia reboot` while
  traffic flows (AUDIT_FLUSH_INTERVAL = 5 s, so the queue is never empty when they hit).
- test_3: kill -9 of the server loses at most the last flush interval (0.25 s).
- test_4: the audit directory stops being one (for root too: the path becomes a symlink to a regular
  file) while traffic flows: the game keeps answering, one error line with the cause; with the
  default queue nothing is lost; with AUDIT_QUEUE_SIZE = 50 a burst overflows the queue and the
  outage the retry buffer, and the loss records count exactly the records missing (gaps in seq).
- test_5: to_syslog over TCP to rsyslogd, which is restarted twice while traffic flows: delivered +
  counted lost == produced, exactly. test_6: UDP and the unix socket deliver through the pipeline.

Environment knob (development only): AUDIT_DELIVERY_KEEP=1 keeps the temp directory (printed).
"""

import glob
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import unittest

from auditing.testing.clients import ClientTimeout, TelnetClient, log_in
from auditing.testing.game import GameServer
from auditing.testing.rsyslog import RsyslogServer
from auditing.testing import requires_servers

PASSWORD = "Deliv3ry-pw"
# Fast password hashing: 20 accounts are created and logged in at once.
BASE_SETTINGS = 'PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]'
FAILED_LINE = "audit output auditing.outputs.to_file failed:"
SYSLOG_FAILED_LINE = "audit output auditing.outputs.to_syslog failed:"


def log(message):
    sys.stderr.write(f"\n[delivery] {message}")
    sys.stderr.flush()


# ---------------------------------------------------------------------- trail helpers


def read_records(directory):
    """Every record of the audit_*.log files in `directory`, in write order (torn line skipped)."""
    paths = sorted(glob.glob(os.path.join(directory, "audit_*.log")),
                   key=lambda p: (os.path.getmtime(p), p))
    records = []
    for path in paths:
        with open(path, "rb") as handle:
            data = handle.read()
        lines = data.split(b"\n")
        if not data.endswith(b"\n"):
            lines = lines[:-1]
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as error:
                    raise AssertionError(f"{path}:{number}: not JSON ({error}): {line[:200]!r}")
    return records


def parse_lines(lines):
    """Syslog payloads -> records (non-JSON payloads are returned as {"unparsed": text})."""
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"unparsed": line})
    return out


def by_conn(records):
    """{conn: [record, ...]} in trail order, for records that carry conn and seq."""
    out = {}
    for record in records:
        if "conn" in record and "seq" in record:
            out.setdefault(record["conn"], []).append(record)
    return out


def seq_problems(conn, records):
    """Human-readable gaps, duplicates and order breaks of one connection's seq numbers."""
    seqs = [r["seq"] for r in records]
    problems = []
    duplicates = []
    if len(set(seqs)) != len(seqs):
        duplicates = sorted({s for s in seqs if seqs.count(s) > 1})
    if duplicates:
        problems.append(f"conn {conn}: duplicate seq {duplicates[:20]}")
    present = set(seqs)
    missing = sorted(set(range(1, max(seqs) + 1)) - present)
    if missing:
        problems.append(f"conn {conn}: {len(missing)} seq missing: {ranges(missing)}")
    breaks = [(a, b) for a, b in zip(seqs, seqs[1:]) if b <= a]
    if breaks:
        problems.append(f"conn {conn}: out of order {breaks[:10]}")
    return problems


def missing_seqs(records):
    """seq numbers absent between 1 and the highest one seen, for one connection's records."""
    seqs = {r["seq"] for r in records}
    return sorted(set(range(1, max(seqs) + 1)) - seqs)


def spans(numbers):
    """[1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    out = []
    for n in sorted(numbers):
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def ranges(numbers):
    """[1, 2, 3, 7] -> '1-3, 7'."""
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans(numbers))


def epoch(iso):
    """'2026-11-27T07:40:12.123456Z' -> epoch seconds."""
    import calendar

    whole, _, fraction = iso.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds + float("0." + (fraction or "0"))


# ---------------------------------------------------------------------- players


class Player:
    """One telnet connection playing one account; remembers what it said and what was echoed."""

    def __init__(self, game, name, tag):
        self.name = name
        self.tag = tag  # said texts are f"{tag}-{n}"
        self.client = TelnetClient("127.0.0.1", game.telnet_port, timeout=10)
        self.echo_re = re.compile(r'You say, "' + re.escape(tag) + r'-(\d+)"')
        self.sent = []  # n, in order
        self.next = 0  # the n of the next command
        self.sent_at = {}  # n -> epoch when sent
        self.echoed = {}  # n -> epoch when the echo arrived
        self.closed = False

    def text(self, n):
        return f"say {self.tag}-{n}"

    def login(self, create=True, timeout=30):
        client = log_in(self.client, self.name, PASSWORD, create, timeout=timeout)
        client.read_until(re.compile(r"You become \S+"), timeout=timeout)
        client.read_available(0.2)

    def say(self, n, timeout):
        """Send `say TAG-n`; True once its echo arrived (False: timed out or connection closed)."""
        if self.closed:
            return False
        self.sent.append(n)
        self.sent_at[n] = time.time()
        try:
            self.client.send_line(self.text(n))
        except OSError:
            self.closed = True
            return False
        return self.wait_echo(n, timeout)

    def wait_echo(self, n, timeout):
        deadline = time.monotonic() + timeout
        while n not in self.echoed:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                return False
            try:
                chunk = self.client.read_until(self.echo_re, timeout=min(remaining, 0.5))
            except ClientTimeout:
                continue
            except (ConnectionError, OSError):
                self.closed = True
                return False
            for match in self.echo_re.finditer(chunk):
                self.echoed.setdefault(int(match.group(1)), time.time())
        return True

    def drain(self, wait=0.5):
        """Collect echoes that arrive late."""
        if self.closed:
            return
        try:
            text = self.client.read_available(wait)
        except OSError:
            return
        for match in self.echo_re.finditer(text):
            self.echoed.setdefault(int(match.group(1)), time.time())

    def close(self, quit=False):
        if quit and not self.closed:
            try:
                self.client.send_line("quit")
                self.client.read_available(0.3)
            except OSError:
                pass
        self.closed = True
        self.client.close()


def run_threads(targets, timeout):
    """Run each callable in its own thread; join them all within `timeout` seconds in total."""
    errors = []

    def wrap(target):
        def run():
            try:
                target()
            except BaseException as error:  # noqa: BLE001 - reported by the caller
                errors.append(error)
        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = sum(thread.is_alive() for thread in threads)
    if errors:
        raise AssertionError(f"client thread failed: {errors[0]!r}") from errors[0]
    if alive:
        raise AssertionError(f"{alive} client threads still running after {timeout:.0f}s")


def talk(players, count, timeout=2.0, pace=0.0, stop=None):
    """Callables: each player says its next `count` numbers, waiting for each echo (<= timeout)."""

    def loop(player):
        def run():
            for _ in range(count):
                if player.closed or (stop is not None and stop.is_set()):
                    return
                player.next += 1
                player.say(player.next - 1, timeout)
                if pace:
                    time.sleep(pace)
        return run

    return [loop(player) for player in players]


# ---------------------------------------------------------------------- the tests


@requires_servers
class DeliveryTest(unittest.TestCase):
    """One game for all tests (each test configures it); stopped in the class cleanup."""

    game = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.t0 = time.monotonic()
        cls.tmp = tempfile.mkdtemp(prefix="audit-delivery-")
        cls.addClassCleanup(cls._cleanup)
        cls.game = GameServer(cls.tmp, name="deliverygame", stop_at_exit=True)
        cls.game.create()
        cls.game.migrate()
        cls.started = False
        cls.accounts = set()

    @classmethod
    def _cleanup(cls):
        if cls.game is not None:
            cls.game.stop()
        log(f"class total {time.monotonic() - cls.t0:.1f}s; game timings "
            + ", ".join(f"{k} {v:.1f}s" for k, v in cls.game.timings.items()) + "\n")
        if os.environ.get("AUDIT_DELIVERY_KEEP"):
            log(f"kept {cls.tmp}\n")
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.players = []

    def tearDown(self):
        for player in self.players:
            player.close()

    # ------------------------------------------------------------------ helpers
    def configure(self, name, **audit):
        """Write the settings (own AUDIT_LOG_DIR `name`) and (re)start the game; the audit dir."""
        game = self.game
        directory = os.path.join(self.tmp, name)
        audit.setdefault("AUDIT_LOG_DIR", directory)
        lines = [BASE_SETTINGS] + [f"{key} = {value!r}" for key, value in audit.items()]
        game.settings_extra = "\n".join(lines)
        game._write_settings()  # (harness has no public "rewrite settings" method)
        if not self.started:
            game.start()
            type(self).started = True
        elif game.is_running():
            game.reload()
        else:
            game.start()
        if "AUDIT_CALLBACK" not in audit:
            # The harness's readiness probe connected: its records show the settings are live.
            wait = audit.get("AUDIT_FLUSH_INTERVAL", 0.25) + 5.0
            pid = game.pids().get("server")
            records = self.wait_records(audit["AUDIT_LOG_DIR"],
                                        lambda recs: any(r.get("pid") == pid for r in recs), wait)
            self.assertTrue(any(r.get("pid") == pid for r in records), game.diagnostics(
                f"server {pid} wrote nothing to {audit['AUDIT_LOG_DIR']} in {wait:.1f}s"))
        return audit["AUDIT_LOG_DIR"]

    def join(self, prefix, count, tag=None, timeout=60):
        """`count` logged-in players (accounts created on first use), logging in side by side."""
        tag = tag or prefix
        players = [Player(self.game, f"{prefix}{i}", f"{tag}{i}") for i in range(count)]
        self.players += players
        run_threads([lambda p=p: p.login(create=p.name not in self.accounts) for p in players],
                    timeout)
        self.accounts.update(p.name for p in players)
        return players

    def server_log_offset(self):
        try:
            return os.path.getsize(self.game.server_log)
        except OSError:
            return 0

    def server_log_since(self, offset):
        with open(self.game.server_log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() < offset:
                offset = 0
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")

    def wait_records(self, directory, done, timeout=20.0):
        """Read the trail until `done(records)` or `timeout`; the last records read."""
        deadline = time.monotonic() + timeout
        records = read_records(directory)
        while not done(records) and time.monotonic() < deadline:
            time.sleep(0.25)
            records = read_records(directory)
        return records

    _say_index = (None, None)
    _SAY_RE = re.compile(r"say (\S+)-(\d+)$")

    def rcv_of(self, records, player):
        """{n: [record, ...]} of `player`'s say commands in the trail."""
        key, index = self._say_index
        if key is not records:  # one pass over the trail per read, not one per player
            index = {}
            for record in records:
                if record.get("kind") == "io" and record.get("direction") == "RCV":
                    match = self._SAY_RE.match(record.get("text", ""))
                    if match:
                        index.setdefault(match.group(1), {}).setdefault(
                            int(match.group(2)), []).append(record)
            self._say_index = (records, index)
        return index.get(player.tag, {})

    def account(self, records, players):
        """(executed, recorded, lost list, duplicated list, unconfirmed list) over `players`."""
        executed = recorded = 0
        lost, duplicated, unconfirmed = [], [], []
        for player in players:
            found = self.rcv_of(records, player)
            for n in player.echoed:
                executed += 1
                hits = len(found.get(n, []))
                if hits == 0:
                    lost.append(player.text(n))
                elif hits > 1:
                    duplicated.append((player.text(n), hits))
            for n, hits in found.items():
                recorded += 1
                if len(hits) > 1 and n not in player.echoed:
                    duplicated.append((player.text(n), len(hits)))
                if n not in player.echoed:
                    unconfirmed.append(player.text(n))
        return executed, recorded, lost, duplicated, unconfirmed

    def conn_of(self, records, player):
        conns = {r["conn"] for hits in self.rcv_of(records, player).values() for r in hits}
        self.assertEqual(len(conns), 1, f"{player.name}: RCV records on conns {sorted(conns)}")
        return conns.pop()

    # ------------------------------------------------------------------ 1: load + reload
    def test_1_load_20x200_with_reload(self):
        clients, commands = 20, 200
        directory = self.configure("load")
        t_join = time.monotonic()
        players = self.join("ld", clients)
        t_start = time.monotonic()
        stop = threading.Event()
        threads = talk(players, commands, timeout=2.0, stop=stop)
        reload_info = {}

        def reloader():
            deadline = time.monotonic() + 120
            while sum(len(p.sent) for p in players) < clients * commands // 2:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
            reload_info["at_sent"] = sum(len(p.sent) for p in players)
            started = time.monotonic()
            self.game.reload()
            reload_info["took"] = time.monotonic() - started

        try:
            run_threads(threads + [reloader], timeout=240)
        finally:
            stop.set()
        for player in players:
            player.drain(0.5)
        elapsed = time.monotonic() - t_start
        self.assertIn("took", reload_info, "the reload did not happen")
        expected = {(p.tag, n) for p in players for n in p.echoed}
        records = self.wait_records(
            directory,
            lambda recs: sum(1 for p in players for n in self.rcv_of(recs, p) if n in p.echoed)
            >= len(expected),
        )
        sent = sum(len(p.sent) for p in players)
        executed, recorded, lost, duplicated, unconfirmed = self.account(records, players)
        log(f"20x200 + reload: {sent} commands sent, {executed} executed (echoed), {recorded} "
            f"recorded, {len(lost)} lost, {len(duplicated)} duplicated, {len(unconfirmed)} "
            f"recorded without echo; reload after {reload_info['at_sent']} sent took "
            f"{reload_info['took']:.1f}s; {clients} logins {t_start - t_join:.1f}s, traffic "
            f"{elapsed:.1f}s; {len(records)} records")
        self.assertFalse(lost, f"executed commands without RCV record: {lost[:20]}")
        self.assertFalse(duplicated, f"commands recorded more than once: {duplicated[:20]}")
        self.assertGreater(executed, clients * commands * 0.9, "too few commands executed")

        # one conn per client, unchanged across the reload; records from two server processes
        conns = by_conn(records)
        problems = []
        for player in players:
            conn = self.conn_of(records, player)
            mine = conns[conn]
            pids = {r.get("pid") for r in mine}
            if len(pids) < 2:
                problems.append(f"{player.name}: conn {conn} records all from pid(s) {pids}")
            problems += seq_problems(conn, mine)
            numbers = [int(r["text"].rsplit("-", 1)[1]) for r in mine
                       if r.get("direction") == "RCV" and r.get("text", "").startswith("say ")]
            if numbers != sorted(numbers):
                problems.append(f"{player.name}: RCV records out of order")
        self.assertFalse(problems, "\n".join(problems))

    # ------------------------------------------------------------------ 2: clean stop/reload/reboot
    def _traffic_then(self, players, action, settle=1.5, timeout=60):
        """Players talk (lock-step) while `action()` runs after `settle` s; returns action time."""
        stop = threading.Event()
        when = {}

        def act():
            time.sleep(settle)
            when["at"] = time.time()
            try:
                action()
            finally:
                time.sleep(0.5)
                stop.set()

        run_threads(talk(players, 10_000, timeout=1.5, stop=stop) + [act], timeout)
        for player in players:
            player.drain(0.3)
        return when["at"]

    def _assert_all_echoed_recorded(self, directory, players, label):
        records = self.wait_records(
            directory,
            lambda recs: not self.account(recs, players)[2], timeout=10)
        executed, recorded, lost, duplicated, unconfirmed = self.account(records, players)
        log(f"{label}: {sum(len(p.sent) for p in players)} sent, {executed} executed, {recorded} "
            f"recorded, {len(lost)} lost, {len(duplicated)} duplicated")
        self.assertGreater(executed, 0, f"{label}: no traffic")
        self.assertFalse(lost, f"{label}: executed commands without RCV record: {lost[:20]}")
        self.assertFalse(duplicated, f"{label}: recorded more than once: {duplicated[:20]}")
        return records

    def _assert_disconnects(self, records, players, label):
        kinds = {}
        for record in records:
            kinds.setdefault(record.get("conn"), []).append(record.get("kind"))
        missing = []
        for player in players:
            conn = self.conn_of(records, player)
            if "disconnect" not in kinds.get(conn, []):
                last = kinds.get(conn, [])[-3:]
                missing.append(f"{player.name} (conn {conn}; last kinds {last})")
        self.assertFalse(missing, f"{label}: no disconnect record for {missing}")

    def test_2_flush_on_reload_stop_reboot(self):
        # A long interval: whatever the game produced since the last flush is still queued when
        # the server goes down, so only the shutdown flush can save it.
        directory = self.configure("stop", AUDIT_FLUSH_INTERVAL=5.0)
        game = self.game

        players = self.join("st", 3)
        with self.subTest("reload"):
            self._traffic_then(players, game.reload)
            records = self._assert_all_echoed_recorded(directory, players, "reload")
            for player in players:
                conns = {r["conn"] for hits in self.rcv_of(records, player).values() for r in hits}
                self.assertEqual(len(conns), 1, f"{player.name}: conn changed in reload: {conns}")

        stopped = self._traffic_then(players, game.stop)
        self.assertFalse(game.is_running())
        with self.subTest("stop"):
            records = self._assert_all_echoed_recorded(directory, players, "stop")
            self.assertTrue(
                any(p.echoed and max(p.echoed.values()) > stopped - 1 for p in players),
                "no echo in the last second before the stop: traffic was not flowing")
        with self.subTest("stop: disconnect records"):
            self._assert_disconnects(records, players, "stop")

        # `evennia reboot` = stop + start (the harness has no method for it)
        game.start()
        players = self.join("st", 3, tag="sr")  # the same accounts, new connections
        offset = self.server_log_offset()

        def reboot():
            game._run(["reboot"], timeout=90)
            game.wait_ready(since=offset)

        self._traffic_then(players, reboot)
        with self.subTest("reboot"):
            records = self._assert_all_echoed_recorded(directory, players, "reboot")
        with self.subTest("reboot: disconnect records"):
            self._assert_disconnects(records, players, "reboot")

    # ------------------------------------------------------------------ 3: kill -9
    def test_3_kill_9_loses_at_most_the_flush_interval(self):
        interval = 0.25
        directory = self.configure("kill", AUDIT_FLUSH_INTERVAL=interval)
        game = self.game
        players = self.join("kl", 2)
        server_pid = game.pids()["server"]

        def kill():
            os.kill(server_pid, signal.SIGKILL)

        try:
            killed = self._traffic_then(players, kill, settle=2.0)
        finally:
            for player in players:
                player.close()
            game.stop()  # the portal (and the server, should the portal have restarted it)
        records = read_records(directory)
        late, early = [], []
        for player in players:
            found = self.rcv_of(records, player)
            for n, echoed in player.echoed.items():
                if n not in found:
                    (late if echoed > killed - 2 * interval else early).append(
                        (player.text(n), round(killed - player.sent_at[n], 3)))
        executed = sum(len(p.echoed) for p in players)
        oldest = max([age for _text, age in late + early], default=0.0)
        log(f"kill -9: {executed} executed, {len(late) + len(early)} without record (oldest sent "
            f"{oldest:.3f}s before the kill; AUDIT_FLUSH_INTERVAL={interval})")
        self.assertGreater(executed, 20)
        last_echo = max(max(p.echoed.values()) for p in players)
        self.assertGreater(last_echo, killed - 0.5, "traffic was not flowing at the kill")
        if early:
            sys.stderr.write(game.diagnostics(
                f"kill -9 diagnostics: killed server {server_pid}; {len(records)} records in "
                f"{directory}, pids {sorted({r.get('pid') for r in records})}, last at "
                f"{records[-1].get('time') if records else None}, kill at {killed:.3f}") + "\n")
        self.assertFalse(early, f"echoed more than {2 * interval}s before kill -9 but not in the "
                                f"trail: {early[:20]}")

    # ------------------------------------------------------------------ 4: sink failure
    def _sink_failure(self, name, burst=0, **audit):
        """Break AUDIT_LOG_DIR (a symlink, pointed at a regular file) for 2 s while a player talks.

        With `burst`, the player first sends that many commands at once (no waiting for echoes).
        """
        real = os.path.join(self.tmp, name + "-real")
        link = os.path.join(self.tmp, name)
        blocker = os.path.join(self.tmp, name + "-not-a-dir")
        os.makedirs(real)
        with open(blocker, "w") as handle:
            handle.write("a regular file\n")
        os.symlink(real, link)
        self.configure(name, AUDIT_LOG_DIR=link, **audit)
        (player,) = self.join(name, 1)
        window = {"burst_offset": self.server_log_offset()}
        if burst:
            first = player.next
            for n in range(first, first + burst):
                player.sent.append(n)
                player.client.send_line(player.text(n))
            player.next += burst
            for n in range(first, first + burst):
                self.assertTrue(player.wait_echo(n, 10), f"no echo for {player.text(n)}")
            time.sleep(0.5)

        def swap(target):
            os.symlink(target, link + ".new")
            os.replace(link + ".new", link)  # atomic: the writer never sees a missing path

        def outage():
            window["offset"] = self.server_log_offset()
            window["start"] = time.time()
            swap(blocker)
            time.sleep(2.0)
            swap(real)
            window["end"] = time.time()
            time.sleep(1.0)

        answered = {}
        stop = threading.Event()

        def act():
            try:
                time.sleep(1.0)
                outage()
            finally:
                stop.set()

        run_threads(talk([player], 10_000, timeout=3.0, pace=0.02, stop=stop) + [act], 60)
        player.drain(0.3)
        answered["sent"], answered["echoed"] = len(player.sent), len(player.echoed)
        # the game kept answering throughout
        self.assertEqual(answered["echoed"], answered["sent"],
                         f"the game stopped answering: {answered}")
        during = [n for n, at in player.echoed.items() if window["start"] < at < window["end"]]
        self.assertGreater(len(during), 20, "too few commands answered during the outage")
        return real, player, window

    def _failure_log(self, window, expected_lines=1):
        text = self.server_log_since(window["offset"])
        failed = [line for line in text.splitlines() if FAILED_LINE in line]
        self.assertEqual(len(failed), expected_lines, f"'failed' lines in server.log: {failed}")
        self.assertRegex(failed[0], r"cannot write .*audit_\d{4}-\d\d-\d\d\.log: ", failed[0])
        self.assertTrue(any("works again" in line for line in text.splitlines()),
                        "no 'works again' line in server.log")
        return failed[0], text

    def test_4a_sink_failure_nothing_lost_with_retry_buffer(self):
        real, player, window = self._sink_failure("sinkfail")
        records = self.wait_records(real, lambda recs: all(n in self.rcv_of(recs, player)
                                                           for n in player.echoed))
        failed, _text = self._failure_log(window)
        executed, recorded, lost, duplicated, _unconfirmed = self.account(records, [player])
        conn = self.conn_of(records, player)
        problems = seq_problems(conn, by_conn(records)[conn])
        losses = [r for r in records if r.get("kind") == "loss"]
        log(f"sink failure (default queue): {executed} executed, {recorded} recorded, {len(lost)} "
            f"lost, {len(losses)} loss records; log: {failed.split('auditing: ', 1)[-1][:160]}")
        self.assertFalse(lost, f"lost with a retry buffer of 100000: {lost[:20]}")
        self.assertFalse(duplicated, duplicated[:20])
        self.assertFalse(problems, "\n".join(problems))
        self.assertFalse(losses, losses)

    def test_4b_queue_full_and_sink_failure_loss_records(self):
        # A burst of 60 commands overflows a 50-event queue (sink healthy), then the outage
        # overflows the 50-record retry buffer: both are counted, exactly, in loss records.
        real, player, window = self._sink_failure("sinkloss", burst=60, AUDIT_QUEUE_SIZE=50)
        records = self.wait_records(real, lambda recs: any(r.get("kind") == "loss" for r in recs)
                                    and max(self.rcv_of(recs, player) or [-1]) == player.sent[-1])
        failed, text = self._failure_log(window)
        losses = [r for r in records if r.get("kind") == "loss"]
        conns = by_conn(records)
        conn = self.conn_of(records, player)
        duplicates = [c for c, recs in conns.items() if len({r["seq"] for r in recs}) != len(recs)]
        self.assertFalse(duplicates, f"duplicated seq on conns {duplicates}")
        # every gap in a connection's seq numbers, with the times of the records around it
        gaps = []
        for c, recs in conns.items():
            times = {r["seq"]: epoch(r["time"]) for r in recs}
            for start, end in spans(missing_seqs(recs)):
                before = times.get(start - 1, 0.0)
                after = times.get(end + 1, float("inf"))
                gaps.append({"conn": c, "seqs": (start, end), "size": end - start + 1,
                             "before": before, "after": after, "lost": 0})
        unmatched = []
        for record in losses:
            first, last = epoch(record["first_time"]), epoch(record["last_time"])
            inside = [g for g in gaps if g["before"] - 1e-6 <= first and last <= g["after"] + 1e-6]
            if len(inside) == 1:
                inside[0]["lost"] += record["lost"]
            else:
                unmatched.append((record, len(inside)))
        log("queue full + sink failure (AUDIT_QUEUE_SIZE=50): "
            f"{len(player.sent)} commands; gaps {[(g['conn'][-4:], g['seqs']) for g in gaps]}; "
            f"loss records {[(r.get('lost'), (r.get('cause') or '')[:40]) for r in losses]}")
        total_lost = sum(r.get("lost", 0) for r in losses)
        total_missing = sum(g["size"] for g in gaps)
        self.assertEqual(total_lost, total_missing,
                         f"loss records count {total_lost}, the trail misses {total_missing}")
        self.assertFalse(unmatched, f"loss records not within exactly one gap: {unmatched}")
        self.assertFalse([g for g in gaps if g["lost"] != g["size"]],
                         f"gaps not counted exactly by the loss records within them: {gaps}")
        causes = [r.get("cause") or "" for r in losses]
        self.assertTrue(any(c.startswith("queue full (AUDIT_QUEUE_SIZE=50)") for c in causes),
                        f"no queue-full loss record: {causes}")
        self.assertEqual(sum("cannot write" in c for c in causes), 1, causes)
        # the sink was healthy apart from the one outage: nothing else may be given up
        self.assertFalse([r for r in losses if not r.get("cause", "").startswith(
            ("queue full", "cannot write"))], f"loss records with another cause: {losses}")
        self.assertTrue(any(g["conn"] == conn and g["before"] < window["start"] < g["after"]
                            for g in gaps), "the outage lost nothing: the buffer did not overflow")
        burst_log = self.server_log_since(window["burst_offset"])
        self.assertEqual(burst_log.count("audit queue full (AUDIT_QUEUE_SIZE=50)"), 1)
        # a few lines per episode (what went wrong, recovery, the count), not one per loss record
        said = [line for line in burst_log.splitlines() if "auditing:" in line]
        self.assertLessEqual(len(said), 6, said)

    # ------------------------------------------------------------------ 5, 6: syslog
    def _rsyslog(self):
        workdir = tempfile.mkdtemp(prefix="auddl")  # short: it holds a unix socket
        server = RsyslogServer(workdir)
        server.start()
        self.addCleanup(shutil.rmtree, workdir, True)
        self.addCleanup(server.stop)
        return server

    def _syslog_settings(self, address, transport):
        return {
            "AUDIT_CALLBACK": "auditing.outputs.to_syslog",
            "AUDIT_SYSLOG": {"address": address, "transport": transport, "facility": "local3",
                             "app_name": "mygame-audit"},
        }

    def _syslog_meta_checks(self, server, records, player, input_name):
        conn = self.conn_of(records, player)
        metas = [m for m in server.meta() if f'"conn":"{conn}"' in m.get("payload", "")]
        self.assertTrue(metas)
        for meta in metas:
            self.assertEqual((meta["input"], meta["facility"], meta["app_name"]),
                             (input_name, "local3", "mygame-audit"), meta)

    def test_5_syslog_tcp_survives_rsyslog_restart(self):
        server = self._rsyslog()
        # A short flush interval: batches go out every 20 ms, so some are always in flight when
        # rsyslogd goes down (the interval only changes how often the writer sends).
        self.configure("syslog-tcp", AUDIT_FLUSH_INTERVAL=0.02,
                       **self._syslog_settings(("127.0.0.1", server.tcp_port), "tcp"))
        players = self.join("sy", 2)
        offset = self.server_log_offset()
        restarts = []

        def act():
            for _ in range(2):
                down = time.time()
                server.stop()
                time.sleep(1.0)  # long enough for the writer to fail (ECONNREFUSED) and retry
                server.start()
                restarts.append(time.time() - down)
                time.sleep(1.0)

        self._traffic_then(players, act, settle=1.5)
        # more traffic after the restarts, then wait until the last command arrived
        run_threads(talk(players, 20, timeout=3.0), 60)
        records = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            records = parse_lines(server.lines())
            if all(max(self.rcv_of(records, p) or [-1]) == p.sent[-1] for p in players):
                break
            time.sleep(0.25)
        unparsed = [r for r in records if "unparsed" in r]
        self.assertFalse(unparsed, f"payloads that are not JSON: {unparsed[:5]}")
        # The sink resends its last batch after rsyslogd closed the connection (it cannot know
        # what rsyslogd had processed): copies of one record, same conn and seq, are allowed and
        # counted once. A record must never be lost silently.
        resent = len(records)
        unique = {}
        for record in records:
            key = ((record["conn"], record["seq"]) if "conn" in record and "seq" in record
                   else (record.get("kind"), record.get("time"), record.get("lost")))
            unique.setdefault(key, record)
        records = list(unique.values())  # first copies, in trail order
        resent -= len(records)
        losses = [r for r in records if r.get("kind") == "loss"]
        conns = by_conn(records)
        mine = {self.conn_of(records, p) for p in players}
        duplicates = {c: len(recs) - len({r["seq"] for r in recs}) for c, recs in conns.items()}
        missing = {c: missing_seqs(recs) for c, recs in conns.items()}
        produced = sum(max(r["seq"] for r in recs) for recs in conns.values())
        delivered = sum(len({r["seq"] for r in recs}) for recs in conns.values())
        lost = sum(r.get("lost", 0) for r in losses)
        executed, recorded, lost_cmds, duplicated, _unconfirmed = self.account(records, players)
        downs = ", ".join(f"{r:.1f}" for r in restarts)
        log(f"syslog tcp, rsyslogd restarted {len(restarts)}x ({downs}s down): "
            f"{produced} records produced on {len(conns)} conns, {delivered} delivered, {lost} "
            f"counted lost in {len(losses)} loss records; commands {executed} executed, {recorded} "
            f"delivered, {len(lost_cmds)} missing; {resent} resent copies; missing "
            f"seq { {c[-6:]: ranges(m) for c, m in missing.items() if m} }")
        self.assertFalse(any(duplicates.values()), f"duplicated records: {duplicates}")
        self.assertFalse(duplicated, duplicated[:20])
        self.assertEqual(delivered + lost, produced,
                         f"delivered {delivered} + lost {lost} != produced {produced}: "
                         f"{produced - delivered - lost} records vanished without being counted")
        self.assertLessEqual(len(lost_cmds), lost)
        self.assertTrue(mine)
        for player in players:
            self._syslog_meta_checks(server, records, player, "imtcp")
        # the restarts were seen (ECONNREFUSED), logged once per episode (restarts less than
        # EPISODE_QUIET apart are one episode), and each episode's recovery said once
        lines = self.server_log_since(offset).splitlines()
        failed = [line for line in lines if SYSLOG_FAILED_LINE in line]
        self.assertTrue(1 <= len(failed) <= len(restarts), failed)
        self.assertIn("Connection refused", failed[0])
        self.assertEqual(sum("to_syslog works again" in line for line in lines), len(failed))

    def test_6_syslog_udp_and_unix_through_the_pipeline(self):
        server = self._rsyslog()
        for transport, address, input_name in (
            ("udp", ("127.0.0.1", server.udp_port), "imudp"),
            ("unix", server.unix_path, "imuxsock"),
        ):
            with self.subTest(transport=transport):
                self.configure(f"syslog-{transport}", **self._syslog_settings(address, transport))
                players = self.join(f"sy{transport}", 1)
                run_threads(talk(players, 30, timeout=3.0), 60)
                (player,) = players
                records = []
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    records = parse_lines(server.lines())
                    if len(self.rcv_of(records, player)) >= len(player.echoed):
                        break
                    time.sleep(0.2)
                executed, recorded, lost, duplicated, _ = self.account(records, players)
                log(f"syslog {transport}: {executed} executed, {recorded} delivered")
                self.assertEqual(executed, 30)
                self.assertFalse(lost, lost)
                self.assertFalse(duplicated, duplicated)
                conn = self.conn_of(records, player)
                self.assertFalse(seq_problems(conn, by_conn(records)[conn]))
                self._syslog_meta_checks(server, records, player, input_name)
                player.close(quit=True)


if __name__ == "__main__":
    unittest.main()
