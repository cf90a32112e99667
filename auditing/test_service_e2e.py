"""
The audit service in a real game: started with the server, before any player; what a bad setting
does; connections that end while no server process runs (a reload, a kill -9).

One game (created in a temporary directory, loopback only), driven through four steps in order.
Opt-in in a user's game (`AUDITING_TEST_SERVERS=1`); `make test` runs it.
"""

import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import unittest

from auditing.testing import requires_servers
from auditing.testing.clients import TelnetClient, log_in
from auditing.testing.game import DEFAULT_SUPERUSER, GameServer, _pid_alive

PASSWORD = "Svc-e2e-pw-1"


def read_records(directory):
    records = []
    for name in sorted(os.listdir(directory)):
        if name.startswith("audit_") and name.endswith(".log"):
            with open(os.path.join(directory, name), "rb") as handle:
                records.extend(json.loads(line) for line in handle.read().splitlines() if line)
    return records


def login(game, name, create=False):
    password = DEFAULT_SUPERUSER[1] if name == DEFAULT_SUPERUSER[0] else PASSWORD
    return log_in(TelnetClient("127.0.0.1", game.telnet_port, timeout=20), name, password, create)


@requires_servers
class ServiceEndToEndTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="audit-service-")
        cls.audit_dir = os.path.join(cls.tmp, "trail")
        cls.game = GameServer(cls.tmp, name="servicegame", stop_at_exit=True)
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.addClassCleanup(cls.game.stop)
        cls.game.create()
        cls.game.migrate()

    def configure(self, **audit):
        audit.setdefault("AUDIT_LOG_DIR", self.audit_dir)
        self.game.settings_extra = "\n".join(f"{key} = {value!r}" for key, value in audit.items())
        self.game._write_settings()

    def server_log(self):
        with open(self.game.server_log, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def wait_for(self, condition, timeout=20.0, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.2)
        self.fail(f"timed out waiting for {what}")

    def test_service_in_a_real_game(self):
        game = self.game
        # 1. A bad setting is in server.log at start, before any player connects.
        self.configure(AUDIT_QUEUE_SIZE=0)
        game.start(wait=False)
        self.wait_for(lambda: "auditing is OFF: AUDIT_QUEUE_SIZE = 0" in self.server_log(),
                      timeout=60, what="the start-up error")
        game.wait_ready()
        log = self.server_log()
        self.assertEqual(log.count("auditing is OFF: AUDIT_QUEUE_SIZE = 0"), log.count("Server successfully") or 1,
                         "one error per server start")
        # 2. Staff are told at login that nothing is recorded, and why; players are not.
        admin = login(game, DEFAULT_SUPERUSER[0])
        told = admin.read_until(re.compile(r"Auditing is OFF[^\n]*and reload"), timeout=20)
        self.assertIn("AUDIT_QUEUE_SIZE = 0", told)
        player = login(game, "bob", create=True)
        heard = player.read_until(re.compile(r"You become \S+"), timeout=20) + player.read_available(1.0)
        self.assertNotIn("Auditing is OFF", heard)
        admin.close()
        player.close()
        self.assertFalse(os.path.exists(self.audit_dir) and read_records(self.audit_dir))

        # 3. Fixed and reloaded: online. A connection that closes during a reload gets its disconnect.
        self.configure()
        game.reload()
        self.wait_for(lambda: "auditing online" in self.server_log().rsplit("Server successfully", 1)[-1]
                      or "auditing online" in self.server_log()[-4000:], what="auditing online")
        staying = login(game, "bob")
        staying.read_until(re.compile(r"You become \S+"), timeout=20)
        leaving = TelnetClient("127.0.0.1", game.telnet_port, timeout=20)
        leaving.read_until("<password>", timeout=20)
        leaving.send_line("look")
        time.sleep(1.5)  # the state file follows open connections within a second
        records = self.wait_for(lambda: [r for r in read_records(self.audit_dir) if r["kind"] == "connect"],
                                what="connect records")
        conns = [r["conn"] for r in records]
        server_pid = game.pids()["server"]
        reloading = threading.Thread(target=game._run, args=(["reload"],))
        reloading.start()
        self.wait_for(lambda: not _pid_alive(server_pid), timeout=30, what="the old server to exit")
        leaving.close()  # closes while no server process runs
        reloading.join(60)
        self.wait_for(lambda: game.pids().get("server") not in (None, server_pid), timeout=30,
                      what="the reloaded server")
        game.wait_ready(since=0)
        left_conn = conns[-1]
        closed = self.wait_for(
            lambda: [r for r in read_records(self.audit_dir)
                     if r.get("conn") == left_conn and r["kind"] == "disconnect"],
            what="the disconnect of the connection closed during the reload")
        self.assertEqual(len(closed), 1)
        self.assertEqual(closed[0]["reason"], "connection closed while the server reloaded")
        staying.send_line("say still here")
        staying.read_until("still here", timeout=20)

        # 4. kill -9 of the server: the open connections get a disconnect naming the crash.
        staying_conn = self.wait_for(
            lambda: [r["conn"] for r in read_records(self.audit_dir)
                     if r.get("text") == "say still here" and r.get("direction") == "RCV"],
            what="the record of 'say still here'")[0]
        time.sleep(1.5)
        os.kill(game.pids()["server"], signal.SIGKILL)
        time.sleep(1.0)
        game._run(["start"], env=game.env())
        game.wait_ready(since=0)
        crashed = self.wait_for(
            lambda: [r for r in read_records(self.audit_dir)
                     if r.get("conn") == staying_conn and r["kind"] == "disconnect"],
            timeout=30, what="the disconnect record after kill -9")
        self.assertEqual(crashed[-1]["reason"], "server process ended without a clean stop (crash or kill -9)")
        resumed = [r for r in read_records(self.audit_dir) if r.get("resumed_from") == staying_conn]
        self.assertEqual(len(resumed), 1, "the connection the portal kept starts a new id, linked")
        staying.close()
