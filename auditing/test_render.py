"""
Tests of `auditing.render`: one description of every record kind, one legend, and inert output.

The inertness properties are checked on generated text (Hypothesis, when installed): any Unicode,
weighted towards C0, C1, ESC sequences, Evennia markup (links, line breaks) and bidi controls.
"""

import re
import unittest

import orjson

from auditing import render

try:
    from hypothesis import given, settings as hypothesis_settings, strategies as st
except ImportError:  # optional: a game's environment may not have it
    given = None

# What a player might try: markup that becomes a link or a line, terminal escapes, raw C0/C1, bidi.
NASTY = ["|lcsay pwned|ltclick me|le", "|/", "||", "|r", "|[r", "|#ff0000", "|123", "\x1b[2J", "\x1b]0;title\x07",
         "\x9b2J", "\x9d0;t\x9c", "\r", "\n", "\t", "\x00", "\x7f", "\u202e", "\u2028", "{{", "$You()"]
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029\u200e\u200f\u061c]")
LIVE_MARKUP = re.compile(r"(?<!\|)(?:\|\|)*\|(?!\|)")  # a `|` not part of an escaped `||` pair

RECORDS = [
    {"kind": "io", "direction": "RCV", "time": "2026-11-27T07:40:12.000000Z", "text": "look"},
    {"kind": "account_created", "time": "2026-11-27T07:40:12.000000Z", "created_account": "eve#9",
     "conn": "c-1", "ip": "10.0.0.1"},
    {"kind": "audit_view", "time": "2026-11-27T07:40:12.000000Z", "account": "admin#1", "target": "bob#2",
     "mode": "transcript"},
    {"kind": "login_fail", "time": "2026-11-27T07:40:12.000000Z", "data": {"tried_account": "root"},
     "reason": "wrong password"},
    {"kind": "loss", "time": "2026-11-27T07:40:12.000000Z", "lost": 7, "first_time": "a", "last_time": "b",
     "cause": "disk full"},
]


def text_strategy():
    return st.lists(st.one_of(st.sampled_from(NASTY), st.text(), st.characters(max_codepoint=0x2070)),
                    max_size=12).map("".join)


class DescribeTests(unittest.TestCase):
    def test_every_detail_field_is_described(self):
        shown = [render.describe(record) for record in RECORDS]
        self.assertEqual(shown[0], "look")
        self.assertIn("created_account=eve#9", shown[1])
        self.assertIn("target=bob#2", shown[2])
        self.assertIn("mode=transcript", shown[2])
        self.assertIn("tried_account=root", shown[3])  # kept in data by the builder
        self.assertIn("reason=wrong password", shown[3])
        self.assertEqual(shown[4], "7 record(s) lost between a and b (disk full)")

    def test_unknown_fields_are_shown_too(self):
        self.assertIn("colour=blue", render.describe({"kind": "capture_change", "colour": "blue"}))

    def test_wide_adds_the_envelope(self):
        record = dict(RECORDS[0], hostname="game1", pid=42, session="session#3", seq=9, conn="c-1")
        self.assertEqual(render.describe(record), "look")
        wide = render.describe(record, wide=True)
        for part in ("hostname=game1", "pid=42", "session=session#3", "seq=9", "conn=c-1"):
            self.assertIn(part, wide)

    def test_output_markup_is_removed_input_kept_as_typed(self):
        out = {"kind": "io", "direction": "SND", "text": "|rRed|n and || pipe"}
        self.assertEqual(render.describe(out), "Red and | pipe")
        typed = {"kind": "io", "direction": "RCV", "text": "say |rRed"}
        self.assertEqual(render.describe(typed), "say |rRed")

    def test_input_the_server_fed_is_said_so(self):
        record = {"kind": "io", "direction": "RCV", "text": "__unloggedin_look_command", "origin": "server"}
        self.assertEqual(render.describe(record), "__unloggedin_look_command (sent by the server)")

    def test_one_legend(self):
        self.assertEqual(render.MARKERS["in"], "> ")
        self.assertEqual(render.MARKERS["out"], "< ")
        self.assertIn("> typed by the player", render.LEGEND)
        self.assertIn("< shown by the game", render.LEGEND)
        self.assertIn(" > ", render.game_line(RECORDS[0]))


