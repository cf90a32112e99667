"""
Tests of the in-game `audit` command against real Evennia sessions of our class, with the real file
sink writing to a temporary directory: what the command shows is read back from those files.

They create their own audited sessions, so they pass under Evennia's default test settings and under
the game's (`evennia test --settings settings.py auditing.test_commands`).
"""

import re
import shutil
import tempfile
import threading
import unittest
from unittest import mock

import evennia
from django.test import override_settings
from evennia.utils.test_resources import EvenniaTest
from twisted.internet import defer, threads

from . import commands, service, trail
from .commands import CmdAudit
from .scrub import MASK
from .server import AuditedServerSession
from .testing import requires_servers
from .testing.base import TempTrailMixin

LIVE_MARKUP = re.compile(r"(?<!\|)(?:\|\|)*\|l[ctu]")  # an unescaped link code


class CommandTestCase(TempTrailMixin, EvenniaTest):
    """Staff (account, Developer) looks at account2 through the command; records go to real files.

    The sessions are audited ones whatever SERVER_SESSION_CLASS says, and the trail is a temporary
    directory (`TempTrailMixin`).
    """

    def setUp(self):
        super().setUp()
        self.dir = self.trail_dir
        override = override_settings(AUDIT_CALLBACK="auditing.outputs.to_file")
        override.enable()
        self.addCleanup(override.disable)
        patcher = mock.patch.object(evennia.SESSION_HANDLER, "call_inputfuncs")  # the trail, not the game
        patcher.start()
        self.addCleanup(patcher.stop)
        self.threads = []
        self.defer_patcher = mock.patch.object(commands, "defer_to_thread", self.in_a_thread)
        self.defer_patcher.start()
        self.addCleanup(self.defer_patcher.stop)
        self.staff = self.audited_session(sessid=20)
        evennia.SESSION_HANDLER.login(self.staff, self.account, testmode=True)

    def in_a_thread(self, function):
        """deferToThread without a running reactor: a real other thread, joined; its result as a Deferred."""
        result = {}

        def run():
            result["ident"] = threading.get_ident()
            try:
                result["value"] = function()
            except Exception as error:  # handed to the errback like deferToThread does
                result["error"] = error

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(30)
        self.threads.append(result["ident"])
        return defer.fail(result["error"]) if "error" in result else defer.succeed(result["value"])

    def audited_session(self, sessid):
        dummy = AuditedServerSession()
        dummy.init_session("telnet", ("127.0.0.9", 4000 + sessid), evennia.SESSION_HANDLER)
        dummy.sessid = sessid
        evennia.SESSION_HANDLER.portal_connect(dummy.get_sync_data())
        self.addCleanup(evennia.SESSION_HANDLER.pop, sessid, None)
        return evennia.SESSION_HANDLER.session_from_sessid(sessid)

    def typed(self, session, line):
        session.data_in(text=([line], {}))

    def leave(self, session):
        """The player quits: disconnect as Evennia does, so the trail gets logout and disconnect."""
        type(evennia.SESSION_HANDLER).disconnect(evennia.SESSION_HANDLER, session, reason="quit", sync_portal=False)

    def player_session(self, sessid=21):
        """account2 connects, logs in (typing its password) and plays a little."""
        target = self.audited_session(sessid)
        self.typed(target, f"connect {self.account2.key} hunter2pw")
        evennia.SESSION_HANDLER.login(target, self.account2, testmode=True)
        self.typed(target, "say the eagle has landed")
        target.data_out(text='You say, "the eagle has landed"')
        return target

    def flush(self):
        self.assertTrue(service.current().pipeline.flush())

    def audit(self, args):
        """Run `audit<args>` as the staff account; the text it sent."""
        command = CmdAudit()
        received = []
        with mock.patch.object(type(self.account), "msg", lambda obj, text=None, **kw: received.append(text)):
            command.caller = self.account
            command.account = self.account
            command.session = self.staff
            command.cmdname = "audit"
            command.raw_string = f"audit{args}"
            command.args = args
            command.cmdset = None
            self.assertTrue(command.access(self.account, "cmd"))
            command.parse()
            command.func()
        return "\n".join(str(text) for text in received)

    def views(self):
        self.flush()
        return [r for r in trail.read(self.dir) if r.get("kind") == "audit_view"]

    def tearDown(self):
        for sessid in (20, 21, 22):  # leave the accounts without sessions, so its deletion needs no portal
            session = evennia.SESSION_HANDLER.get(sessid)
            if session is not None:
                session.logged_in = False
                evennia.SESSION_HANDLER.pop(sessid, None)
        super().tearDown()


