"""
Unit tests of the audit module against real Evennia sessions (run with `make test`).

They run in any game, with Evennia's default settings or the game's own (`evennia test --settings
settings.py auditing`): sessions are of our class whatever `SERVER_SESSION_CLASS` says, and every
trail is written to a temporary directory (`testing.base.TempTrailMixin`). The end-to-end test against a running server is in
`test_e2e.py`, syslog against a real rsyslogd in `test_syslog.py`, the CLI in `test_cli.py`.
"""

import json
import os
import shutil
import socket
import stat
import tempfile
from unittest import mock

import evennia
from django.test import override_settings
from evennia.utils.test_resources import EvenniaTest

from . import conf, service
from .event import RCV, SND, capture
from .filesink import FileSink
from .pipeline import Pipeline
from .scrub import MASK
from .server import AuditedServerSession
from .sinkbase import SinkError
from .testing.base import TempTrailMixin

PASSWORDS = [
    "hunter2hunter2",
    "pa$$word^1",
    "p(ass",
    "pass)word",
    "trailing\\",
    "[bracket]{1,2}*+?.|",
    "quo'te\"d",
    "ünïcødé-密码-пароль",
    "x" * 120,
    "password",  # a password that is also an ordinary word
]


class Collector:
    """A custom AUDIT_CALLBACK that keeps what it receives (the contrib's contract: one dict)."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def io(self):
        return [event for event in self.events if event.get("kind") == "io"]


class AuditTestCase(TempTrailMixin, EvenniaTest):
    """A logged-in session of our class, plus an unauthenticated one, and a collecting callback."""

    audit_settings = {}

    def setUp(self):
        super().setUp()
        self.collector = Collector()
        self.override = override_settings(
            **{"AUDIT_CALLBACK": self.collector, "AUDIT_IN": True, "AUDIT_OUT": True, **self.audit_settings}
        )
        self.override.enable()
        self.addCleanup(self.override.disable)
        service.start()
        # The trail is under test here, not Evennia's commands: input stops at the session.
        patcher = mock.patch.object(evennia.SESSION_HANDLER, "call_inputfuncs")
        self.game_input = patcher.start()
        self.addCleanup(patcher.stop)
        self.guest = self.new_unauthenticated_session(sessid=2)
        self.flush()
        self.collector.events.clear()

    def new_unauthenticated_session(self, sessid):
        dummy = AuditedServerSession()
        dummy.init_session("telnet", ("127.0.0.9", 4000 + sessid), evennia.SESSION_HANDLER)
        dummy.sessid = sessid
        evennia.SESSION_HANDLER.portal_connect(dummy.get_sync_data())
        session = evennia.SESSION_HANDLER.session_from_sessid(sessid)
        self.addCleanup(evennia.SESSION_HANDLER.pop, sessid, None)
        return session

    def flush(self):
        self.assertTrue(service.current().pipeline.flush())

    def records(self):
        self.flush()
        return self.collector.io()

    def sent_in(self, session, line, **extra):
        session.data_in(text=([line], {}), **extra)

    def assertNoSecret(self, secrets, events=None):
        events = self.collector.events if events is None else events
        for event in events:
            dumped = json.dumps(
                {k: v for k, v in event.items() if k != "objects"}, ensure_ascii=False, default=str
            )
            for secret in secrets:
                if secret in dumped:
                    self.fail(f"secret {secret!r} in {dumped}")


class TestContribCompatibility(AuditTestCase):
    """Every case of Evennia's contrib `test_mask` and `test_audit`, against our session class.

    Differences, on purpose: secrets become the fixed MASK (no length leak); typos of the login
    commands are masked before login (where they carry a password), so those cases use an
    unauthenticated session; `@password <anything>` is always masked (the contrib left one
    unmasked only because its own regex crashed on it).
    """

    def test_session_class(self):
        self.assertIsInstance(self.session, AuditedServerSession)
        self.assertIsInstance(self.guest, AuditedServerSession)

    def test_safe_commands_unchanged(self):
        safe = (
            "/say hello to my little friend",
            "@ccreate channel = for channeling",
            "@create/drop some stuff",
            "@create rock",
            "@create a pretty shirt : evennia.contrib.game_systems.clothing.Clothing",
            "@charcreate johnnyefhiwuhefwhef",
            'Command "@logout" is not available. Maybe you meant "@color" or "@cboot"?',
            '/me says, "what is the password?"',
            "say the password is plugh",
            "@create pretty sunset" "@create johnny password123",
            '{"text": "Command \'do stuff\' is not available. Type "help" for help."}',
        )
        for line in safe:
            self.assertEqual(self.session.mask(line), line)

    def test_unsafe_commands_masked(self):
        logged_in = (
            ("something - new password set to 'asdfghjk'.", f"something - new password set to '{MASK}'."),
            (
                "someone has changed your password to 'something'.",
                f"someone has changed your password to '{MASK}'.",
            ),
            ("connect johnny password123", f"connect johnny {MASK}"),
            ('connect "johnny five" "password 123"', f'connect "johnny five" {MASK}'),
            ('connect johnny "password 123"', f"connect johnny {MASK}"),
            ("@password password1234 = password2345", f"@password {MASK}"),
            ("@password password1234 password2345", f"@password {MASK}"),
            ("@passwd password1234 = password2345", f"@passwd {MASK}"),
            ("@userpassword johnny = password234", f"@userpassword johnny = {MASK}"),
        )
        for raw, expected in logged_in:
            self.assertEqual(self.session.mask(raw), expected, raw)
        before_login = (
            ("concnct johnny password123", f"concnct johnny {MASK}"),
            ("concnct johnnypassword123", f"concnct {MASK}"),
            ("create johnny password123", f"create johnny {MASK}"),
            ("craete johnnypassword123", f"craete {MASK}"),
            (
                "Command 'conncect teddy teddy' is not available. Maybe you meant \"@encode\"?",
                f"Command 'conncect teddy {MASK}' is not available. Maybe you meant \"@encode\"?",
            ),
            (
                "{'text': u'Command \\'conncect jsis dfiidf\\' is not available. Type \"help\" for help.'}",
                "{'text': u'Command \\'conncect jsis "
                + MASK
                + "\\' is not available. Type \"help\" for help.'}",
            ),
        )
        for raw, expected in before_login:
            self.assertEqual(self.guest.mask(raw), expected, raw)

    def test_masking_cannot_hide_speech(self):
        for line in (
            "say password password password; ive got a secret that i cant explain",
            "whisper johnny = password\n let's lynch the landlord",
            "say connect johnny password1234|the secret life of arabia",
        ):
            self.assertEqual(self.session.mask(line), line)
            self.assertEqual(self.guest.mask(line), line)

    def test_password_command_with_code_is_masked(self):
        line = "@password eval(\"__import__('os').system('clear')\", {'__builtins__':{}})"
        self.assertEqual(self.session.mask(line), f"@password {MASK}")

    def test_audit(self):
        log = self.session.audit(src="client", text=[["hello"]])
        self.assertEqual(
            {k: log[k] for k in ("direction", "protocol", "text")},
            {"direction": "RCV", "protocol": "telnet", "text": "hello"},
        )
        self.assertTrue(log["application"])
        log = self.session.audit(
            src="client", text="connect johnny password123", prompt="hp=20|st=10|ma=15", pane=2
        )
        self.assertEqual(log["text"], f"connect johnny {MASK}")
        self.assertEqual(log["data"]["prompt"], "hp=20|st=10|ma=15")
        self.assertEqual(log["data"]["pane"], 2)
        self.assertEqual(self.session.audit(src="client"), {})


class TestEvents(AuditTestCase):
    def test_contrib_keys_and_values(self):
        self.sent_in(self.session, "look")
        self.session.data_out(text=("You see a room.", {"type": "look"}))
        rcv, snd = self.records()[-2:]
        for key in ("time", "hostname", "application", "version", "pid", "direction", "protocol",
                    "ip", "session", "account", "character", "room", "text", "bytes", "objects"):
            self.assertIn(key, rcv)
        self.assertEqual(rcv["direction"], RCV)
        self.assertEqual(snd["direction"], SND)
        self.assertRegex(rcv["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        self.assertEqual(rcv["account"], f"{self.account.key}{self.account.dbref}")
        self.assertEqual(rcv["character"], f"{self.char1.key}{self.char1.dbref}")
        self.assertEqual(rcv["room"], f"{self.room1.key}{self.room1.dbref}")
        self.assertEqual(rcv["ip"], "localhost")
        self.assertEqual(rcv["session"], f"session#{self.session.sessid}")
        self.assertEqual(rcv["text"], "look")
        self.assertEqual(snd["data"], {"text_options": {"type": "look"}})
        self.assertIs(rcv["objects"]["session"], self.session)
        self.assertIs(rcv["objects"]["character"], self.char1)
        self.assertEqual(rcv["conn"], snd["conn"])
        self.assertEqual(snd["seq"], rcv["seq"] + 1)
        self.assertEqual(rcv["v"], 1)

    def test_host_name_and_version_not_looked_up_per_event(self):
        service.current()  # configuration built (host name looked up) before the events
        with mock.patch.object(socket, "getfqdn", side_effect=AssertionError("getfqdn per event")), \
             mock.patch.object(socket, "gethostname", side_effect=AssertionError("per event")):
            for _ in range(5):
                self.sent_in(self.session, "look")
            events = self.records()
        self.assertEqual(len(events), 5)
        self.assertTrue(all(e["hostname"] for e in events))

    def test_character_without_location_gives_empty_room(self):
        self.char1.location = None
        self.sent_in(self.session, "look")
        event = self.records()[-1]
        self.assertEqual(event["text"], "look")
        self.assertNotIn("room", event)  # sparse: empty values are dropped
        with override_settings(AUDIT_ALLOW_SPARSE=True, AUDIT_CALLBACK=self.collector):
            self.sent_in(self.session, "look")
            self.flush()
        self.assertEqual(self.collector.io()[-1]["room"], "")

    def test_odd_values_give_records(self):
        self.session.data_out(text=None)
        self.session.data_out(text=[["a", ["b", ["c"]]], {"x": 1}])
        self.session.data_out(text=12345)
        self.session.data_out(text=b"\xff\xferaw bytes")
        self.session.data_in(text=([None, 3.5, ["nested", b"\xc3\x28"]], {}))
        self.session.data_out(custom=({1: object()}, {"deep": [[[[[[[[{"k": "v"}]]]]]]]]}))
        events = self.records()
        self.assertEqual(len(events), 6)
        texts = [e.get("text", "") for e in events]
        self.assertEqual(texts[0], "")
        self.assertEqual(texts[1], "a\nb\nc")
        self.assertEqual(texts[2], "12345")
        self.assertIn("raw bytes", texts[3])
        self.assertIn("nested", texts[4])
        self.assertIn("custom", events[5]["data"])

    def test_sparse_drops_only_empty_values(self):
        self.session.data_in(text=(["look"], {}), zero=0, false=False, empty="", none=None, lst=[])
        self.session.data_out(text="", logged_in={})
        look, logged_in = self.records()[-2:]
        # OOB command names are kept even without arguments; None values and empty fields go.
        self.assertEqual(look["data"], {"zero": 0, "false": False, "empty": "", "lst": []})
        self.assertEqual(logged_in["data"], {"logged_in": {}})
        self.assertNotIn("text", logged_in)
        self.assertNotIn("room", {k for k, v in look.items() if v in ("", None)})

    def test_bytes_do_not_reveal_secret_length(self):
        self.sent_in(self.guest, "connect bob short1")
        self.sent_in(self.guest, "connect bob a-much-longer-password-than-that")
        first, second = self.records()[-2:]
        self.assertEqual(first["text"], second["text"])
        self.assertEqual(first["bytes"], second["bytes"])
        self.assertEqual(first["bytes"], len(f"connect bob {MASK}"))

    def test_unlogged_session_fields(self):
        self.sent_in(self.guest, "look")
        event = self.records()[-1]
        self.assertEqual(event["ip"], "127.0.0.9")
        for key in ("account", "character", "room"):
            self.assertNotIn(key, event)

    def test_exception_never_reaches_the_game(self):
        live = service.current()
        with mock.patch("auditing.service.capture", side_effect=RuntimeError("boom")):
            self.sent_in(self.session, "look")
            self.session.data_out(text="a line")
        self.game_input.assert_called_once()
        self.assertEqual(live.capture_errors, 2)
        self.assertEqual(live.stats()["capture_errors"], 2)

    def test_game_receives_arguments_unchanged(self):
        self.session.data_in(text=(["connect bob hunter2"], {"options": {"a": 1}}), pane=2)
        self.assertEqual(
            self.game_input.call_args.kwargs,
            {"text": (["connect bob hunter2"], {"options": {"a": 1}}), "pane": 2},
        )

    def test_burst_is_written_completely_and_in_order(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        with override_settings(AUDIT_CALLBACK="auditing.outputs.to_file", AUDIT_LOG_DIR=directory):
            for index in range(20_000):
                self.session.data_out(text=f"say line {index}")
            self.flush()
            stats = service.current().stats()
        lines = []
        for name in sorted(os.listdir(directory)):
            with open(os.path.join(directory, name), "rb") as handle:
                lines.extend(handle.read().splitlines())
        texts = [json.loads(line)["text"] for line in lines]
        self.assertEqual(texts, [f"say line {index}" for index in range(20_000)])
        self.assertEqual(stats["lost"], 0)
        self.assertEqual(stats["delivered"], 20_000)


class TestScrubbing(AuditTestCase):
    def test_every_password_fully_masked_in_all_default_commands(self):
        for secret in PASSWORDS:
            quoted = f'"{secret}"'
            self.sent_in(self.guest, f"connect bob {secret}")
            self.sent_in(self.guest, f"conn bob {quoted}")
            self.sent_in(self.guest, f'co "bob smith" {quoted}')
            self.sent_in(self.guest, f"@connect bob {secret}")
            self.sent_in(self.guest, f"create bob {secret}")
            self.sent_in(self.guest, f"cre bob {quoted}")
            self.sent_in(self.guest, f"cr bob {secret}")
            self.sent_in(self.session, f"password {secret} = {secret}2")
            self.sent_in(self.session, f"@password {secret} = new{secret}")
            self.sent_in(self.session, f"@userpassword bob = {secret}")
            self.sent_in(self.session, f"userpassword bob={secret}")
            self.sent_in(self.guest, f"connect bob{secret}")
        events = self.records()
        self.assertEqual(len(events), 12 * len(PASSWORDS))
        self.assertTrue(all(MASK in e["text"] for e in events), [e["text"] for e in events if MASK not in e["text"]])
        self.assertNoSecret([s for s in PASSWORDS if s != "password"])
        for event in events:  # "password" as a secret: only the command word may remain
            self.assertNotRegex(event["text"], r"(=|bob|\")\s*\"?password\b")

    def test_account_name_stays_visible(self):
        self.sent_in(self.guest, 'connect "bob smith" "pass word"')
        self.sent_in(self.guest, "create alice s3cret!")
        self.sent_in(self.session, "@userpassword carol = s3cret!")
        texts = [e["text"] for e in self.records()]
        self.assertEqual(
            texts,
            [f'connect "bob smith" {MASK}', f"create alice {MASK}", f"@userpassword carol = {MASK}"],
        )

    def test_outputs_that_echo_passwords(self):
        for secret in PASSWORDS:
            self.guest.data_out(
                text=f"You want to create an account 'bob' with password '{secret}'."
                "\nIs this what you intended? [Y]/N?"
            )
            self.session.data_out(text=f"bob - new password set to '{secret}'.")
            self.session.data_out(text=f"Admin has changed your password to '{secret}'.")
            self.guest.data_out(text=f"Command 'conect bob {secret}' is not available.")
        events = self.records()
        self.assertTrue(all(MASK in e["text"] for e in events))
        self.assertNoSecret([s for s in PASSWORDS if s != "password"])
        self.assertIn("Is this what you intended? [Y]/N?", events[0]["text"])

    def test_harmless_replies_stay_readable(self):
        for text in (
            "Password changed.",
            "The specified old password isn't correct.",
            "Usage: password <oldpass> = <newpass>",
            'Bob says, "my new password set to \'x\'."',
            "A new account 'bob' was created. Welcome!",
        ):
            self.session.data_out(text=text)
        self.assertEqual(
            [e["text"] for e in self.records()],
            [
                "Password changed.",
                "The specified old password isn't correct.",
                "Usage: password <oldpass> = <newpass>",
                'Bob says, "my new password set to \'x\'."',
                "A new account 'bob' was created. Welcome!",
            ],
        )

    def test_oob_values_scrubbed(self):
        self.guest.data_in(
            text=(["look"], {}),
            login=(["bob", "hunter2pw"], {"password": "hunter2pw", "api_key": "k-123456"}),
            relay=(["connect bob hunter2pw"], {}),
        )
        event = self.records()[-1]
        self.assertNoSecret(["hunter2pw", "k-123456"])
        self.assertEqual(event["data"]["login"], MASK)  # an OOB command named like credentials
        self.assertEqual(event["data"]["relay"], [[f"connect bob {MASK}"], {}])
        self.assertIn("secret_key", event["masked"])

    def test_echo_of_a_masked_secret_is_masked_in_later_output(self):
        self.sent_in(self.guest, "connect bob Tr0ub4dor&3")
        self.guest.data_out(text="Your custom game echoes: Tr0ub4dor&3 (oops)")
        event = self.records()[-1]
        self.assertEqual(event["text"], f"Your custom game echoes: {MASK} (oops)")
        self.assertIn("echo", event["masked"])

    def test_crafted_long_inputs(self):
        # Inputs built to make backtracking regexes explode; each must scrub correctly.
        crafted = [
            "connect " + '"' * 5999,
            "connect " + "a" * 3000 + " " + "b" * 2990,
            "@password " + "=" * 5990,
            "userpassword " + " " * 5980 + "x",
            "Command '" + "'" * 5980 + "' is not available.",
            "c" * 6000,
            "connect " + ' "' * 2995,
        ]
        for line in crafted:
            masked = self.guest.mask(line)
            self.assertLessEqual(len(masked), len(line) + len(MASK))
        self.assertEqual(self.guest.mask("connect " + "a" * 3000 + " " + "b" * 2990), "connect " + "a" * 3000 + " " + MASK)

    def test_multiline_input(self):
        # Evennia runs a multi-line text as one command: the password takes all that follows.
        self.assertEqual(self.guest.mask("connect bob pw\nlook"), f"connect bob {MASK}")
        self.assertEqual(self.session.mask("@password old\n= new"), f"@password {MASK}")
        # ... and later lines are the first command's arguments: speech stays speech.
        for line in ("say hi\npassword this is speech", "whisper johnny = password\n let's lynch"):
            self.assertEqual(self.session.mask(line), line)
        self.assertEqual(self.guest.mask("connect a b\n" * 545), f"connect a {MASK}")

    def test_every_spelling_evennia_accepts(self):
        # Evennia strips all of @&/+ and accepts `cmd-N` (pick among same-named commands).
        for line in ("@@connect bob hunter2pw", "/@connect bob hunter2pw", "connect-99 bob hunter2pw",
                     "co-5 bob hunter2pw", "&&connect bob hunter2pw", "CONNECT bob hunter2pw"):
            self.assertNotIn("hunter2pw", self.guest.mask(line), line)
        for line in ("@@password hunter2pw", "&&userpassword bob = hunter2pw"):
            self.assertNotIn("hunter2pw", self.session.mask(line), line)
        # MXP link markup is removed from input before Evennia parses it
        self.assertNotIn("hunter2pw", self.guest.mask("|lc|ltconnect|le bob hunter2pw"))
        self.assertNotIn("hunter2pw", self.session.mask("|lcx|ltpassword|le hunter2pw"))
        self.assertEqual(self.session.mask("say |lclook|ltlook here|le"), "say |lclook|ltlook here|le")

    def test_login_state_is_taken_when_typed_not_when_written(self):
        # The writer runs later: by then the connection may have logged in (a pasted script).
        self.sent_in(self.guest, "create bob hunter2xyz")
        self.sent_in(self.guest, "conect bob hunter2xyz")
        evennia.SESSION_HANDLER.login(self.guest, self.account2, testmode=True)
        self.assertNoSecret(["hunter2xyz"], self.records())
        self.guest.logged_in = False  # let tearDown delete account2 without a portal

    def test_oob_secret_echoed_back_is_masked(self):
        self.session.data_in(text=(["look"], {}), echo=([], {"password": "hunter2xyz"}))
        self.session.data_out(text="Echo returns: (), {'password': 'hunter2xyz'}")
        self.assertNoSecret(["hunter2xyz"], self.records())

    def test_lone_surrogate_still_gives_a_record_with_text(self):
        self.sent_in(self.session, "say I will find you\ud800")
        event = self.records()[-1]
        self.assertEqual(event["kind"], "io")
        self.assertIn("I will find you", event["text"])

    def test_pages_and_prompt_lines(self):
        self.session.data_out(text="|wAccount|n |cmallory|n |wpages:|n Enter your password:")
        self.sent_in(self.session, "page admin = mallory keeps harassing me")
        self.assertEqual(self.records()[-1]["text"], "page admin = mallory keeps harassing me")
        self.session.data_out(prompt="Password:")  # a telnet prompt line arms it too
        self.sent_in(self.session, "s3cret-by-prompt")
        self.assertEqual(self.records()[-1]["text"], MASK)

    def test_prompt_arms_mask_for_next_input_line(self):
        self.guest.data_out(text="Enter the password for account bob (empty to abort):")
        self.guest.data_out(text="(a server notice arriving before the answer)")
        self.sent_in(self.guest, "my secret answer")
        self.sent_in(self.guest, "look")
        events = self.records()
        answer, after = events[-2], events[-1]
        self.assertEqual(answer["text"], MASK)
        self.assertEqual(answer["masked"], ["password_prompt"])
        self.assertEqual(after["text"], "look")

    def test_echo_off_arms_mask(self):
        self.session.data_out(text="", options={"echo": False})
        self.sent_in(self.session, "hunter2 typed blind")
        self.assertEqual(self.records()[-1]["text"], MASK)
        self.assertNoSecret(["hunter2 typed blind"])

    def test_answer_echoed_later_is_masked_and_keepalive_does_not_disarm(self):
        self.guest.data_out(text="Enter the password for account bob (empty to abort):")
        self.sent_in(self.guest, "idle")  # the webclient's keep-alive
        self.sent_in(self.guest, "s3cret-answer")
        self.guest.data_out(text="Command 's3cret-answer' is not available.")
        idle, answer, echo = self.records()[-3:]
        self.assertEqual((idle["text"], answer["text"]), ("idle", MASK))
        self.assertEqual(echo["text"], f"Command '{MASK}' is not available.")

    def test_poses_and_channels_do_not_arm(self):
        self.session.data_out(text=("Bob asks for the password?", {"type": "pose"}))
        self.session.data_out(text="[Public] Bob: what is the admin password?")
        self.sent_in(self.session, "look")
        self.assertEqual(self.records()[-1]["text"], "look")

    def test_speech_about_passwords_does_not_arm(self):
        self.session.data_out(text='Bob says, "enter your password:"')
        self.sent_in(self.session, "say what?")
        self.assertEqual(self.records()[-1]["text"], "say what?")


class TestUserMasks(AuditTestCase):
    audit_settings = {"AUDIT_MASKS": [{"apikey": r"^@?apikey\s+(?P<secret>\S+)"}]}

    def test_user_mask_applies_and_builtins_still_apply(self):
        self.sent_in(self.session, "apikey sk-live-1234")
        self.sent_in(self.guest, "connect bob hunter2pw")
        texts = [e["text"] for e in self.records()]
        self.assertEqual(texts, [f"apikey {MASK}", f"connect bob {MASK}"])
        self.assertEqual(self.records()[0]["masked"], ["apikey"])

    def test_user_masks_compile_to_linear_time_re2(self):
        config = conf.get()
        self.assertEqual(type(config.masks[0].regex).__module__.split(".")[0], "re2")
        # A pattern that makes Python's re backtrack exponentially; RE2 answers at once.
        with override_settings(AUDIT_MASKS=[{"evil": r"^(a+)+(?P<secret>b)$"}], AUDIT_CALLBACK=self.collector):
            self.sent_in(self.session, "a" * 5999 + "!")
            self.sent_in(self.session, "aaab")
            texts = [e["text"] for e in self.records()]
        self.assertEqual(texts[-2:], ["a" * 5999 + "!", f"aaa{MASK}"])

    def test_evennia6_default_masks_are_not_doubled(self):
        from evennia import settings_default

        defaults = list(getattr(settings_default, "AUDIT_MASKS", []))
        with override_settings(AUDIT_MASKS=defaults + [{"x": r"^x (?P<secret>.+)"}], AUDIT_CALLBACK=self.collector):
            self.assertEqual([m.label for m in conf.get().masks], ["x"])


class TestSettingsValidation(TempTrailMixin, EvenniaTest):
    def assertConfigError(self, fragment, **settings):
        with override_settings(**settings):
            with self.assertRaises(conf.AuditConfigError) as caught:
                conf.load()
        self.assertIn(fragment, str(caught.exception))
        return str(caught.exception)

    def test_errors_name_setting_and_value(self):
        message = self.assertConfigError("no.such.module", AUDIT_CALLBACK="no.such.module.func")
        self.assertTrue(message.startswith("AUDIT_CALLBACK = 'no.such.module.func'"))
        self.assertConfigError("has no attribute", AUDIT_CALLBACK="auditing.outputs.nothing_here")
        self.assertConfigError("not a callable", AUDIT_CALLBACK="auditing.FORMAT_VERSION")
        self.assertConfigError("AUDIT_MASKS[0]", AUDIT_MASKS=[{"bad": r"^x(?P<secret>"}])
        self.assertConfigError("(?P<secret>", AUDIT_MASKS=[{"nosecret": r"^x (.+)"}])
        self.assertConfigError("RE2", AUDIT_MASKS=[{"backref": r"^(a)\1(?P<secret>.)"}])
        self.assertConfigError("AUDIT_IN", AUDIT_IN="yes")
        self.assertConfigError("AUDIT_QUEUE_SIZE", AUDIT_QUEUE_SIZE=0)
        self.assertConfigError("AUDIT_SYSLOG", AUDIT_SYSLOG={"transport": "carrier-pigeon", "address": ("h", 1)})
        self.assertConfigError("must be a list", AUDIT_MASKS="connect")

    def test_bad_setting_logs_one_error_and_audits_nothing(self):
        collector = Collector()
        with mock.patch("evennia.utils.logger.log_err") as log_err:
            with override_settings(AUDIT_CALLBACK=collector, AUDIT_IN=True, AUDIT_MASKS=[{"x": "("}]):
                for _ in range(50):
                    self.session.data_in(text=(["look"], {}))
                self.assertIsNone(service.current().pipeline)
        messages = [call.args[0] for call in log_err.call_args_list]
        self.assertEqual(len([m for m in messages if "AUDIT_MASKS" in m]), 1)
        self.assertIn("auditing is OFF", messages[0])
        self.assertEqual(collector.events, [])

    def test_defaults(self):
        with override_settings():
            for name in ("AUDIT_CALLBACK", "AUDIT_IN", "AUDIT_OUT", "AUDIT_ALLOW_SPARSE", "AUDIT_MASKS"):
                pass
        config = conf.load()
        self.assertEqual(config.queue_size, 100_000)
        self.assertLessEqual(config.flush_interval, 1.0)


class FakeClock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


class TestFileSink(TempTrailMixin, EvenniaTest):
    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.directory, True)

    def read(self, name):
        with open(os.path.join(self.directory, name), "rb") as handle:
            return handle.read()

    def test_json_lines_mode_and_control_characters(self):
        directory = self.directory
        with override_settings(AUDIT_CALLBACK="auditing.outputs.to_file", AUDIT_LOG_DIR=directory,
                               AUDIT_IN=True, AUDIT_OUT=True):
            self.session.data_out(text="line one\nline two\r\x00\x1b[31mred\u2028sep")
            self.session.data_in(text=(['say "quotes" and \\ backslash'], {}))
            service.current().pipeline.flush()
        names = os.listdir(directory)
        self.assertEqual(len(names), 1)
        self.assertRegex(names[0], r"^audit_\d{4}-\d\d-\d\d\.log$")
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(directory, names[0])).st_mode), 0o600)
        lines = self.read(names[0]).split(b"\n")
        self.assertEqual(lines[-1], b"")
        records = [json.loads(line) for line in lines[:-1]]
        texts = [record.get("text") for record in records]
        self.assertIn("line one\nline two\r\x00\x1b[31mred\u2028sep", texts)
        self.assertIn('say "quotes" and \\ backslash', texts)
        self.assertTrue(all("objects" not in r for r in records))

    def test_day_buckets_use_event_time_and_utc(self):
        sink = FileSink(self.directory)
        before_midnight = 1_790_000_000 - (1_790_000_000 % 86400) - 0.5
        sink.write([b'{"n":1}', b'{"n":2}'], [before_midnight, before_midnight + 1])
        sink.close()
        self.assertEqual(sorted(os.listdir(self.directory)), ["audit_2026-09-20.log", "audit_2026-09-21.log"])

    def test_size_rotation_loses_and_duplicates_nothing(self):
        sink = FileSink(self.directory, max_bytes=1000, clock=FakeClock(1_790_000_000))
        records = [json.dumps({"n": n, "pad": "x" * 40}).encode() for n in range(300)]
        for start in range(0, 300, 7):
            sink.write(records[start:start + 7])
        sink.close()
        names = sorted(os.listdir(self.directory), key=lambda n: (len(n), n))
        ordered = [n for n in names if n.count(".") == 2] + ["audit_2026-09-21.log"]
        ordered = sorted(ordered[:-1], key=lambda n: int(n.split(".")[1])) + ordered[-1:]
        numbers = []
        for name in ordered:
            content = self.read(name)
            self.assertLessEqual(len(content), 1000)
            numbers.extend(json.loads(line)["n"] for line in content.splitlines())
        self.assertEqual(numbers, list(range(300)))

    def test_removed_file_and_directory_are_recreated(self):
        sink = FileSink(self.directory, clock=FakeClock(1_790_000_000))
        sink.write([b'{"n":1}'])
        shutil.rmtree(self.directory)
        sink.write([b'{"n":2}'])
        self.assertEqual(self.read("audit_2026-09-21.log"), b'{"n":2}\n')

    def test_read_only_directory_raises_sink_error(self):
        if os.geteuid() == 0:
            # root ignores permission bits: make the target a directory instead, which open() refuses.
            os.makedirs(os.path.join(self.directory, "audit_2026-09-21.log"))
        else:
            os.chmod(self.directory, 0o500)
        sink = FileSink(self.directory, clock=FakeClock(1_790_000_000))
        with self.assertRaises(SinkError) as caught:
            sink.write([b'{"n":1}'])
        self.assertEqual(caught.exception.delivered, 0)
        self.assertIn("audit_2026-09-21.log", caught.exception.cause)


class FlakySink:
    """A sink that fails while `broken` is set, and remembers what it accepted."""

    def __init__(self):
        self.broken = False
        self.accepted = []

    def write(self, records, times=None):
        if self.broken:
            raise SinkError("disk on fire", 0)
        self.accepted.extend(json.loads(r) for r in records)

    def flush(self):
        pass

    def close(self):
        pass


class FlakyOutput:
    def __init__(self):
        self.sink = FlakySink()

    def make_sink(self, config):
        return self.sink

    def __call__(self, event):  # pragma: no cover - only make_sink is used by the pipeline
        raise AssertionError


class TestPipelineFailures(TempTrailMixin, EvenniaTest):
    start_service = False  # it builds its own pipelines (a service would restart on its overrides)

    def pipeline(self, queue_size=1000, callback=None):
        with override_settings(AUDIT_CALLBACK=callback or Collector(), AUDIT_QUEUE_SIZE=queue_size):
            config = conf.load()
        self.clock = FakeClock(1_790_000_000.0)
        pipeline = Pipeline(config, clock=self.clock)  # no writer thread: driven by hand
        self.addCleanup(pipeline.stop)
        return pipeline

    def submit(self, pipeline, count, session=None):
        start = getattr(self, "submitted", 0)
        self.submitted = start + count
        for index in range(start, start + count):
            self.clock.now += 1
            pipeline.submit(capture(session or self.session, RCV, {"text": ([f"say {index}"], {})},
                                    now=self.clock))

    def test_sink_failure_counted_and_reported_on_recovery(self):
        output = FlakyOutput()
        pipeline = self.pipeline(queue_size=50, callback=output)
        with mock.patch("auditing.pipeline._log") as log:
            self.submit(pipeline, 10)
            pipeline.flush()
            output.sink.broken = True
            for _ in range(8):  # 80 events while the sink is down: 50 fit the retry buffer
                self.submit(pipeline, 10)
                pipeline.flush()
                self.clock.now += 10
            output.sink.broken = False
            self.clock.now += 10
            pipeline.flush()
        kinds = [r["kind"] for r in output.sink.accepted]
        self.assertEqual(kinds.count("io"), 60)
        loss = [r for r in output.sink.accepted if r["kind"] == "loss"]
        self.assertEqual(len(loss), 1)
        self.assertEqual(loss[0]["lost"], 30)
        self.assertEqual(loss[0]["cause"], "disk on fire")
        self.assertLess(loss[0]["first_time"], loss[0]["last_time"])
        errors = [c.args[1] for c in log.call_args_list if c.args[0] == "err"]
        self.assertEqual(len(errors), 1, errors)  # logged once, not per event
        self.assertIn("disk on fire", errors[0])
        self.assertEqual(pipeline.stats()["lost"], 30)
        # what was delivered is in order and has no duplicates
        texts = [r["text"] for r in output.sink.accepted if r["kind"] == "io"]
        self.assertEqual(texts, [f"say {i}" for i in range(10)] + [f"say {i}" for i in range(40, 90)])

    def test_queue_full_counted_with_a_loss_record(self):
        collector = Collector()
        pipeline = self.pipeline(queue_size=100, callback=collector)
        with mock.patch("auditing.pipeline._log"):
            self.submit(pipeline, 150)
            pipeline.flush()
        self.assertEqual(len(collector.io()), 100)
        loss = [e for e in collector.events if e["kind"] == "loss"]
        self.assertEqual([e["lost"] for e in loss], [50])
        self.assertIn("AUDIT_QUEUE_SIZE=100", loss[0]["cause"])

    def test_failing_callback_does_not_stop_others(self):
        seen = []

        def picky(event):
            if "say 3" == event.get("text"):
                raise ValueError("cannot store this one")
            seen.append(event)

        pipeline = self.pipeline(callback=picky)
        with mock.patch("auditing.pipeline._log"):
            self.submit(pipeline, 6)
            pipeline.flush()
        texts = [e.get("text") for e in seen if e["kind"] == "io"]
        self.assertEqual(texts, ["say 0", "say 1", "say 2", "say 4", "say 5"])
        self.assertEqual([e["lost"] for e in seen if e["kind"] == "loss"], [1])

    def test_stop_flushes_everything_queued(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        with override_settings(AUDIT_CALLBACK="auditing.outputs.to_file", AUDIT_LOG_DIR=directory,
                               AUDIT_FLUSH_INTERVAL=30.0):
            pipeline = Pipeline(conf.load()).start()
        for index in range(5000):
            pipeline.submit(capture(self.session, RCV, {"text": ([f"n{index}"], {})}))
        pipeline.stop()
        lines = []
        for name in os.listdir(directory):
            with open(os.path.join(directory, name), "rb") as handle:
                lines.extend(handle.read().splitlines())
        self.assertEqual(len(lines), 5000)
        # events after stop are still written, on the caller's thread
        pipeline.submit(capture(self.session, RCV, {"text": (["late"], {})}))
        with open(os.path.join(directory, os.listdir(directory)[0]), "rb") as handle:
            self.assertIn(b'"late"', handle.read())


class TestLifecycle(AuditTestCase):
    """Lifecycle records from the session's hooks and Evennia's signals, with real commands."""

    def setUp(self):
        super().setUp()
        self.game_input.side_effect = evennia.SESSION_HANDLER.__class__.call_inputfuncs.__get__(
            evennia.SESSION_HANDLER
        )  # really execute commands here

    def kinds(self, conn):
        self.flush()
        return [(e["kind"], e.get("tried_account")) for e in self.collector.events
                if e.get("conn") == conn and e["kind"] != "io"]

    def test_connect_record_and_failed_logins(self):
        fresh = self.new_unauthenticated_session(sessid=3)
        self.account.set_password("right-password-1")
        self.account.save()
        self.sent_in(fresh, f"connect {self.account.key} wrong-password-1")
        self.sent_in(fresh, "connect nosuchaccount wrong-password-2")
        self.sent_in(fresh, "connect lonewordpassword")
        kinds = self.kinds(fresh.audit_conn)
        self.assertEqual(
            kinds,
            [("connect", None), ("login_fail", self.account.key), ("login_fail", "nosuchaccount")],
        )
        self.assertNoSecret(["wrong-password-1", "wrong-password-2", "lonewordpassword"])

    def test_login_puppet_logout_disconnect(self):
        fresh = self.new_unauthenticated_session(sessid=4)
        evennia.SESSION_HANDLER.login(fresh, self.account2, testmode=True)
        self.char2.locks.remove("puppet")  # (adding over it writes a lock warning to the game's logs)
        self.char2.locks.add("puppet:all()")
        self.account2.puppet_object(fresh, self.char2)
        conn = fresh.audit_conn
        evennia.SESSION_HANDLER.disconnect.side_effect = None
        type(evennia.SESSION_HANDLER).disconnect(evennia.SESSION_HANDLER, fresh, reason="quit", sync_portal=False)
        self.flush()
        records = [e for e in self.collector.events if e.get("conn") == conn and e["kind"] != "io"]
        self.assertEqual(
            [e["kind"] for e in records],
            ["connect", "login", "puppet", "unpuppet", "logout", "disconnect"],
        )
        self.assertEqual(records[1]["account"], f"{self.account2.key}{self.account2.dbref}")
        self.assertEqual(records[2]["puppet"], f"{self.char2.key}{self.char2.dbref}")
        self.assertEqual(records[4]["account"], records[1]["account"])
        self.assertEqual(records[5]["reason"], "quit")
        seqs = [e["seq"] for e in self.collector.events if e.get("conn") == conn]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))  # gapless per connection

    def rebuilt(self, session, conn_time_shift=0):
        """The session as the next server process rebuilds it from the portal's copy."""
        data = session.get_sync_data()
        data["conn_time"] += conn_time_shift
        rebuilt = AuditedServerSession()
        rebuilt.load_sync_data(data)
        rebuilt.sessionhandler = evennia.SESSION_HANDLER
        return rebuilt

    def state_file(self):
        from .registry import STATE_FILE

        return os.path.join(self.trail_dir, STATE_FILE)

    def test_connection_ids_carried_across_a_reload(self):
        # (logged in, only game-authored output arms: a menu's question)
        self.session.data_out(text=("Enter your password:", {"type": "menu"}))
        self.flush()
        before = (self.session.audit_conn, self.session.audit_seq)
        service.current().stop()  # what a reload does: drained, then the open connections saved
        self.assertEqual(stat.S_IMODE(os.stat(self.state_file()).st_mode), 0o600)
        following = service.start(conf.load())  # the next server process
        rebuilt = self.rebuilt(self.session)
        following.opened(rebuilt)
        self.assertEqual((rebuilt.audit_conn, rebuilt.audit_seq), before)
        # ... and so does a password prompt that was waiting for its answer
        self.assertEqual(following.pipeline.builder.state(before[0]).armed_by, "password_prompt")
        self.assertFalse(os.path.exists(self.state_file()))
        # A new connection that reuses the session number gets a new id.
        other = self.rebuilt(self.session, conn_time_shift=1)
        following.opened(other)
        self.assertNotEqual(other.audit_conn, before[0])

    def test_connection_closed_during_a_reload_gets_its_disconnect(self):
        gone = self.new_unauthenticated_session(sessid=5)
        conn = gone.audit_conn
        service.current().stop()
        evennia.SESSION_HANDLER.pop(5)  # it closed while no server process ran
        following = service.start(conf.load())
        following.opened(self.rebuilt(self.session))
        following.close_leftovers()
        self.flush()
        mine = [e for e in self.collector.events if e.get("conn") == conn]
        self.assertEqual([e["kind"] for e in mine][-1], "disconnect")
        self.assertEqual(mine[-1]["reason"], service.RELOAD_REASON)
        seqs = [e["seq"] for e in mine]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))

    def test_after_a_crash_open_connections_get_a_disconnect_and_new_ids(self):
        live = service.current()
        conn = self.session.audit_conn
        account = f"{self.account.key}#{self.account.id}"
        # While the server runs, the state file follows the open connections (not marked clean);
        # then kill -9: no stop, no clean save. The next process takes the file back.
        live._write_snapshot(live.registry.snapshot(evennia.SESSION_HANDLER.values()))
        following = service.AuditService(conf.load())
        self.assertIsNone(following.registry.load())
        self.assertFalse(following.registry.previous_clean)
        rebuilt = self.rebuilt(self.session)
        following.opened(rebuilt)  # the portal kept this one
        following.close_leftovers()  # the guest's connection did not come back
        self.assertTrue(following.pipeline.flush())
        old = [e for e in self.collector.events if e.get("conn") == conn and e["kind"] != "io"]
        self.assertEqual([e["kind"] for e in old][-2:], ["logout", "disconnect"])
        self.assertEqual(old[-1]["reason"], service.CRASH_REASON)
        self.assertEqual(old[-2]["account"], account)
        self.assertNotEqual(rebuilt.audit_conn, conn)
        resumed = [e for e in self.collector.events if e.get("conn") == rebuilt.audit_conn]
        self.assertEqual(resumed[0]["kind"], "connect")
        self.assertEqual(resumed[0]["resumed_from"], conn)
        guest = [e for e in self.collector.events if e.get("conn") == self.guest.audit_conn]
        self.assertEqual(guest[-1]["kind"], "disconnect")
        self.assertEqual(guest[-1]["reason"], service.CRASH_REASON)

    def test_state_file_refuses_a_planted_symlink(self):
        target = os.path.join(self.trail_dir, "victim")
        with open(target, "w") as handle:
            handle.write("keep me")
        os.symlink(target, self.state_file())
        live = service.current()
        live._write_snapshot(live.registry.snapshot(evennia.SESSION_HANDLER.values()))
        with open(target) as handle:
            self.assertEqual(handle.read(), "keep me")  # the symlink was replaced, not followed
        self.assertFalse(os.path.islink(self.state_file()))
        os.unlink(self.state_file())
        os.symlink(target, self.state_file())
        self.assertIn("cannot read", live.registry.load())  # a planted link is refused, and said