class InertTests(unittest.TestCase):
    def test_game_link_and_line_break_escaped(self):
        shown = render.for_game("|lcsay pwned|ltclick me|le|/forged")
        self.assertEqual(shown, "||lcsay pwned||ltclick me||le||/forged")

    def test_terminal_escapes_visible(self):
        self.assertEqual(render.for_terminal("a\x1b[2Jb\x9bc\x07\u202e"), "a^[[2Jb\\x9bc^G\\u202e")

    def test_json_escapes_c1(self):
        line = render.json_line({"text": "a\x9bb\x85\x1b"})
        self.assertEqual(line, b'{"text":"a\\u009bb\\u0085\\u001b"}')
        self.assertEqual(orjson.loads(line)["text"], "a\x9bb\x85\x1b")
        self.assertEqual(render.escape_json_line('{"a":"é\x9f"}'.encode()), '{"a":"é\\u009f"}'.encode())

    def check_inert(self, text):
        terminal = render.for_terminal(text)
        self.assertIsNone(RAW_CONTROL.search(terminal), repr(terminal))
        one_line = render.for_terminal(text, one_line=True)
        self.assertNotIn("\n", one_line)
        game = render.for_game(text, one_line=True)
        self.assertIsNone(RAW_CONTROL.search(game), repr(game))
        self.assertNotIn("\n", game)
        self.assertIsNone(LIVE_MARKUP.search(game), repr(game))
        record = {"kind": "io", "direction": "SND", "text": text, "time": "2026-11-27T07:40:12.000000Z"}
        line = render.game_line(record)
        body = line.split(" ", 3)[3]  # after the time's own markup and the marker
        self.assertIsNone(LIVE_MARKUP.search(body), repr(line))
        self.assertIsNone(RAW_CONTROL.search(line), repr(line))
        coloured = render.markup(render.for_terminal(text), color=True)
        self.assertIsNone(re.search(r"\x1b(?!\[[0-9;]*m)", coloured), repr(coloured))  # only our colours
        self.assertIsNone(re.search("[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f-\x9f]", coloured), repr(coloured))
        blob = render.json_line({"text": text})
        self.assertIsNone(re.search(rb"[\x00-\x1f]|\xc2[\x80-\x9f]", blob), blob)
        self.assertEqual(orjson.loads(blob)["text"], text)

    def test_inert_on_the_known_cases(self):
        for text in NASTY:
            self.check_inert(text)
        self.check_inert("".join(NASTY))

    def test_inert_on_generated_text(self):
        if given is None:
            self.skipTest("hypothesis is not installed (pip install hypothesis)")

        @hypothesis_settings(max_examples=400, deadline=None)
        @given(text_strategy())
        def check(text):
            self.check_inert(text)

        check()

    def test_sessions_table_is_inert_and_not_cut(self):
        rows = [("A", "B"), ("bob\x1b]0;x\x07" * 3, "|lcquit|ltx|le")]
        lines = render.table(rows, render.for_game)
        self.assertIn("bob^[]0;x^Gbob^[]0;x^Gbob^[]0;x^G", lines[1])
        self.assertIn("||lcquit", lines[1])


class DemoTests(unittest.TestCase):
    def test_demo_uses_the_same_description_and_legend(self):
        from auditing import demo

        line = demo.format_record({"kind": "io", "direction": "RCV", "time": "2026-11-27T07:40:12.123456Z",
                                   "account": "bob#1", "protocol": "telnet", "text": "say \x1b]0;x\x07"})
        self.assertIn("> RCV", line)
        self.assertIn("say ^[]0;x^G", line)
        self.assertIsNone(RAW_CONTROL.search(line))
        line = demo.format_record({"kind": "account_created", "time": "2026-11-27T07:40:12.123456Z",
                                   "created_account": "eve#3"})
        self.assertIn("*** ACCOUNT_CREATED", line)
        self.assertIn("created_account=eve#3", line)


class MarkupTests(unittest.TestCase):
    def test_matches_evennia(self):
        try:
            from evennia.utils.ansi import parse_ansi
        except Exception as error:  # outside a game: Django settings not configured
            self.skipTest(f"evennia.utils.ansi not importable: {error}")
        samples = [
            "|rred|n |Rdark|n |gg|Gg |yy|Yy |bb|Bb |mm|Mm |cc|Cc |ww|Ww |xx|Xx",
            "|[rbg|[R|[gbg|[Gbg|n|[x|[X |!Rplain|!G|n |hhi|Hlo",
            "|123a|[050b|=ac|=zd|=me|[=bf|n",
            "|/line|-tab|_space|>indent",
            "|uunder|Uline |iit|I |sst|S |*inv|n |^blink|n",
            "pipe || brace {{ |lclook|ltLook around|le url |luhttps://x.org|ltsite|le",
            "|#ff0000red|[#00f blue|n unknown |z |",
            "||r not red ||[r not bg |||r red",
            "plain text, no markup",
        ]
        for sample in samples:
            want = parse_ansi(sample, xterm256=True, truecolor=True).replace("\r\n", "\n")
            self.assertEqual(render.markup(sample, color=True), want, sample)
            want = parse_ansi(sample, strip_ansi=True).replace("\r\n", "\n")
            self.assertEqual(render.markup(sample, color=False), want, sample)


if __name__ == "__main__":
    unittest.main()