class TestAccess(CommandTestCase):
    def test_default_lock_refuses_players_and_admits_admins(self):
        self.account2.permissions.remove("Developer")
        self.account2.permissions.add("Player")
        self.char2.account = self.account2
        self.assertFalse(CmdAudit().access(self.char2, "cmd"))
        self.account.permissions.add("Admin")
        self.assertTrue(CmdAudit().access(self.char1, "cmd"))

    def test_lock_is_configurable(self):
        with override_settings(AUDIT_COMMAND_LOCK="cmd:perm(Builder)"):
            self.assertEqual(str(CmdAudit().locks), "cmd:perm(Builder)")

    def test_reads_off_the_reactor_thread_by_default(self):
        self.assertIs(self.defer_patcher.temp_original, threads.deferToThread)  # patched only here


class TestHistoryFromTheTrail(CommandTestCase):
    def test_records_scrubbed_with_the_shared_legend_and_use_recorded(self):
        self.player_session()
        shown = self.audit(f" {self.account2.key}")
        self.assertNotIn("hunter2pw", shown)
        self.assertIn("> say the eagle has landed", shown)  # > typed, as in the CLI
        self.assertIn('< You say, "the eagle has landed"', shown)  # < shown by the game
        self.assertIn("> typed by the player, < shown by the game", shown)
        self.assertTrue(self.threads and all(ident != threading.get_ident() for ident in self.threads))
        key = f"{self.account2.key}{self.account2.dbref}"
        self.assertEqual([(v["mode"], v["target"], v["account"]) for v in self.views()],
                         [("records", key, f"{self.account.key}{self.account.dbref}")])

    def test_history_survives_a_reload(self):
        self.player_session()
        self.flush()
        service.start()  # what a reload does to the process's memory: nothing of it is left
        shown = self.audit(f" {self.account2.key}")
        self.assertIn("> say the eagle has landed", shown)

    def test_limit_and_budget(self):
        target = self.player_session()
        for n in range(10):
            self.typed(target, f"look {n}")
        shown = self.audit(f" {self.account2.key} = 3")
        self.assertEqual(len(re.findall(r"^\|w\d{4}-", shown, re.M)), 3)
        self.assertIn("> look 9", shown)
        with mock.patch.object(commands, "READ_BUDGET", 0.0):
            shown = self.audit(f" {self.account2.key}")
        self.assertIn("stopped after 0 s", shown)

    def test_player_markup_and_control_characters_are_inert(self):
        target = self.player_session()
        self.typed(target, "say |lcquit|ltclick me|le|/2026-01-01 00:00:00 > forged \x1b]0;title\x07")
        shown = self.audit(f" {self.account2.key}")
        self.assertIn("||lcquit||ltclick me||le||/2026-01-01", shown)
        self.assertIsNone(LIVE_MARKUP.search(shown))
        self.assertNotIn("\x1b", shown)
        self.assertIn("^[]0;title^G", shown)

    def test_unknown_name(self):
        shown = self.audit(" nobody-like-this")
        self.assertIn("No records of nobody-like-this", shown)


class TestTranscript(CommandTestCase):
    def test_current_connection(self):
        target = self.player_session()
        shown = self.audit(f"/transcript {self.account2.key}")
        self.assertIn("current connection", shown)
        self.assertIn(target.audit_conn, shown)
        self.assertIn(f"> connect {self.account2.key} {MASK}", shown)  # from before the login
        self.assertIn('< You say, "the eagle has landed"', shown)
        self.assertNotIn("hunter2pw", shown)
        self.assertEqual([v["mode"] for v in self.views()], ["transcript"])

    def test_a_player_who_has_left_gets_the_last_connection(self):
        first = self.player_session(sessid=21)
        self.leave(first)
        second = self.player_session(sessid=22)
        self.typed(second, "say second visit")
        self.leave(second)
        shown = self.audit(f"/transcript {self.account2.key}")
        self.assertIn("last connection (not connected now)", shown)
        self.assertIn(second.audit_conn, shown)
        self.assertIn("> say second visit", shown)
        self.assertIn("*** disconnect", shown)
        self.assertNotIn(first.audit_conn, shown)


