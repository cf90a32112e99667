"""
End-to-end test: a real Evennia game (created in a temp dir with auditing.testing.game), real telnet
and websocket clients, and the audit file read back record by record.

Run with `make test-py311 TESTS=auditing.test_e2e` (the game that `evennia test` runs in is not the one
under test: this test creates and starts its own, and always stops it).

Environment knobs (development only):
  AUDIT_E2E_KEEP=1            keep the temp game directory (it is printed)
  AUDIT_E2E_SESSION_CLASS=... SERVER_SESSION_CLASS of the game under test ("default" = Evennia's own)

The session: bob creates an account over telnet, logs in, looks, says hello, changes his password;
the superuser logs in over the websocket and changes bob's password (bob is told the new one); a
second telnet connection fails to log in as bob; the server is reloaded (bob stays connected) and bob
speaks again; both quit. Then the audit file is checked record by record and byte by byte.
"""

import json
import os
import re
import shutil
import sys
import tempfile
import time
import unittest

from auditing.testing.checks import leak_forms, plain, strings_in
from auditing.testing.clients import TelnetClient, WebClient
from auditing.testing.game import AUDITED_SESSION_CLASS, GameServer
from auditing.testing import requires_servers

MASK = "********"

# Awkward passwords: shell/regex metacharacters, a backslash, non-ASCII. (No '=', ',' or spaces:
# Evennia's `password a = b` and `connect name pw` parsers split on those.)
ADMIN_PW = "Ädm1n-$ecret^(e2e)\\q"
BOB_PW1 = "pa$$^(w)rd\\x"
BOB_PW2 = "ünïcødé-påss★42"
BOB_PW3 = "n3w€r-[pw]*.+?\\t"
WRONG_PW = "wr0ng-guess-✗%s{}"
PASSWORDS = [ADMIN_PW, BOB_PW1, BOB_PW2, BOB_PW3, WRONG_PW]

TELNET = "telnet"
# Evennia's portal WebSocketClient sets protocol_key "webclient/websocket" in __init__, then
# init_session("websocket", ...) overwrites it: the server-side session reports "websocket".
WEBSOCKET = "websocket"
WEBSOCKET_KEYS = ("websocket", "webclient/websocket")
# what Evennia itself feeds a new session as input (settings.CMD_LOGINSTART): not typed by anyone
SYNTHETIC_INPUTS = ("__unloggedin_look_command",)
ROOM = "Limbo#2"


def _session_class():
    value = os.environ.get("AUDIT_E2E_SESSION_CLASS", AUDITED_SESSION_CLASS)
    return None if value in ("", "default") else value


