"""
Tests of the investigation tool (`evennia-audit`, auditing.cli and auditing.trail).

The fixture trail is written by the project's own FileSink (daily files, size rotation), from event
dicts shaped like the ones the writer thread builds; then one day is gzip-compressed and another gets a
malformed line, a JSON line that is not an object and a truncated last line, like a crash leaves.

Run: `evennia test auditing.test_cli` from a game directory (or `make test-py311 TESTS=auditing.test_cli`).
"""

import contextlib
import datetime
import gzip
import io
import os
import re
import shutil
import tempfile
import threading
import time
import unittest
from unittest import mock

import orjson

from auditing import cli, trail
from auditing.outputs import FileSink

UTC = datetime.timezone.utc
HOST = {"hostname": "game1", "application": "Evennia", "version": "5.0.1", "pid": 4242}
NOW = datetime.datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)  # "now" for relative times
PREFIX = "67470c2a1f3b"  # like event.new_connection_id(): start time and pid in hex


def _t(day, clock):
    """2026-11-DAY, HH:MM:SS.ffffff -> the trail's time string."""
    return f"2026-11-{day:02d}T{clock}Z"


def _epoch(value):
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Conn:
    """A fake connection producing event dicts the way auditing.event.Builder shapes them (sparse)."""

    def __init__(self, number, ip, protocol="telnet"):
        self.conn = f"{PREFIX}-{number}"
        self.session = f"session#{number}"
        self.ip, self.protocol = ip, protocol
        self.seq = 0
        self.account = self.character = self.room = None

    def _base(self, when, kind):
        self.seq += 1
        event = {"v": 1, "kind": kind, "time": when, **HOST, "protocol": self.protocol, "ip": self.ip,
                 "session": self.session, "conn": self.conn, "seq": self.seq,
                 "account": self.account, "character": self.character, "room": self.room}
        return event

    def io(self, when, direction, text, masked=None, data=None):
        event = self._base(when, "io")
        event.update(direction=direction, text=text, bytes=len(text.encode()), data=data, masked=masked)
        return {k: v for k, v in event.items() if v not in (None, "", [], {})}

    def rcv(self, when, text, **extra):
        return self.io(when, "RCV", text, **extra)

    def snd(self, when, text, **extra):
        return self.io(when, "SND", text, **extra)

    def event(self, when, kind, **fields):
        event = self._base(when, kind)
        event.update(fields)
        return {k: v for k, v in event.items() if v not in (None, "", [], {})}


def build_events():
    """Per day, the events in the order the writer thread would hand them to the sink."""
    days = {}
    # ---- day 1: bob plays from telnet; someone tries passwords from another address
    a = Conn(1, "10.0.0.5")
    day = [
        a.event(_t(25, "10:00:00.000000"), "connect"),
        a.snd(_t(25, "10:00:00.100000"), "|gWelcome|n to |cTestGame|n!|/Type |wconnect <name> <password>|n"),
        a.rcv(_t(25, "10:00:05.000000"), "connect bob ********", masked=["connect"]),
    ]
    a.account = "bob#1"
    day.append(a.event(_t(25, "10:00:05.200000"), "login"))
    day.append(a.snd(_t(25, "10:00:05.300000"), "|gLogged in as |wbob|n."))
    a.character, a.room = "Bob#3", "Limbo#2"
    day.append(a.event(_t(25, "10:00:05.400000"), "puppet"))
    look = a.rcv(_t(25, "10:00:06.000000"), "look")
    desc = a.snd(_t(25, "10:00:06.000000"),
                 "|cLimbo|n|/Welcome to your new |wEvennia|n-based game! |[rALERT|n |123xterm|n |=mgrey|n 100|| sure")
    day += [desc, look]  # same time stamp, written out of order: replay sorts by time then seq
    day.append(a.rcv(_t(25, "10:00:09.000000"), "say hello world"))
    day.append(a.snd(_t(25, "10:00:09.050000"), 'You say, "hello world"'))
    day.append(a.rcv(_t(25, "10:00:12.000000"), "say café ☕ \x1b[2J"))  # a player sending an escape
    day.append(a.event(_t(25, "10:00:20.000000"), "logout"))
    a.account = a.character = a.room = None
    day.append(a.event(_t(25, "10:00:20.100000"), "disconnect", reason="quit"))

    b = Conn(2, "203.0.113.9")
    day.append(b.event(_t(25, "11:00:00.000000"), "connect"))
    day.append(b.rcv(_t(25, "11:00:02.000000"), "connect bob ********", masked=["connect"]))
    day.append(b.event(_t(25, "11:00:02.100000"), "login_fail", tried_account="bob", reason="wrong password"))
    day.append(b.rcv(_t(25, "11:00:03.000000"), "connect admin ********", masked=["connect"]))
    day.append(b.event(_t(25, "11:00:03.100000"), "login_fail", tried_account="admin", reason="no such account"))
    day.append(b.rcv(_t(25, "11:00:04.000000"), "connect admin ********", masked=["connect"]))
    # as the current builder keeps lifecycle details: in "data"
    day.append(b.event(_t(25, "11:00:04.100000"), "login_fail", data={"tried_account": "admin"}))
    day.append(b.event(_t(25, "11:00:05.000000"), "disconnect", reason="idle"))
    days[25] = day

    # ---- day 2: alice on the webclient, a loss episode, bob again late at night
    c = Conn(3, "192.168.1.20", "webclient/websocket")
    day = [c.event(_t(26, "09:00:00.000000"), "connect")]
    c.account = "alice#2"
    day.append(c.event(_t(26, "09:00:01.000000"), "login"))
    c.character, c.room = "Alice#4", "Market Square#7"
    day.append(c.event(_t(26, "09:00:01.500000"), "puppet"))
    day.append(c.rcv(_t(26, "09:00:02.000000"), "look"))
    day.append(c.snd(_t(26, "09:00:02.100000"), "|YMarket Square|/Stalls everywhere.|n"))
    day.append(c.rcv(_t(26, "09:05:00.000000"), "buy apple"))
    day.append(c.snd(_t(26, "09:05:00.100000"), "You buy an |rapple|n."))
    day.append({"v": 1, "kind": "loss", "time": _t(26, "09:30:00.000000"), **HOST, "lost": 42,
                "first_time": _t(26, "09:10:00.000000"), "last_time": _t(26, "09:20:00.000000"),
                "cause": "disk full"})
    day.append(c.rcv(_t(26, "09:40:00.000000"), "north"))
    day.append(c.snd(_t(26, "09:40:00.200000"), "|wNorth Road|n"))
    day.append(c.rcv(_t(26, "09:41:00.000000"), "", data={"logged_in": [[], {}]}))  # OOB only
    c.room = "North Road#8"
    day.append(c.snd(_t(26, "09:41:00.100000"), "Zoë waves.", ))

    d = Conn(4, "10.0.0.5")
    d.account, d.character, d.room = "bob#1", "Bob#3", "Limbo#2"
    day.append(d.event(_t(26, "23:59:58.000000"), "connect"))
    day.append(d.event(_t(26, "23:59:58.500000"), "login"))
    day.append(d.rcv(_t(26, "23:59:59.500000"), "say late night"))
    days[26] = day

    # ---- day 3 (size-rotated): bob's night session goes on past midnight; charlie over IPv6
    day = [d.snd(_t(27, "00:00:00.500000"), 'You say, "late night"')]
    for n in range(30):
        day.append(d.rcv(_t(27, f"00:01:{n:02d}.000000"), f"say line {n}"))
        day.append(d.snd(_t(27, f"00:01:{n:02d}.010000"), f'You say, "line {n}"'))
    e = Conn(12, "2001:db8::1", "webclient/websocket")  # its id starts with conn 1's id
    e.account, e.character, e.room = "charlie#5", "Zoë#9", "Limbo#2"
    day.append(e.event(_t(27, "08:00:00.000000"), "connect"))
    day.append(e.rcv(_t(27, "08:00:01.000000"), "pose dances"))
    day.append(e.snd(_t(27, "08:00:01.100000"), "Zoë dances."))
    days[27] = day
    return days