class TestLossRecords(TempTrailMixin, EvenniaTest):
    start_service = False  # it builds its own pipeline (a service would restart on its overrides)

    def test_loss_record_written_even_when_no_event_follows(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        with override_settings(AUDIT_CALLBACK="auditing.outputs.to_file", AUDIT_LOG_DIR=directory,
                               AUDIT_QUEUE_SIZE=1000):
            pipeline = Pipeline(conf.load())  # no writer thread: nothing drains during the burst
        with mock.patch("auditing.pipeline._log"):
            for index in range(5000):
                pipeline.submit(capture(self.session, RCV, {"text": ([f"n{index}"], {})}))
            pipeline.stop()
        records = []
        for name in os.listdir(directory):
            with open(os.path.join(directory, name), "rb") as handle:
                records.extend(json.loads(line) for line in handle.read().splitlines())
        io = [r for r in records if r["kind"] == "io"]
        loss = [r for r in records if r["kind"] == "loss"]
        self.assertEqual(len(io), 1000)  # the queue's capacity, none pushed out by the loss record
        self.assertEqual([r["lost"] for r in loss], [4000])
        self.assertEqual(pipeline.stats()["lost"], 4000)
        self.assertEqual(len(io) + loss[0]["lost"], 5000)  # every event accounted for