class TestSessions(CommandTestCase):
    def test_connections_listed_like_the_cli(self):
        first = self.player_session(sessid=21)
        self.leave(first)
        second = self.player_session(sessid=22)
        shown = self.audit(f"/sessions {self.account2.key}")
        lines = shown.splitlines()
        self.assertIn("Last 2 connection(s)", lines[0])
        self.assertEqual(lines[1].split()[:4], ["START", "END", "DURATION", "CONN"])
        key = f"{self.account2.key}{self.account2.dbref}"
        one = next(line for line in lines if first.audit_conn in line)
        self.assertRegex(one, rf"{first.audit_conn}\s+{re.escape(key)}\s+-\s+127\.0\.0\.9\s+telnet\s+quit\s+\d+")
        two = next(line for line in lines if second.audit_conn in line)
        self.assertIn("(no disconnect yet)", two)
        from . import render
        found = trail.sessions(r for r in trail.read(self.dir) if r.get("conn") == first.audit_conn)
        self.assertIn(str(found[0].records), one.split()[-1])
        self.assertEqual(render.session_row(found[0])[-1], one.split()[-1])
        self.assertEqual([v["mode"] for v in self.views()], ["sessions"])


class TestStats(CommandTestCase):
    def test_stats_show_counters_and_the_trail_directory(self):
        self.typed(self.staff, "look")
        shown = self.audit("/stats")
        self.assertRegex(shown, r"delivered\s+\d+")
        self.assertRegex(shown, r"lost\s+0")
        self.assertIn(self.dir, shown)


# The game's commands/default_cmdsets.py gets the command, as the README says to add it.
ADD_COMMAND = """

# added by auditing.test_commands: the audit command for staff
from auditing.commands import CmdAudit as _CmdAudit

_account_cmdset_creation = AccountCmdSet.at_cmdset_creation


def _with_audit(self):
    _account_cmdset_creation(self)
    self.add(_CmdAudit())


AccountCmdSet.at_cmdset_creation = _with_audit
"""


@requires_servers
class TestInARunningGame(unittest.TestCase):
    """A real game: bob plays and leaves, the server reloads, an admin reads bob's history in game
    (through the real reactor and deferToThread)."""

    def test_history_after_a_reload_inert_and_recorded(self):
        import os

        from .testing.clients import TelnetClient
        from .testing.game import GameServer

        tmp = tempfile.mkdtemp(prefix="audit-cmd-e2e-")
        self.addCleanup(shutil.rmtree, tmp, True)
        game = GameServer(tmp, name="cmdgame", stop_at_exit=True)
        game.create()
        self.addCleanup(game.stop)
        with open(os.path.join(game.game_dir, "commands", "default_cmdsets.py"), "a") as handle:
            handle.write(ADD_COMMAND)
        game.migrate()
        admin_pw, bob_pw = "adm1n-Pw-e2e", "b0b-Pw-e2e"
        game.start(superuser=("admin", admin_pw))
        with TelnetClient("127.0.0.1", game.telnet_port) as bob:
            bob.read_until("<password>")
            bob.send_line(f"create bob {bob_pw}")
            bob.read_until("[Y]/N?")
            bob.send_line("y")
            bob.read_until("was created")
            bob.send_line(f"connect bob {bob_pw}")
            bob.read_until("You become bob")
            bob.send_line("say hi |rred|n |/2020-01-01 00:00:00 > forged")
            bob.read_until("You say")
            bob.send_line("quit")
            bob.read_available(0.5)
        game.reload()  # nothing of the process's memory is left: the history is in the files
        with TelnetClient("127.0.0.1", game.telnet_port) as admin:
            admin.read_until("<password>")
            admin.send_line(f"connect admin {admin_pw}")
            admin.read_until("You become admin")
            admin.read_available(0.3)
            admin.send_line("audit/transcript bob")
            shown = admin.read_until(re.compile(r"\*\*\* disconnect[^\n]*reason=quit"), timeout=20)
            admin.send_line("audit/sessions bob")
            sessions = admin.read_until(re.compile(r"\d+ records|RECORDS[^\n]*\n[^\n]*quit"), timeout=20)
        self.assertIn("last connection (not connected now)", shown)
        recorded = [r["text"] for r in game.wait_audit_quiet(quiet=0.5, timeout=10) if r.get("direction") == "RCV"]
        self.assertIn("say hi |rred|n |/2020-01-01 00:00:00 > forged", recorded)
        # shown as typed, on one line: neither a colour nor a line break (a forged record line)
        self.assertIn("> say hi |rred|n |/2020-01-01 00:00:00 > forged", shown)
        self.assertIn("> __unloggedin_look_command (sent by the server)", shown)
        self.assertIn(f"> connect bob {MASK}", shown)
        self.assertNotIn(bob_pw, shown)
        self.assertIn("bob#", sessions)
        records = game.wait_audit_quiet(quiet=0.5, timeout=10)
        views = [(r["mode"], r["target"].split("#")[0]) for r in records if r.get("kind") == "audit_view"]
        self.assertEqual(views, [("transcript", "bob"), ("sessions", "bob")])