@requires_servers
class AuditEndToEndTest(unittest.TestCase):
    """One scripted play session against a live server; each test checks one property of the trail."""

    game = None
    sent = []  # (client label, protocol, typed text, acceptable recorded texts)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.t0 = time.monotonic()
        cls.tmp = tempfile.mkdtemp(prefix="audit-e2e-")
        cls.addClassCleanup(cls._cleanup)
        cls.game = GameServer(cls.tmp, name="e2egame", session_class=_session_class(),
                              stop_at_exit=True)
        cls.game.create()
        cls.game.migrate()
        cls.game.start(superuser=("admin", ADMIN_PW))
        cls.t_ready = time.monotonic()
        cls.sent = []
        cls.transcripts = {}
        try:
            cls._play()
        except (OSError, TimeoutError) as err:  # a client step failed: say what the server said
            raise AssertionError(f"scripted session failed: {err}\n"
                                 f"{cls.game.diagnostics('server state')}") from err
        cls.t_played = time.monotonic()
        cls.records = cls.game.wait_audit_quiet(quiet=1.0, timeout=15)
        cls.raw = cls.game.read_audit_bytes()
        cls._summary()

    @classmethod
    def _cleanup(cls):
        if cls.game is not None:
            cls.game.stop()
        if os.environ.get("AUDIT_E2E_KEEP"):
            sys.stderr.write(f"\n[e2e] kept game directory {cls.tmp}\n")
        else:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ the scripted session
    @classmethod
    def _type(cls, client, protocol, text, expect, timeout=10):
        """Send one line, remember what the audit should record, wait for `expect` in the output."""
        cls.sent.append((client.label, protocol, text, cls.acceptable(text)))
        client.send_line(text)
        return client.read_until(expect, timeout=timeout) if expect else ""

    @classmethod
    def _play(cls):
        port = cls.game.telnet_port
        t = cls._type
        with TelnetClient("127.0.0.1", port) as bob, WebClient(cls.game.websocket_port) as web, \
                TelnetClient("127.0.0.1", port) as intruder:
            bob.label, web.label, intruder.label = "bob", "web", "intruder"
            try:
                bob.read_until("<password>")
                t(bob, TELNET, f"create bob {BOB_PW1}", "[Y]/N?")
                t(bob, TELNET, "y", "was created")
                t(bob, TELNET, f"connect bob {BOB_PW1}", re.compile(r"You become bob"))
                bob.read_available(0.3)
                t(bob, TELNET, "look", "Limbo")
                t(bob, TELNET, "say hello", 'You say, "hello"')
                t(bob, TELNET, f"password {BOB_PW1} = {BOB_PW2}", "Password changed.")

                web.read_until("<password>")
                t(web, WEBSOCKET, f"connect admin {ADMIN_PW}", re.compile(r"You become admin"))
                web.read_available(0.3)
                t(web, WEBSOCKET, f"userpassword bob = {BOB_PW3}", "new password set to")
                # bob is told the new password too (output scrubbing must catch it)
                bob.read_until("has changed your password")
                t(web, WEBSOCKET, "say all done here", 'You say, "all done here"')

                intruder.read_until("<password>")
                t(intruder, TELNET, f"connect bob {WRONG_PW}", re.compile(r"incorrect", re.I))

                # `evennia reload`: the portal keeps bob's connection; the audit must keep its
                # conn id and continue its seq (the server process and session object are new)
                cls.game.reload()
                bob.read_available(0.3)
                t(bob, TELNET, "say after reload", 'You say, "after reload"')

                t(bob, TELNET, "quit", None)
                t(web, WEBSOCKET, "quit", None)
                for client in (bob, web, intruder):
                    client.read_available(0.3)
            finally:
                cls.transcripts = {"bob": bob.transcript(), "web": web.transcript(),
                                   "intruder": intruder.transcript()}

    @classmethod
    def _summary(cls):
        recs = cls.records
        io = [r for r in recs if r.get("kind") == "io"]
        rcv = [r for r in io if r.get("direction") == "RCV"]
        snd = [r for r in io if r.get("direction") == "SND"]
        life = [r for r in recs if r.get("kind") not in ("io", "loss")]
        loss = [r for r in recs if r.get("kind") == "loss"]
        matched = sum(1 for *_, want in cls.sent if any(r.get("text") in want for r in rcv))
        synthetic = sum(1 for r in rcv if r.get("text") in SYNTHETIC_INPUTS)
        version = next((r.get("version") for r in recs if r.get("version")), "?")
        sys.stderr.write(
            f"\n[e2e] Evennia {version}: {len(cls.sent)} inputs sent -> {len(rcv)} RCV records "
            f"({matched}/{len(cls.sent)} typed inputs matched, {synthetic} synthetic "
            f"{SYNTHETIC_INPUTS[0]}), {len(snd)} SND, {len(life)} lifecycle, "
            f"{len(loss)} loss; {len(recs)} records in {len(cls.game.audit_files())} file(s), "
            f"{len(cls.raw)} bytes; ready in {cls.t_ready - cls.t0:.1f}s ("
            + ", ".join(f"{k} {v:.1f}s" for k, v in cls.game.timings.items())
            + f"), played in {cls.t_played - cls.t_ready:.1f}s\n"
        )

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def acceptable(typed):
        """
        The recorded forms of a typed line: each password replaced by the mask, or everything from
        the first password on replaced by one mask (as Evennia's own AUDIT_MASKS do for
        `password old = new`). A line without a password must be recorded verbatim.
        """
        each = typed
        for secret in PASSWORDS:
            each = each.replace(secret, MASK)
        if each == typed:
            return frozenset([typed])
        first = min(typed.index(s) for s in PASSWORDS if s in typed)
        return frozenset([each, typed[:first] + MASK])

    def io(self, direction=None):
        return [r for r in self.records if r.get("kind") == "io"
                and (direction is None or r.get("direction") == direction)]

    def rcv_for(self, recorded):
        if isinstance(recorded, str):
            recorded = self.acceptable(recorded) if MASK not in recorded else {recorded}
        return [r for r in self.io("RCV") if r.get("text") in recorded]

    def dump(self, records):
        return "\n".join(json.dumps(r, ensure_ascii=False)[:300] for r in records)

    # ------------------------------------------------------------------ tests
    def test_audit_file_exists_and_is_jsonl(self):
        files = self.game.audit_files()
        self.assertTrue(files, f"no audit_*.log in {self.game.audit_dir}")
        self.assertTrue(self.records, "audit files hold no records")
        for record in self.records:
            self.assertEqual(record.get("v"), 1, record)
            self.assertIn("kind", record)

    def test_both_directions(self):
        self.assertTrue(self.io("RCV"), "no RCV records")
        self.assertTrue(self.io("SND"), "no SND records")

    def conns_of_clients(self):
        """
        {client label: [conn id, ...]}: the connection(s) whose typed-input RCV records are exactly
        that client's inputs, in order (synthetic inputs left out). Normally one conn per client;
        a conn id that changed mid-connection (e.g. across a reload) shows up as two, which only
        test_conn_survives_reload fails on. Fails the test if no such split exists.
        """
        by_conn = {}
        for record in self.io("RCV"):
            if record.get("text") not in SYNTHETIC_INPUTS:
                by_conn.setdefault(record.get("conn"), []).append(record)

        def split(wanted, free):
            if not wanted:
                return []
            for conn in free:
                recs = by_conn[conn]
                if len(recs) <= len(wanted) and all(
                        r.get("text") in w[3] for r, w in zip(recs, wanted)):
                    rest = split(wanted[len(recs):], [c for c in free if c != conn])
                    if rest is not None:
                        return [conn] + rest
            return None

        out, problems, free = {}, [], list(by_conn)
        for label in dict.fromkeys(entry[0] for entry in self.sent):
            wanted = [entry for entry in self.sent if entry[0] == label]
            conns = split(wanted, free)
            if conns is None:
                problems.append(f"{label}: typed {[w[2] for w in wanted]!r}; no connection(s) "
                                f"recorded exactly that, in order")
            else:
                out[label] = conns
                free = [c for c in free if c not in conns]
        if problems:
            problems.append("RCV records by connection: " + json.dumps(
                {c: [r.get("text") for r in recs] for c, recs in by_conn.items()}, ensure_ascii=False))
        self.assertFalse(problems, "\n".join(problems))
        return out

    def test_protocols(self):
        protocols = {r.get("protocol") for r in self.io()}
        self.assertIn(TELNET, protocols)
        self.assertTrue(protocols & set(WEBSOCKET_KEYS), protocols)
        conns = self.conns_of_clients()
        for label, protocol, _typed, _want in self.sent:
            keys = WEBSOCKET_KEYS if protocol == WEBSOCKET else (protocol,)
            for record in self.io():
                if record.get("conn") in conns[label]:
                    self.assertIn(record.get("protocol"), keys, record)

    def test_each_input_recorded_once_masked(self):
        """Every typed line has exactly one RCV record, on its own connection, in order, masked."""
        conns = self.conns_of_clients()
        mine = {c for cs in conns.values() for c in cs}
        total = sum(1 for r in self.io("RCV") if r.get("text") not in SYNTHETIC_INPUTS)
        self.assertEqual(total, len(self.sent), "RCV records that nobody typed: " + self.dump(
            [r for r in self.io("RCV") if r.get("conn") not in mine
             and r.get("text") not in SYNTHETIC_INPUTS]))
        for label, _protocol, typed, want in self.sent:
            if typed not in want:  # a password was masked: the record says so
                for record in self.io("RCV"):
                    if record.get("conn") in conns[label] and record.get("text") in want:
                        self.assertTrue(record.get("masked"), f"masked input without 'masked': {record}")

    def test_conn_survives_reload(self):
        """bob typed before and after `evennia reload` on one TCP connection: one conn id."""
        conns = self.conns_of_clients()
        self.assertEqual(len(conns["bob"]), 1, f"bob's conn id changed across the reload: "
                                               f"{conns['bob']}")
        after = [r for r in self.rcv_for("say after reload") if r.get("conn") in conns["bob"]]
        self.assertEqual(len(after), 1, self.dump(self.rcv_for("say after reload")))
        self.assertRegex(after[0].get("account", ""), r"^bob#\d+$", after[0])
        self.assertEqual(after[0].get("room"), ROOM, after[0])
        pids = {r.get("pid") for r in self.records if r.get("conn") in conns["bob"]}
        self.assertGreaterEqual(len(pids), 2, f"bob's records all from one server pid: {pids}")

    def test_post_login_records_have_account_character_room(self):
        for recorded, account in (("look", r"bob#\d+"), ("say hello", r"bob#\d+"),
                                  ("say all done here", r"admin#1")):
            found = self.rcv_for(recorded)
            self.assertEqual(len(found), 1, f"{recorded!r}: {self.dump(found)}")
            record = found[0]
            self.assertRegex(record.get("account", ""), "^" + account + "$", record)
            self.assertRegex(record.get("character", ""), "^" + account + "$", record)
            self.assertEqual(record.get("room"), ROOM, record)
        # and on the game's answers to them
        says = [r for r in self.io("SND") if 'You say, "hello"' in plain(r.get("text"))]
        self.assertTrue(says, "no SND record of bob's say")
        self.assertRegex(says[0].get("account", ""), r"^bob#\d+$", says[0])
        self.assertEqual(says[0].get("room"), ROOM, says[0])
        # before login there is no account
        found = self.rcv_for(f"create bob {BOB_PW1}")
        self.assertEqual(len(found), 1, self.dump(found))
        self.assertNotIn("account", found[0])

    def test_common_fields(self):
        for record in self.io():
            for key in ("time", "direction", "protocol", "session", "conn", "seq", "pid"):
                self.assertIn(key, record, record)
            self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
            self.assertEqual(record.get("ip"), "127.0.0.1", record)

    def test_seq_gapless_per_connection(self):
        by_conn = {}
        for record in self.records:
            if "seq" in record and "conn" in record:
                by_conn.setdefault(record["conn"], []).append(record["seq"])
        self.assertGreaterEqual(len(by_conn), 3, by_conn.keys())  # bob, admin, intruder (+ probes)
        for conn, seqs in by_conn.items():
            self.assertEqual(sorted(seqs), list(range(min(seqs), min(seqs) + len(seqs))),
                             f"conn {conn}: seq {seqs}")

    def test_secrets_in_output_are_scrubbed_not_dropped(self):
        snd_texts = [plain(r.get("text")) for r in self.io("SND")]
        for needle in ("You want to create an account 'bob' with password",
                       "new password set to", "has changed your password to"):
            hits = [t for t in snd_texts if needle in t]
            self.assertTrue(hits, f"no SND record containing {needle!r}")
            self.assertTrue(all(MASK in t for t in hits), hits)

    def test_lifecycle_records(self):
        kinds = {r.get("kind") for r in self.records}
        for kind in ("connect", "login", "login_fail", "logout", "disconnect", "puppet",
                     "unpuppet", "account_created"):
            self.assertIn(kind, kinds, f"no {kind!r} record; kinds: {sorted(map(str, kinds))}")
        # bob's telnet connection, in order: one connect (none again after the reload), the
        # account it created, its login and puppet, then unpuppet, logout, disconnect on quit
        typed = self.rcv_for(f"connect bob {MASK}")
        bob_conn = typed[0]["conn"]
        life = [r for r in self.records if r.get("conn") == bob_conn and r.get("kind") != "io"]
        self.assertEqual(
            [r["kind"] for r in life],
            ["connect", "account_created", "login", "puppet", "unpuppet", "logout", "disconnect"],
            self.dump(life),
        )
        self.assertEqual(life[1]["created_account"].split("#")[0], "bob")
        self.assertEqual(life[2]["account"].split("#")[0], "bob")
        self.assertEqual(life[-1]["reason"], "quit")
        self.assertEqual({r["ip"] for r in life}, {"127.0.0.1"})
        # the intruder: its failed login names the account tried, from its ip, and no password
        fails = [r for r in self.records if r.get("kind") == "login_fail"]
        self.assertEqual([r["tried_account"] for r in fails], ["bob"], self.dump(fails))
        self.assertNotEqual(fails[0]["conn"], bob_conn)
        self.assertEqual(fails[0]["ip"], "127.0.0.1")

    def test_no_password_anywhere_in_audit_files(self):
        self.assertTrue(self.raw)
        leaks = []
        for secret in PASSWORDS:
            for form in leak_forms(secret):
                if form in self.raw:
                    at = self.raw.index(form)
                    leaks.append(f"{secret!r} as {form!r}: ...{self.raw[max(0, at - 150):at + 60]!r}")
        for record in self.records:
            for text in strings_in(record):
                leaks += [f"{secret!r} in decoded {text[:200]!r}" for secret in PASSWORDS if secret in text]
        self.assertFalse(leaks, "passwords in the audit trail:\n" + "\n".join(leaks))

    def test_no_loss_records(self):
        losses = [r for r in self.records if r.get("kind") == "loss"]
        self.assertFalse(losses, self.dump(losses))

    def test_clients_saw_the_game(self):
        # sanity of the scripted session itself (not of the audit): the game really ran it
        self.assertIn("Password changed.", self.transcripts["bob"])
        self.assertIn("has changed your password", self.transcripts["bob"])
        self.assertRegex(self.transcripts["intruder"], re.compile("incorrect", re.I))


if __name__ == "__main__":
    unittest.main()