MALFORMED = (b"this is not json\n", b"[1, 2, 3]\n", b'{"v":1,"account":"bob#1","text":"cut sho\n')
TRUNCATED = b'{"v":1,"kind":"io","time":"2026-11-26T23:59:59.9'


def write_trail(directory, days):
    """Write the events through FileSink; gzip day 1; break day 2's file."""
    # Day 1: through the sink's clock (records given without times).
    now = [0.0]
    sink = FileSink(directory, clock=lambda: now[0])
    for event in days[25]:
        now[0] = _epoch(event["time"])
        sink.write([orjson.dumps(event)])
    sink.flush()
    # Day 2 in one batch with per-record times, as the pipeline does.
    sink.write([orjson.dumps(e) for e in days[26]], [_epoch(e["time"]) for e in days[26]])
    sink.close()
    # Day 3 with size rotation.
    sink = FileSink(directory, max_bytes=1500, clock=lambda: now[0])
    for start in range(0, len(days[27]), 7):
        batch = days[27][start:start + 7]
        sink.write([orjson.dumps(e) for e in batch], [_epoch(e["time"]) for e in batch])
    sink.close()
    day1 = os.path.join(directory, "audit_2026-11-25.log")
    with open(day1, "rb") as plain, gzip.open(day1 + ".gz", "wb") as packed:
        shutil.copyfileobj(plain, packed)
    os.remove(day1)
    day2 = os.path.join(directory, "audit_2026-11-26.log")
    with open(day2, "rb") as handle:
        lines_before = handle.read().count(b"\n")
    with open(day2, "ab") as handle:
        handle.write(b"".join(MALFORMED) + TRUNCATED)
    return lines_before


def within(event, since, until):
    return _epoch(since) <= _epoch(event["time"]) <= _epoch(until)


def run(*argv, env=None):
    """main(argv) with captured output: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    environ = {"COLUMNS": "140"}
    environ.update(env or {})
    with mock.patch.dict(os.environ, environ), mock.patch.object(trail, "utcnow", return_value=NOW), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if "NO_COLOR" not in (env or {}):
            os.environ.pop("NO_COLOR", None)
        status = cli.main([str(arg) for arg in argv])
    return status, out.getvalue(), err.getvalue()


class TrailFixture(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="audit-cli-")
        cls.dir = os.path.join(cls.tmp, "logs")
        cls.days = build_events()
        cls.events = [e for day in sorted(cls.days) for e in cls.days[day]]
        cls.day2_lines = write_trail(cls.dir, cls.days)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def search(self, *args):
        status, out, err = run("search", "--dir", self.dir, *args)
        self.assertIn(status, (0, 1), err)
        self.last_status = status
        return out, err

    def count(self, *args):
        out, _err = self.search("--count", *args)
        count = int(out.strip())
        self.assertEqual(self.last_status, 0 if count else 1)  # grep: 1 when nothing matched
        return count

    def json_records(self, *args):
        out, _err = self.search("--json", *args)
        return [orjson.loads(line) for line in out.splitlines()]

    def expect(self, predicate):
        return [e for e in self.events if predicate(e)]


class FileLayoutTests(TrailFixture):
    def test_fixture_made_by_the_sink(self):
        names = sorted(os.listdir(self.dir))
        self.assertIn("audit_2026-11-25.log.gz", names)
        self.assertIn("audit_2026-11-26.log", names)
        self.assertIn("audit_2026-11-27.log", names)
        self.assertIn("audit_2026-11-27.1.log", names)  # size rotation happened
        self.assertIn("audit_2026-11-27.2.log", names)

    def test_files_in_writing_order(self):
        files, duplicates = trail.list_files(self.dir)
        names = [f.name for f in files]
        self.assertEqual(names[0], "audit_2026-11-25.log.gz")
        self.assertEqual(names[1], "audit_2026-11-26.log")
        rotated = [n for n in names if n.startswith("audit_2026-11-27.") and n.count(".") == 2]
        self.assertEqual(names[2:2 + len(rotated)], sorted(rotated, key=lambda n: int(n.split(".")[1])))
        self.assertEqual(names[-1], "audit_2026-11-27.log")
        self.assertEqual(duplicates, [])

    def test_every_record_read_back_in_order(self):
        records = list(trail.read(self.dir))
        self.assertEqual(records, self.events)

    def test_skips_files_outside_the_time_range_without_opening_them(self):
        opened = []
        real_open = open

        def spy(path, *args, **kwargs):
            opened.append(os.path.basename(path))
            return real_open(path, *args, **kwargs)

        with mock.patch("builtins.open", spy):
            reader = trail.Reader(self.dir, trail.Filter(since="2026-11-26T12:00", until="2026-11-26"))
            records = [r for r, _ in reader]
        self.assertEqual(opened, ["audit_2026-11-26.log"])
        self.assertEqual({r["conn"] for r in records}, {f"{PREFIX}-4"})

    def test_duplicate_plain_and_gzip(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        src = os.path.join(self.dir, "audit_2026-11-25.log.gz")
        shutil.copy(src, tmp)
        with gzip.open(src) as packed, open(os.path.join(tmp, "audit_2026-11-25.log"), "wb") as plain:
            plain.write(packed.read())
        status, out, err = run("search", "--dir", tmp, "--count")
        self.assertEqual(int(out), len(self.days[25]))
        self.assertIn("audit_2026-11-25.log.gz: skipped, the same file exists uncompressed", err)


class FilterTests(TrailFixture):
    def check(self, args, predicate, minimum=1):
        expected = self.expect(predicate)
        self.assertGreaterEqual(len(expected), minimum, f"fixture has too few records for {args}")
        self.assertEqual(self.count(*args), len(expected), args)
        self.assertEqual(self.count("--no-prefilter", *args), len(expected), args)
        self.assertEqual(self.json_records(*args), expected, args)

    def owned(self, account):
        """Records of `account`, with its connections' records from before the login (no account)."""
        conns = {e["conn"] for e in self.events if e.get("account") == account}
        return lambda e: e.get("account") == account or (not e.get("account") and e.get("conn") in conns)

    def test_account(self):
        bob = lambda e: self.owned("bob#1")(e) or e.get("tried_account") == "bob"  # noqa: E731
        self.check(["--account", "bob"], bob)
        self.check(["--account", "BOB#1"], self.owned("bob#1"))
        self.check(["--account", "#2"], self.owned("alice#2"))
        self.check(["--account", "al*"], self.owned("alice#2"))

    def test_account_includes_the_records_before_its_login(self):
        records = self.json_records("--account", "bob", "--conn", f"{PREFIX}-1")
        self.assertEqual([r["kind"] for r in records[:4]], ["connect", "io", "io", "login"])
        self.assertEqual(records[2]["text"], "connect bob ********")
        self.assertEqual(records[-1]["kind"], "disconnect")  # after the logout: no account either
        # the other connection that only tried the name is not bob's: only its login_fail matches
        other = self.json_records("--account", "bob", "--conn", f"{PREFIX}-2")
        self.assertEqual([r["kind"] for r in other], ["login_fail"])
        self.check(["--account", "bo"], lambda e: False, minimum=0)

    def test_account_includes_tried_account_kept_in_data(self):
        admin = lambda e: "admin" in (e.get("tried_account"), e.get("data", {}).get("tried_account"))  # noqa
        self.check(["--account", "admin", "--kind", "login_fail"], admin, minimum=2)

    def test_character(self):
        self.check(["--character", "alice"], lambda e: e.get("character") == "Alice#4")
        self.check(["--character", "zoë"], lambda e: e.get("character") == "Zoë#9")

    def test_room(self):
        self.check(["--room", "market square"], lambda e: e.get("room") == "Market Square#7")
        self.check(["--room", "Limbo#2"], lambda e: e.get("room") == "Limbo#2")

    def test_ip(self):
        self.check(["--ip", "10.0.0.5"], lambda e: e.get("ip") == "10.0.0.5")
        self.check(["--ip", "10.0.0.0/8"], lambda e: e.get("ip") == "10.0.0.5")
        self.check(["--ip", "2001:db8::/32"], lambda e: e.get("ip") == "2001:db8::1")
        self.check(["--ip", "10.0.0.50"], lambda e: False, minimum=0)

    def test_conn(self):
        self.check(["--conn", f"{PREFIX}-3"], lambda e: e.get("conn") == f"{PREFIX}-3")
        self.check(["--conn", f"{PREFIX}-1"], lambda e: e.get("conn") == f"{PREFIX}-1")  # not -12
        self.check(["--conn", f"{PREFIX}-*"], lambda e: "conn" in e, minimum=10)
        self.check(["--conn", "*-1?"], lambda e: e.get("conn") == f"{PREFIX}-12")

    def test_direction(self):
        self.check(["--direction", "RCV"], lambda e: e.get("direction") == "RCV")
        self.check(["--direction", "snd"], lambda e: e.get("direction") == "SND")

    def test_kind(self):
        self.check(["--kind", "login_fail"], lambda e: e["kind"] == "login_fail", minimum=3)
        self.check(["--kind", "login,logout"], lambda e: e["kind"] in ("login", "logout"))
        self.check(["--kind", "io"], lambda e: e["kind"] == "io")
        self.check(["--kind", "loss"], lambda e: e["kind"] == "loss")

    def test_since_until_absolute(self):
        self.check(["--since", "2026-11-26T09:05:00Z", "--until", "2026-11-26T09:40:00.1Z"],
                   lambda e: within(e, "2026-11-26T09:05:00Z", "2026-11-26T09:40:00.1Z"), minimum=4)
        self.check(["--until", "2026-11-25"], lambda e: e["time"].startswith("2026-11-25"))
        self.check(["--since", "2026-11-27"], lambda e: e["time"] >= "2026-11-27")
        # an offset is honoured: 10:00+01:00 is 09:00 UTC
        self.check(["--since", "2026-11-26T10:00:00+01:00", "--until", "2026-11-26T09:00:01.5Z"],
                   lambda e: within(e, "2026-11-26T09:00:00Z", "2026-11-26T09:00:01.5Z"), minimum=3)

    def test_since_until_relative(self):
        # now is 2026-11-27 12:00 UTC
        self.check(["--since", "1d"], lambda e: e["time"] >= "2026-11-26T12:00")
        self.check(["--since", "13h", "--until", "12h"],
                   lambda e: "2026-11-26T23:00" <= e["time"] <= "2026-11-27T00:00")
        self.check(["--until", "2d"], lambda e: e["time"] <= "2026-11-25T12:00")
        self.check(["--since", "240m"], lambda e: e["time"] >= "2026-11-27T08:00")
        self.check(["--since", "yesterday", "--until", "yesterday"], lambda e: e["time"].startswith("2026-11-26"))

    def test_text_regex(self):
        self.check(["--text", "hello world"], lambda e: "hello world" in e.get("text", ""))
        self.check(["--text", r"^say line 1\d$"], lambda e: re.match(r"say line 1\d$", e.get("text", "")))
        self.check(["--text", "SAY LINE", "-i"], lambda e: "say line" in e.get("text", "").lower())
        self.check(["--text", r"\d+"], lambda e: re.search(r"\d", e.get("text", "")))
        self.check(["--text", r"ALERT\|n \|123"], lambda e: "ALERT|n |123" in e.get("text", ""))
        self.check(["--text", "café"], lambda e: "café" in e.get("text", ""))
        self.check(["--text", '"hello'], lambda e: '"hello' in e.get("text", ""))

    def test_combined(self):
        self.check(["--account", "bob", "--direction", "RCV", "--since", "2026-11-26", "--text", "line"],
                   lambda e: e.get("account") == "bob#1" and e.get("direction") == "RCV"
                   and e["time"] >= "2026-11-26" and "line" in e.get("text", ""))

    def test_prefilter_literal_extraction(self):
        self.assertEqual(trail.required_literal("hello (a|b) world+"), ("hello ", False))
        self.assertEqual(trail.required_literal("(?i)look"), ("loo", True))  # k also matches KELVIN SIGN
        self.assertIsNone(trail.required_literal("a|b"))
        self.assertIsNone(trail.required_literal(r"\d+"))

    def test_casefolding_letters_are_the_known_ones(self):
        # Letters whose IGNORECASE match includes non-ASCII characters must not be byte-prefiltered.
        universe = "".join(chr(c) for c in range(0x80, 0x3000))
        folding = {c for c in map(chr, range(0x41, 0x7B)) if c.isalpha()
                   and re.search(re.escape(c), universe, re.I)}
        self.assertTrue(folding <= trail._UNICODE_FOLDING, folding)


class SearchOutputTests(TrailFixture):
    def test_json_lines_parse_and_equal_what_was_written(self):
        out, err = self.search("--json")
        lines = out.splitlines()
        self.assertEqual(len(lines), len(self.events))
        self.assertEqual([orjson.loads(line) for line in lines], self.events)

    def test_count_and_limit(self):
        self.assertEqual(self.count(), len(self.events))
        self.assertEqual(self.count("--limit", "5"), 5)
        self.assertEqual(len(self.json_records("--limit", "3")), 3)
        self.assertEqual(self.count("--account", "nobody"), 0)

    def test_table(self):
        out, _err = self.search("--conn", f"{PREFIX}-1")
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("TIME"))
        self.assertEqual(len(lines) - 1, len(self.expect(lambda e: e.get("conn") == f"{PREFIX}-1")))
        self.assertTrue(all(len(line) <= 140 for line in lines), max(map(len, lines)))
        look = [line for line in lines if line.rstrip().endswith(" look")]
        self.assertEqual(len(look), 1)
        self.assertIn("2026-11-25 10:00:06", look[0])
        self.assertIn("RCV", look[0])
        self.assertIn("bob#1", look[0])
        self.assertIn("Limbo#2", look[0])
        self.assertFalse(any("\x1b" in line for line in lines))  # markup stripped, ESC escaped
        self.assertTrue(any("say café ☕ ^[[2J" in line for line in lines))
        self.assertTrue(any("disconnect" in line and "reason=quit" in line for line in lines))
        desc = [line for line in lines if "Limbo" in line and "Welcome" in line]
        self.assertIn("Limbo \u23ce Welcome to your new Evennia-based game", desc[0])
        self.assertTrue(desc[0].endswith("~"))  # truncated to the terminal width

    def test_progress_only_on_a_terminal_for_big_scans(self):
        _status, _out, err = run("search", "--dir", self.dir, "--count")
        self.assertNotIn("\r[", err)  # stderr is not a terminal
        with mock.patch.object(cli, "_isatty", return_value=True), mock.patch.object(cli, "PROGRESS_MIN_BYTES", 1):
            _status, out, err = run("search", "--dir", self.dir, "--count")
        self.assertEqual(int(out), len(self.events))
        self.assertIn("\r[", err)
        self.assertIn("100%", err)
        self.assertIn("\r\x1b[K", err)  # the bar is cleared at the end
        with mock.patch.object(cli, "_isatty", return_value=True):  # terminal, but a small trail
            _status, out, err = run("search", "--dir", self.dir, "--count")
        self.assertNotIn("\r[", err)

    def test_no_match_message(self):
        out, err = self.search("--account", "nobody")
        self.assertIn("no records matched", err)
        self.assertEqual(self.last_status, 1)


class MalformedTests(TrailFixture):
    def test_reported_with_file_and_line_and_counted(self):
        out, err = self.search("--count")
        self.assertEqual(int(out), len(self.events))
        day2 = os.path.join(self.dir, "audit_2026-11-26.log")
        n = self.day2_lines
        self.assertIn(f"{day2}:{n + 1}: not JSON", err)
        self.assertIn(f"{day2}:{n + 2}: not a JSON object (list)", err)
        self.assertIn(f"{day2}:{n + 3}: not JSON", err)
        self.assertIn(f"{day2}:{n + 4}: truncated last line", err)
        self.assertIn("skipped 4 malformed line(s)", err)

    def test_prefiltered_search_reports_only_candidate_lines(self):
        day2 = os.path.join(self.dir, "audit_2026-11-26.log")
        n = self.day2_lines
        for chunk in (trail.CHUNK, 97):  # also with blocks smaller than a line
            with mock.patch.object(trail, "CHUNK", chunk):
                out, err = self.search("--count", "--account", "bob")
            self.assertIn(f"{day2}:{n + 3}: not JSON", err)
            self.assertNotIn(f"{day2}:{n + 1}:", err)
            self.assertIn("skipped 1 malformed line(s)", err)

    def test_small_blocks_give_the_same_results(self):
        with mock.patch.object(trail, "CHUNK", 97):
            self.assertEqual(self.json_records(), self.events)
            self.assertEqual(self.json_records("--account", "bob", "--text", "line"),
                             self.expect(lambda e: e.get("account") == "bob#1" and "line" in e.get("text", "")))
            self.assertEqual(self.json_records("--kind", "login_fail"),
                             self.expect(lambda e: e["kind"] == "login_fail"))

    def test_stats_counts_them(self):
        status, out, err = run("stats", "--dir", self.dir, "--json")
        self.assertEqual(orjson.loads(out)["malformed_lines"], 4)

    def test_corrupt_gzip_is_reported_not_fatal(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        with open(os.path.join(self.dir, "audit_2026-11-25.log.gz"), "rb") as handle:
            data = handle.read()
        with open(os.path.join(tmp, "audit_2026-11-25.log.gz"), "wb") as handle:
            handle.write(data[: len(data) // 2])
        shutil.copy(os.path.join(self.dir, "audit_2026-11-27.log"), tmp)
        status, out, err = run("search", "--dir", tmp, "--count")
        self.assertEqual(status, 0)
        self.assertIn("cannot decompress", err)
        self.assertGreater(int(out), 0)

    def test_empty_and_missing_directory(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        with open(os.path.join(tmp, "server.log"), "w") as handle:
            handle.write("not an audit file\n")
        for argv in (["search", "--count"], ["stats", "--json"], ["sessions"], ["replay", "--conn", "x"],
                     ["search", "--account", "bob"]):
            status, out, err = run(argv[0], "--dir", tmp, *argv[1:])
            self.assertEqual((status, out), (2, ""), argv)  # grep: 2 when there is no file to read
            self.assertIn("no audit files", err)
        status, out, err = run("search", "--dir", os.path.join(tmp, "missing"), "--count")
        self.assertEqual(status, 2)
        self.assertIn("no such directory", err)

    def test_default_directory(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        os.makedirs(os.path.join(tmp, "server"))
        shutil.copytree(self.dir, os.path.join(tmp, "server", "logs"))
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            status, out, err = run("search", "--count", "--kind", "loss")
            self.assertEqual((status, out), (0, "1\n"))
            os.chdir(os.path.join(tmp, "server", "logs"))
            status, out, err = run("search", "--count", "--kind", "loss")
            self.assertEqual((status, out), (0, "1\n"))
        finally:
            os.chdir(cwd)

    def test_usage_errors(self):
        for argv in (
            ["replay", "--dir", self.dir],  # neither --conn nor --account
            ["replay", "--dir", self.dir, "--conn", "x", "--account", "y"],
            ["search", "--dir", self.dir, "--since", "last tuesday"],
            ["search", "--dir", self.dir, "--text", "("],
            ["search", "--dir", self.dir, "--ip", "10.0.0.0/99"],
            ["search", "--dir", self.dir, "--json", "--count"],
            ["search", "--dir", self.dir, "--limit", "0"],
            ["export", "--dir", self.dir, "--conn", "x"],  # no -o
            ["nonsense"],
            [],
        ):
            status, _out, err = run(*argv)
            self.assertEqual(status, 2, (argv, err))
        status, out, _err = run("--help")
        self.assertEqual(status, 0)
        self.assertIn("replay", out)


class ReplayTests(TrailFixture):
    def replay(self, *args, env=None):
        status, out, err = run("replay", "--dir", self.dir, *args, env=env)
        self.assertEqual(status, 0, err)
        return out

    def test_order_by_time_then_seq_across_files(self):
        out = self.replay("--conn", f"{PREFIX}-4", "--no-color")
        lines = out.splitlines()[2:]
        said = [int(m.group(1)) for line in lines for m in [re.search(r'> say line (\d+)$', line)] if m]
        self.assertEqual(said, list(range(30)))  # across rotated files
        first = [line for line in lines if "late night" in line]
        self.assertTrue(first[0].startswith("2026-11-26 23:59:59.500 > say late night"), first)
        self.assertTrue(first[1].startswith('2026-11-27 00:00:00.500 < You say, "late night"'), first)
        stamps = [line[:23] for line in lines]
        self.assertEqual(stamps, sorted(stamps))

    def test_same_time_sorted_by_seq(self):
        out = self.replay("--conn", f"{PREFIX}-1", "--no-color")
        lines = out.splitlines()
        look = next(i for i, line in enumerate(lines) if line.endswith("> look"))
        self.assertIn("Limbo", lines[look + 1])  # the description written first, seq after

    def test_no_color_transcript(self):
        out = self.replay("--conn", f"{PREFIX}-1", "--no-color")
        self.assertNotIn("\x1b", out)
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("# "))
        self.assertEqual(lines[1], "# > typed by the player, < shown by the game, *** connection event, "
                                   "!!! records lost")
        self.assertIn("2026-11-25 10:00:00.100 < Welcome to TestGame!", lines)
        self.assertIn("2026-11-25 10:00:00.100 < Type connect <name> <password>", lines)
        self.assertIn("2026-11-25 10:00:05.000 > connect bob ********", lines)
        self.assertIn("2026-11-25 10:00:06.000 < Welcome to your new Evennia-based game! ALERT xterm grey 100| sure",
                      lines)
        self.assertIn("2026-11-25 10:00:12.000 > say café ☕ ^[[2J", lines)
        self.assertIn("2026-11-25 10:00:20.100 *** disconnect protocol=telnet ip=10.0.0.5 reason=quit", lines)
        with_env = self.replay("--conn", f"{PREFIX}-1", env={"NO_COLOR": "1"})
        self.assertEqual(with_env, out)

    def test_color_transcript(self):
        out = self.replay("--conn", f"{PREFIX}-1")
        self.assertIn("\x1b[1m\x1b[32mWelcome\x1b[0m to \x1b[1m\x1b[36mTestGame\x1b[0m!", out)
        self.assertIn("\x1b[48;5;196mALERT", out)  # |[r: bright red background via xterm256
        self.assertIn("\x1b[38;5;67mxterm", out)  # |123
        self.assertIn("\x1b[38;5;243mgrey", out)  # |=m
        self.assertIn("100| sure", out)
        self.assertIn("^[[2J", out)  # the player's raw escape is shown, not sent to the terminal
        self.assertNotIn("\x1b[2J", out)
        # a colour still active at a line break carries over to the next line
        out = self.replay("--conn", f"{PREFIX}-3")
        self.assertIn(" < \x1b[22m\x1b[33mMarket Square\x1b[0m\n", out)
        self.assertIn(" < \x1b[22m\x1b[33mStalls everywhere.\x1b[0m\x1b[0m\n", out)

    def test_account_replay_interleaves_connections_and_shows_losses(self):
        out = self.replay("--account", "alice", "--no-color")
        self.assertIn("!!! 42 record(s) lost between 2026-11-26T09:10:00.000000Z and "
                      "2026-11-26T09:20:00.000000Z (disk full)", out)
        self.assertIn("> [oob] {\"logged_in\":[[],{}]}", out)
        out = self.replay("--account", "bob", "--no-color")
        self.assertIn(f"[{PREFIX}-1]", out)
        self.assertIn(f"[{PREFIX}-4]", out)
        self.assertIn("42 record(s) lost", out)  # a gap inside bob's span: his records may be missing too
        out = self.replay("--account", "bob", "--since", "2026-11-26", "--no-color")
        self.assertNotIn(f"[{PREFIX}-1]", out)

    def test_ambiguous_conn_prefix(self):
        status, out, err = run("replay", "--dir", self.dir, "--conn", f"{PREFIX}-*")
        self.assertEqual(status, 2)
        self.assertIn("matches several connections", err)
        out = self.replay("--conn", "*-12", "--no-color")  # a glob matching one connection
        self.assertIn("> pose dances", out)
        out = self.replay("--conn", f"{PREFIX}-1", "--no-color")  # exact: not -12
        self.assertNotIn("pose dances", out)

    def test_speed_sleeps_scaled_and_capped_gaps(self):
        sleeps = []
        with mock.patch.object(cli.time, "sleep", sleeps.append):
            self.replay("--conn", f"{PREFIX}-2", "--speed", "2", "--max-wait", "0.7", "--no-color")
        times = [_epoch(e["time"]) for e in self.expect(lambda e: e.get("conn") == f"{PREFIX}-2")]
        gaps = [min((b - a) / 2, 0.7) for a, b in zip(times, times[1:]) if b > a]
        self.assertEqual(len(sleeps), len(gaps))
        for got, want in zip(sleeps, gaps):
            self.assertAlmostEqual(got, want, places=5)

    def test_speed_really_sleeps(self):
        import time
        started = time.monotonic()
        out = self.replay("--conn", f"{PREFIX}-2", "--speed", "50", "--no-color")
        self.assertLess(time.monotonic() - started, 3)
        self.assertIn("login_fail", out)


class ExportTests(TrailFixture):
    def export(self, *args):
        path = os.path.join(self.tmp, "out.cast")
        status, out, err = run("export", "--dir", self.dir, "--format", "asciicast", "-o", path, *args)
        self.assertEqual(status, 0, err)
        with open(path, "rb") as handle:
            lines = handle.read().splitlines()
        return orjson.loads(lines[0]), [orjson.loads(line) for line in lines[1:]]

    def validate(self, header, events):
        self.assertEqual(header["version"], 2)
        for key in ("width", "height", "timestamp"):
            self.assertIs(type(header[key]), int, key)
        self.assertIsInstance(header["title"], str)
        previous = 0.0
        for event in events:
            self.assertEqual(len(event), 3, event)
            when, code, text = event
            self.assertIn(type(when), (float, int))
            self.assertGreaterEqual(when, previous)
            previous = when
            self.assertEqual(code, "o")
            self.assertIsInstance(text, str)
            self.assertTrue(text.endswith("\r\n"))
            self.assertNotRegex(text, r"(?<!\r)\n")

    def test_conn(self):
        header, events = self.export("--conn", f"{PREFIX}-1", "--no-color")
        self.validate(header, events)
        conn = self.expect(lambda e: e.get("conn") == f"{PREFIX}-1")
        self.assertEqual(header["timestamp"], int(_epoch(conn[0]["time"])))
        self.assertEqual(events[0][0], 0)
        self.assertAlmostEqual(events[-1][0], _epoch(conn[-1]["time"]) - _epoch(conn[0]["time"]), places=3)
        texts = [text for _, _, text in events]
        self.assertIn("> look\r\n", texts)
        self.assertIn("< Welcome to TestGame!\r\n< Type connect <name> <password>\r\n", texts)
        self.assertGreaterEqual(header["width"], 80)

    def test_account_with_color(self):
        header, events = self.export("--account", "bob", "--width", "100", "--height", "40", "--idle-limit", "2")
        self.validate(header, events)
        self.assertEqual((header["width"], header["height"], header["idle_time_limit"]), (100, 40, 2.0))
        self.assertTrue(any("\x1b[1m\x1b[32mWelcome" in text for _, _, text in events))

    def test_nothing_to_export(self):
        path = os.path.join(self.tmp, "none.cast")
        status, out, err = run("export", "--dir", self.dir, "--conn", "nope", "-o", path)
        self.assertEqual(status, 1)
        self.assertFalse(os.path.exists(path))


class StatsTests(TrailFixture):
    def test_figures(self):
        status, out, err = run("stats", "--dir", self.dir, "--json")
        self.assertEqual(status, 0, err)
        stats = orjson.loads(out)
        self.assertEqual(stats["records"], len(self.events))
        self.assertEqual(stats["malformed_lines"], 4)
        per_day = {(row["day"], row["account"]): row["records"] for row in stats["per_account_day"]}
        bob_day3 = len(self.expect(lambda e: e.get("account") == "bob#1" and e["time"].startswith("2026-11-27")))
        self.assertEqual(per_day[("2026-11-27", "bob#1")], bob_day3)
        self.assertEqual(per_day[("2026-11-26", "alice#2")],
                         len(self.expect(lambda e: e.get("account") == "alice#2")))
        no_account_day1 = len(self.expect(lambda e: "account" not in e and e["time"].startswith("2026-11-25")))
        self.assertEqual(per_day[("2026-11-25", "(none)")], no_account_day1)
        ips = stats["top_ips"]
        self.assertEqual(ips[0]["ip"], "10.0.0.5")
        self.assertEqual(ips[0]["records"], len(self.expect(lambda e: e.get("ip") == "10.0.0.5")))
        self.assertEqual(ips[0]["connections"], 2)
        fails = stats["login_failures"]
        self.assertEqual(fails["total"], 3)
        self.assertEqual({r["account"]: r["count"] for r in fails["by_account"]}, {"admin": 2, "bob": 1})
        self.assertEqual(fails["by_ip"], [{"ip": "203.0.113.9", "count": 3}])
        self.assertEqual(stats["loss"]["lost"], 42)
        self.assertEqual(stats["loss"]["spans"], [{"first_time": "2026-11-26T09:10:00.000000Z",
                                                   "last_time": "2026-11-26T09:20:00.000000Z",
                                                   "lost": 42, "cause": "disk full"}])

    def test_text_report(self):
        status, out, err = run("stats", "--dir", self.dir)
        self.assertEqual(status, 0, err)
        self.assertIn("malformed lines: 4", out)
        self.assertIn("login failures: 3", out)
        self.assertIn("records lost: 42", out)
        self.assertRegex(out, r"2026-11-26T09:10:00.000000Z \.\. 2026-11-26T09:20:00.000000Z\s+lost 42\s+\(disk full\)")
        self.assertRegex(out, r"2026-11-25\s+bob#1\s+\d+")
        self.assertRegex(out, r"203\.0\.113\.9\s+\d+\s+1\n")

    def test_filtered(self):
        status, out, err = run("stats", "--dir", self.dir, "--json", "--since", "2026-11-27")
        stats = orjson.loads(out)
        self.assertEqual(stats["files"], sum(1 for n in os.listdir(self.dir) if n.startswith("audit_2026-11-27")))
        self.assertEqual(stats["records"], len(self.expect(lambda e: e["time"] >= "2026-11-27")))


def _records(count, conn="c-1", start=_t(27, "08:00:00.000000"), **fields):
    """`count` io records of one connection, one second apart from `start`."""
    base = _epoch(start)
    out = []
    for n in range(count):
        when = datetime.datetime.fromtimestamp(base + n, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        out.append({"v": 1, "kind": "io", "time": when, "conn": conn, "seq": n + 1, "direction": "RCV",
                    "text": f"line {n}", **fields})
    return out


def _sink_write(sink, records):
    sink.write([orjson.dumps(r) for r in records], [_epoch(r["time"]) for r in records])
    sink.flush()


class LogrotateNamesTests(unittest.TestCase):
    """Files renamed by logrotate (numbered, gzip'd, dateext) are read, in writing order."""

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)

    def path(self, name):
        return os.path.join(self.dir, name)

    def gzip(self, name):
        with open(self.path(name), "rb") as plain, gzip.open(self.path(name + ".gz"), "wb") as packed:
            shutil.copyfileobj(plain, packed)
        os.remove(self.path(name))

    def test_numbered_gzipped_and_dateext_names_in_writing_order(self):
        records = _records(50)
        batches = [records[i:i + 10] for i in range(0, 50, 10)]
        current = "audit_2026-11-27.log"
        sink = FileSink(self.dir)
        # logrotate `create` with `rotate 3`, `compress` (no delaycompress): .log.1 then .log.2.gz ...
        _sink_write(sink, batches[0])
        os.rename(self.path(current), self.path(current + ".1"))
        _sink_write(sink, batches[1])  # the sink notices the rename and creates the file again
        os.rename(self.path(current + ".1"), self.path(current + ".2"))
        self.gzip(current + ".2")
        os.rename(self.path(current), self.path(current + ".1"))
        _sink_write(sink, batches[2])
        # ... then the admin switches to `dateext`
        os.rename(self.path(current), self.path(current + "-20261127"))
        _sink_write(sink, batches[3])
        os.rename(self.path(current), self.path(current + "-20261128"))
        self.gzip(current + "-20261128")
        _sink_write(sink, batches[4])
        sink.close()
        self.assertEqual(sorted(os.listdir(self.dir)), [
            "audit_2026-11-27.log", "audit_2026-11-27.log-20261127", "audit_2026-11-27.log-20261128.gz",
            "audit_2026-11-27.log.1", "audit_2026-11-27.log.2.gz"])
        self.assertEqual(list(trail.read(self.dir)), records)
        status, out, err = run("search", "--dir", self.dir, "--count")
        self.assertEqual((status, out, err), (0, "50\n", ""))
        status, out, err = run("replay", "--dir", self.dir, "--conn", "c-1", "--no-color")
        said = [int(m.group(1)) for m in re.finditer(r"> line (\d+)$", out, re.M)]
        self.assertEqual(said, list(range(50)))

    def test_our_size_rotation_and_logrotate_together(self):
        records = _records(40)
        sink = FileSink(self.dir, max_bytes=1200)
        _sink_write(sink, records[:20])  # makes audit_D.1.log, audit_D.2.log ... and audit_D.log
        os.rename(self.path("audit_2026-11-27.log"), self.path("audit_2026-11-27.log-20261127"))
        _sink_write(sink, records[20:])
        sink.close()
        names = [f.name for f in trail.list_files(self.dir)[0]]
        self.assertIn("audit_2026-11-27.1.log", names)
        self.assertLess(names.index("audit_2026-11-27.log-20261127"), names.index("audit_2026-11-27.log"))
        self.assertEqual(sorted(r["seq"] for r in trail.read(self.dir)), list(range(1, 41)))

    def test_other_names_still_ignored(self):
        for name in ("audit_2026-11-27.log.bak", "audit_2026-11-27.log-old", "audit_2026-13-01.log", "server.log"):
            with open(self.path(name), "w") as handle:
                handle.write('{"kind": "io"}\n')
        self.assertEqual(trail.list_files(self.dir)[0], [])


class NewestTests(TrailFixture):
    """`trail.newest`, what the in-game command reads: the last N, newest day first, bounded in time."""

    def test_last_records_across_days_in_order(self):
        records, complete = trail.newest(self.dir, trail.Filter(account="bob"), limit=35)
        bob = self.expect(lambda e: e.get("account") == "bob#1" or e.get("tried_account") == "bob")
        self.assertTrue(complete)
        self.assertEqual(records, bob[-35:])  # day 27 has fewer: day 26 is read too
        records, _complete = trail.newest(self.dir, trail.Filter(account="bob"), limit=3, keep=lambda r: "seq" in r)
        self.assertEqual(records, [e for e in bob if "seq" in e][-3:])

    def test_budget_never_leaves_a_gap(self):
        calls = [0]

        def clock():  # one second per look at the clock
            calls[0] += 1
            return calls[0]

        day27 = self.days[27]
        with mock.patch.object(trail, "CHUNK", 200):  # several blocks per file: checked between them
            trail.newest(self.dir, trail.Filter(), limit=len(day27), budget=10**6, clock=clock)
            looks_for_day27 = calls[0]
            calls[0] = 0
            records, complete = trail.newest(self.dir, trail.Filter(), limit=500, budget=looks_for_day27 + 0.5,
                                             clock=clock)
        self.assertFalse(complete)  # day 26 was cut short: none of it is shown, older days not read
        self.assertEqual(records, day27)


class ExitStatusTests(TrailFixture):
    """grep's statuses: 0 something matched, 1 nothing matched, 2 error or no audit file."""

    def test_search_and_sessions(self):
        for argv, status in ((["search", "--account", "bob"], 0), (["search", "--account", "nobody"], 1),
                             (["search", "--count", "--account", "nobody"], 1), (["search", "--json", "--kind", "io"], 0),
                             (["sessions", "--account", "alice"], 0), (["sessions", "--account", "nobody"], 1),
                             (["stats"], 0), (["search", "--since", "someday"], 2)):
            got, _out, err = run(argv[0], "--dir", self.dir, *argv[1:])
            self.assertEqual(got, status, (argv, err))
        self.assertEqual(run("search", "--dir", os.path.join(self.tmp, "nope"))[0], 2)


class WideAndTableTests(TrailFixture):
    def setUp(self):
        self.extra = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.extra)
        long_name = "bartholomew_the_unready_of_the_north#1234"
        self.records = [
            {"v": 1, "kind": "account_created", "time": _t(27, "09:00:00.000000"), "conn": "c-9", "seq": 1,
             "created_account": "eve#9", "ip": "10.1.1.1", "hostname": "game1", "pid": 77, "session": "session#4"},
            {"v": 1, "kind": "audit_view", "time": _t(27, "09:00:01.000000"), "conn": "c-9", "seq": 2,
             "account": long_name, "target": "bob#1", "mode": "transcript", "hostname": "game1", "pid": 77},
            {"v": 1, "kind": "io", "time": _t(27, "09:00:02.000000"), "conn": "c-9", "seq": 3, "direction": "SND",
             "account": long_name, "text": "hello " * 40, "bytes": 240, "hostname": "game1", "pid": 77},
        ]
        sink = FileSink(self.extra)
        _sink_write(sink, self.records)
        sink.close()
        self.long_name = long_name

    def test_table_shows_every_detail_and_never_cuts_names(self):
        status, out, err = run("search", "--dir", self.extra)
        self.assertEqual(status, 0, err)
        lines = out.splitlines()
        self.assertIn("created_account=eve#9", lines[1])
        self.assertIn("target=bob#1", lines[2])
        self.assertIn("mode=transcript", lines[2])
        self.assertIn(self.long_name, lines[2])
        self.assertIn(self.long_name, lines[3])
        self.assertTrue(lines[3].endswith("~"))  # only the text is fitted to the terminal

    def test_wide_shows_every_field_whole(self):
        status, out, err = run("search", "--dir", self.extra, "--wide")
        lines = out.splitlines()
        for part in ("hostname=game1", "pid=77", "session=session#4", "seq=1", "created_account=eve#9"):
            self.assertIn(part, lines[1])
        self.assertIn("hello " * 39 + "hello", lines[3])
        self.assertIn("bytes=240", lines[3])
        self.assertIn("pid=77", lines[3])


class ExportFileTests(TrailFixture):
    def test_written_0600_even_over_an_existing_file(self):
        path = os.path.join(self.tmp, "open.cast")
        with open(path, "w") as handle:
            handle.write("old")
        os.chmod(path, 0o644)
        status, _out, err = run("export", "--dir", self.dir, "--conn", f"{PREFIX}-1", "-o", path)
        self.assertEqual(status, 0, err)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        os.remove(path)
        status, _out, err = run("export", "--dir", self.dir, "--conn", f"{PREFIX}-1", "-o", path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_never_through_a_symlink(self):
        target = os.path.join(self.tmp, "victim")
        with open(target, "w") as handle:
            handle.write("precious")
        link = os.path.join(self.tmp, "planted.cast")
        os.symlink(target, link)
        self.addCleanup(os.remove, link)
        self.addCleanup(os.remove, target)
        status, _out, err = run("export", "--dir", self.dir, "--conn", f"{PREFIX}-1", "-o", link)
        self.assertEqual(status, 2)
        self.assertIn("symbolic link", err)
        with open(target) as handle:
            self.assertEqual(handle.read(), "precious")


def contrib_line(record, when="26-11-27 07:40:12"):
    """A line as the old contrib writes it: Evennia's log_file prefix, then json.dumps of the record."""
    import json
    return f"\n{when} [-] {json.dumps(record)}".encode()


class LegacyContribTests(unittest.TestCase):
    """A file the old contrib wrote (and that our sink then appended to) is read whole."""

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.old = [
            {"time": "2026-11-27 07:40:12.123456+00:00", "hostname": "game1", "application": "Evennia",
             "version": "4.5.0", "pid": 11, "direction": "RCV", "protocol": "telnet", "ip": "10.0.0.5",
             "session": "session#1", "account": "bob#1", "character": "", "room": "", "text": "look",
             "bytes": 4, "data": {}},
            {"time": "2026-11-27 07:40:13.000000+00:00", "hostname": "game1", "application": "Evennia",
             "version": "4.5.0", "pid": 11, "direction": "SND", "protocol": "telnet", "ip": "10.0.0.5",
             "session": "session#1", "account": "bob#1", "character": "", "room": "", "text": "Limbo \x9b",
             "bytes": 5, "data": {}},
        ]
        with open(os.path.join(self.dir, "audit_2026-11-27.log"), "wb") as handle:
            handle.write(b"".join(contrib_line(r) for r in self.old) + b"\n")  # log_file: no final newline
        sink = FileSink(self.dir)
        _sink_write(sink, _records(2, start=_t(27, "08:00:00.000000"), account="bob#1"))
        sink.close()

    def test_read_as_legacy_records_without_warnings(self):
        status, out, err = run("search", "--dir", self.dir, "--json")
        self.assertEqual((status, err), (0, ""))
        self.assertNotIn(b"\xc2\x9b", out.encode())
        records = [orjson.loads(line) for line in out.splitlines()]
        self.assertEqual(len(records), 4)
        self.assertEqual([r.get("legacy") for r in records], [True, True, None, None])
        self.assertEqual(records[0]["time"], "2026-11-27T07:40:12.123456Z")
        self.assertEqual(records[1]["text"], "Limbo \x9b")
        self.assertEqual(run("search", "--dir", self.dir, "--count", "--account", "bob", "--until",
                             "2026-11-27T07:50")[1], "2\n")
        status, out, err = run("search", "--dir", self.dir)
        self.assertIn("Limbo \\x9b", out)

    def test_contrib_time_stamp_used_when_the_record_has_none(self):
        record, reason = trail.decode_line(contrib_line({"direction": "RCV", "text": "x"}, "26-11-27 07:40:12+02")[1:])
        self.assertIsNone(reason)
        self.assertEqual(record["time"], "2026-11-27T05:40:12.000000Z")


class ControlCharacterTests(unittest.TestCase):
    """Nothing a player chose reaches the terminal raw; JSON escapes C0 and C1."""

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.evil = "\x1b]0;pwned\x07\x9b2J\u202e|lcquit|ltx|le"
        sink = FileSink(self.dir)
        _sink_write(sink, [
            {"v": 1, "kind": "login_fail", "time": _t(27, "09:00:00.000000"), "conn": "c-7", "ip": "10.0.0.9",
             "tried_account": self.evil, "reason": "no such account"},
            {"v": 1, "kind": "io", "time": _t(27, "09:00:01.000000"), "conn": "c-7", "direction": "RCV",
             "text": "say " + self.evil, "account": self.evil},
        ])
        sink.close()

    def test_no_raw_control_character_in_any_output(self):
        raw = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]")
        for argv in (["stats"], ["search"], ["search", "--wide"], ["sessions"], ["replay", "--conn", "c-7", "--no-color"],
                     ["replay", "--conn", "c-7"]):
            status, out, err = run(argv[0], "--dir", self.dir, *argv[1:])
            self.assertEqual(status, 0, (argv, err))
            colourless = re.sub(r"\x1b\[[0-9;]*m", "", out) if argv[-1] == "c-7" else out
            self.assertIsNone(raw.search(colourless), (argv, out))
            self.assertIn("^[]0;pwned^G\\x9b2J\\u202e", out, argv)

    def test_json_escapes_c0_and_c1(self):
        for argv in (["search", "--json"], ["stats", "--json"], ["sessions", "--json"]):
            status, out, err = run(argv[0], "--dir", self.dir, *argv[1:])
            self.assertIsNone(re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", out), (argv, out))
        self.assertIn("\\u009b2J", run("search", "--dir", self.dir, "--json")[1])


class SessionsTests(TrailFixture):
    def sessions(self, *args):
        status, out, err = run("sessions", "--dir", self.dir, "--json", *args)
        self.assertIn(status, (0, 1), err)
        return [orjson.loads(line) for line in out.splitlines()]

    def test_one_line_per_connection_matching_the_trail(self):
        found = {s["conn"]: s for s in self.sessions()}
        conns = {e["conn"] for e in self.events if e.get("conn")}
        self.assertEqual(set(found), conns)
        for conn in conns:
            mine = self.expect(lambda e: e.get("conn") == conn)
            got = found[conn]
            self.assertEqual(got["records"], len(mine))
            self.assertEqual(got["start"], min(e["time"] for e in mine))
            self.assertEqual(got["end"], max(e["time"] for e in mine))
            self.assertEqual(got["ip"], mine[0]["ip"])
        one = found[f"{PREFIX}-1"]
        self.assertEqual((one["accounts"], one["characters"], one["protocol"]), (["bob#1"], ["Bob#3"], "telnet"))
        self.assertEqual((one["ended"], one["end_reason"], one["duration"]), (True, "quit", 20.1))
        self.assertEqual(found[f"{PREFIX}-2"]["accounts"], [])  # failed logins only
        self.assertEqual(found[f"{PREFIX}-2"]["end_reason"], "idle")
        self.assertFalse(found[f"{PREFIX}-4"]["ended"])  # no disconnect (yet)

    def test_filters_and_time_range(self):
        self.assertEqual([s["conn"] for s in self.sessions("--account", "bob")],
                         [f"{PREFIX}-1", f"{PREFIX}-2", f"{PREFIX}-4"])  # 2: tried the name
        self.assertEqual([s["conn"] for s in self.sessions("--ip", "10.0.0.0/8")], [f"{PREFIX}-1", f"{PREFIX}-4"])
        late = self.sessions("--account", "bob", "--since", "2026-11-27")
        self.assertEqual([s["conn"] for s in late], [f"{PREFIX}-4"])
        self.assertEqual(late[0]["records"], len(self.expect(lambda e: e.get("conn") == f"{PREFIX}-4"
                                                             and e["time"] >= "2026-11-27")))
        self.assertEqual(self.sessions("--account", "nobody"), [])

    def test_table(self):
        status, out, err = run("sessions", "--dir", self.dir)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["START", "END", "DURATION", "CONN", "ACCOUNT", "CHARACTER", "IP",
                                            "PROTOCOL", "END", "REASON", "RECORDS"])
        one = next(line for line in lines if f"{PREFIX}-1 " in line)
        self.assertRegex(one, r"^2026-11-25 10:00:00\s+2026-11-25 10:00:20\s+0:00:20\s+67470c2a1f3b-1\s+bob#1\s+"
                              r"Bob#3\s+10\.0\.0\.5\s+telnet\s+quit\s+13$")
        self.assertIn("(no disconnect yet)", out)


class FollowTests(unittest.TestCase):
    """`tail -F` semantics of trail.Follower, and `search --follow` end to end."""

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.sink = FileSink(self.dir)
        self.addCleanup(self.sink.close)

    def path(self, name):
        return os.path.join(self.dir, name)

    def texts(self, follower):
        return [record["text"] for record, _line in follower.poll()]

    def test_only_new_lines_then_day_rollover(self):
        _sink_write(self.sink, _records(3, start=_t(27, "23:59:57.000000")))
        follower = trail.Follower(self.dir)
        self.assertEqual(self.texts(follower), [])
        _sink_write(self.sink, _records(3, start=_t(27, "23:59:59.000000")))  # 1 today, 2 tomorrow
        self.assertEqual(self.texts(follower), ["line 0", "line 1", "line 2"])
        self.assertTrue(os.path.exists(self.path("audit_2026-11-28.log")))

    def test_rename_rotation_read_to_the_end_then_the_new_file(self):
        _sink_write(self.sink, _records(1))
        follower = trail.Follower(self.dir)
        _sink_write(self.sink, _records(2, start=_t(27, "08:00:01.000000")))
        os.rename(self.path("audit_2026-11-27.log"), self.path("audit_2026-11-27.log.1"))  # logrotate create
        _sink_write(self.sink, _records(1, start=_t(27, "08:00:05.000000")))
        self.assertEqual(self.texts(follower), ["line 0", "line 1", "line 0"])
        self.gzip_away("audit_2026-11-27.log.1")
        _sink_write(self.sink, _records(1, start=_t(27, "08:00:06.000000")))
        self.assertEqual(self.texts(follower), ["line 0"])  # the .gz copy is not read again

    def gzip_away(self, name):
        with open(self.path(name), "rb") as plain, gzip.open(self.path(name + ".gz"), "wb") as packed:
            shutil.copyfileobj(plain, packed)
        os.remove(self.path(name))

    def test_copytruncate(self):
        _sink_write(self.sink, _records(2))
        follower = trail.Follower(self.dir)
        _sink_write(self.sink, _records(1, start=_t(27, "08:00:02.000000")))
        shutil.copy(self.path("audit_2026-11-27.log"), self.path("audit_2026-11-27.log.1"))
        os.truncate(self.path("audit_2026-11-27.log"), 0)
        _sink_write(self.sink, _records(1, start=_t(27, "08:00:03.000000")))
        self.assertEqual(self.texts(follower), ["line 0", "line 0"])  # the copy is not read twice

    def test_replaced_directory_and_partial_lines(self):
        _sink_write(self.sink, _records(1))
        follower = trail.Follower(self.dir)
        self.sink.close()
        shutil.rmtree(self.dir)
        self.assertEqual(self.texts(follower), [])  # gone: wait for it
        os.makedirs(self.dir)
        line = orjson.dumps(_records(1, start=_t(27, "09:00:00.000000"))[0])
        with open(self.path("audit_2026-11-27.log"), "wb") as handle:
            handle.write(line[:10])
            handle.flush()
            self.assertEqual(self.texts(follower), [])  # half a line: not yet
            handle.write(line[10:] + b"\n")
        self.assertEqual(self.texts(follower), ["line 0"])

    def test_filters_apply(self):
        follower = trail.Follower(self.dir, trail.Filter(text="line [13]"))
        _sink_write(self.sink, _records(5))
        self.assertEqual(self.texts(follower), ["line 1", "line 3"])

    def test_follow_account_shows_a_new_connections_records_from_before_its_login(self):
        base = {"v": 1, "ip": "10.0.0.1"}

        def connection(conn, account, start):
            rows = [dict(base, kind="connect", conn=conn), dict(base, kind="io", direction="RCV", conn=conn,
                                                                text=f"connect {account} ********"),
                    dict(base, kind="login", conn=conn, account=account),
                    dict(base, kind="io", direction="RCV", conn=conn, account=account, text="look"),
                    dict(base, kind="disconnect", conn=conn, reason="quit")]
            for n, row in enumerate(rows):
                row["time"] = _t(27, f"{start}:0{n}.000000")
            return rows

        shown = self.follow_while_writing([connection("c-alice", "alice#2", "09:00"),
                                           connection("c-bob", "bob#1", "09:01")], "--limit", "5", "--account", "bob")
        self.assertEqual([(r["conn"], r["kind"]) for r in shown],
                         [("c-bob", "connect"), ("c-bob", "io"), ("c-bob", "login"), ("c-bob", "io"),
                          ("c-bob", "disconnect")])

    def follow_while_writing(self, batches, *argv):
        """`search --follow --json ARGV` while another thread writes `batches` a little later; the records."""

        def later():
            for batch in batches:
                time.sleep(0.25)
                _sink_write(self.sink, batch)

        writer = threading.Thread(target=later)
        writer.start()
        status, out, err = run("search", "--dir", self.dir, "--follow", "--json", "--interval", "0.05", *argv)
        writer.join()
        self.assertEqual(status, 0, err)
        return [orjson.loads(line) for line in out.splitlines()]

    def test_search_follow_end_to_end(self):
        _sink_write(self.sink, _records(2, conn="old"))
        shown = self.follow_while_writing([_records(3, conn="c-2", start=_t(27, "08:10:00.000000")),
                                           _records(3, conn="c-3", start=_t(27, "08:20:00.000000"))],
                                          "--limit", "2", "--text", "line [12]")
        self.assertEqual([(r["conn"], r["text"]) for r in shown], [("c-2", "line 1"), ("c-2", "line 2")])
        status, out, err = run("search", "--dir", self.dir, "--follow", "--json", "--since", "2026-11-27",
                               "--limit", "1", "--conn", "old")
        self.assertEqual([r["text"] for r in map(orjson.loads, out.splitlines())], ["line 0"])


# The README's logrotate recipe (README.md, "Keeping the trail with logrotate"), with the log directory filled in.
LOGROTATE_RECIPE = """\
{dir}/audit_*.log {{
    daily
    rotate 400
    missingok
    notifempty
    nocreate
    compress
    delaycompress
}}
"""


@unittest.skipUnless(shutil.which("logrotate") or os.path.exists("/usr/sbin/logrotate"), "logrotate not installed")
class RealLogrotateTests(unittest.TestCase):
    """The README's recipe, run by the real logrotate (forced) while the sink writes: the CLI, and a
    follower started before the rotations, see every record exactly once."""

    def test_recipe_keeps_the_cli_complete(self):
        import subprocess
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        directory = os.path.join(tmp, "logs")
        os.makedirs(directory, mode=0o700)
        conf = os.path.join(tmp, "audit.logrotate")
        with open(conf, "w") as handle:
            handle.write(LOGROTATE_RECIPE.format(dir=directory))
        command = [shutil.which("logrotate") or "/usr/sbin/logrotate", "-f", "-s", os.path.join(tmp, "state"), conf]
        records = _records(60, start=_t(26, "23:59:30.000000"))  # two days
        sink = FileSink(directory)
        self.addCleanup(sink.close)
        follower = trail.Follower(directory)
        followed = []
        for batch in range(3):
            _sink_write(sink, records[batch * 20:(batch + 1) * 20])
            followed += [r for r, _line in follower.poll()]
            if batch < 2:
                result = subprocess.run(command, capture_output=True, text=True, timeout=60)
                self.assertEqual(result.returncode, 0, result.stderr)
                followed += [r for r, _line in follower.poll()]
        self.assertEqual(sorted(os.listdir(directory)), ["audit_2026-11-26.log.1", "audit_2026-11-26.log.2.gz",
                                                         "audit_2026-11-27.log", "audit_2026-11-27.log.1"])
        self.assertEqual(list(trail.read(directory)), records)
        status, out, err = run("search", "--dir", directory, "--count")
        self.assertEqual((status, out, err), (0, "60\n", ""))
        self.assertEqual(followed, records)


class ModuleEntryPointTests(unittest.TestCase):
    def test_python_dash_m(self):
        import subprocess
        import sys
        result = subprocess.run([sys.executable, "-m", "auditing", "--help"], capture_output=True, text=True,
                                timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("evennia-audit", result.stdout)


if __name__ == "__main__":
    unittest.main()
