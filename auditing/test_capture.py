"""
What is recorded (capture levels, flagged accounts, excluded output types), that observing is not
recording, and the live watch feed: against real Evennia sessions of our class.
"""

import evennia
from django.test import override_settings

from . import service
from .capture import FLAG_ATTRIBUTE, FLAG_CATEGORY
from .scrub import MASK
from .tests import AuditTestCase
from .watch import FEED_TYPE


class CaptureTestCase(AuditTestCase):
    def setUp(self):
        super().setUp()
        self.session.data_in(text=(["look"], {}))  # both sessions have their connection ids
        self.player = self.new_unauthenticated_session(sessid=7)
        evennia.SESSION_HANDLER.login(self.player, self.account2, testmode=True)
        self.flush()
        self.collector.events.clear()

    def tearDown(self):
        evennia.SESSION_HANDLER.pop(self.player.sessid, None)  # Evennia's tearDown deletes account2
        super().tearDown()

    def io_of(self, session):
        return [(e["direction"], e.get("text")) for e in self.records() if e["conn"] == session.audit_conn]

    def kind(self, kind):
        self.flush()
        return [e for e in self.collector.events if e["kind"] == kind]


class TestCaptureLevels(CaptureTestCase):
    audit_settings = {"AUDIT_CAPTURE": "input"}

    def test_input_level_records_input_only_unless_flagged(self):
        live = service.current()
        observed_before = live.stats()["observed_only"]
        self.sent_in(self.player, "say hello")
        self.player.data_out(text='You say, "hello"')
        self.assertEqual(self.io_of(self.player), [("RCV", "say hello")])
        self.assertEqual(live.stats()["observed_only"] - observed_before, 1)
        # Staff flag the player: from now on input and output, and the change is a record.
        self.assertTrue(live.flag(self.session, self.account2, True))
        self.player.data_out(text="You see a room.")
        self.assertEqual(self.io_of(self.player)[-1], ("SND", "You see a room."))
        change = self.kind("capture_change")[-1]
        self.assertEqual((change["what"], change["from"], change["to"]), ("flag", "input", "all"))
        self.assertEqual(change["target"], f"{self.account2.key}#{self.account2.id}")
        self.assertEqual(change["account"], f"{self.account.key}#{self.account.id}")  # who changed it
        self.assertTrue(self.account2.attributes.get(FLAG_ATTRIBUTE, category=FLAG_CATEGORY))

    def test_flag_survives_a_restart_and_unflag_is_recorded(self):
        service.current().flag(self.session, self.account2, True)
        following = service.start()  # a new server process reads the flags from the accounts
        self.player.data_out(text="after the restart")
        self.assertEqual(self.io_of(self.player)[-1], ("SND", "after the restart"))
        self.assertTrue(following.flag(self.session, self.account2, False))
        self.player.data_out(text="unflagged now")
        self.assertNotIn(("SND", "unflagged now"), self.io_of(self.player))
        change = self.kind("capture_change")[-1]
        self.assertEqual((change["from"], change["to"]), ("all", "input"))


class TestFlaggedInSettings(CaptureTestCase):
    audit_settings = {"AUDIT_CAPTURE": "lifecycle", "AUDIT_FLAGGED": ["TestAccount2"]}

    def test_settings_flag_and_lifecycle_level(self):
        self.sent_in(self.player, "say flagged")
        self.sent_in(self.session, "say not flagged")
        self.assertEqual(self.io_of(self.player), [("RCV", "say flagged")])
        self.assertEqual(self.io_of(self.session), [])
        self.assertFalse(service.current().flag(self.session, self.account2, False))  # settings keep it


class TestSettingsChangeRecord(CaptureTestCase):
    def test_a_start_with_other_settings_says_so(self):
        with override_settings(AUDIT_CAPTURE="input", AUDIT_EXCLUDE_OUTPUT=["prompt"]):
            changes = [e for e in self.kind("capture_change") if e.get("changed_by") == "settings"]
            self.assertEqual(changes[-1]["to"], {"capture": "input", "input": True, "output": True,
                                                 "exclude_output": ["prompt"]})
            self.assertEqual(changes[-1]["from"]["capture"], "all")
            self.collector.events.clear()
            service.start()  # the same settings again: nothing changed, nothing said
            self.assertEqual(self.kind("capture_change"), [])


class TestExcludedOutput(CaptureTestCase):
    audit_settings = {"AUDIT_EXCLUDE_OUTPUT": ["prompt", "map"]}

    def test_excluded_types_are_not_written(self):
        self.player.data_out(prompt="HP 10/10 >")
        self.player.data_out(text=("a map", {"type": "map"}))
        self.player.data_out(text=("You see a room.", {"type": "look"}))
        self.assertEqual(self.io_of(self.player), [("SND", "You see a room.")])


class TestObservingIsNotRecording(CaptureTestCase):
    """What a setting turns off is what is written, never what the scrubber sees."""

    audit_settings = {"AUDIT_OUT": False}

    def test_prompt_not_recorded_still_masks_the_answer(self):
        self.guest.data_out(text="Enter the password for account bob:")
        self.sent_in(self.guest, "hunter2-unlisted")
        self.assertEqual(self.io_of(self.guest), [("RCV", MASK)])
        self.assertNoSecret(["hunter2-unlisted"])

    def test_lifecycle_level_still_remembers_typed_secrets(self):
        with override_settings(AUDIT_CAPTURE="lifecycle", AUDIT_OUT=True):
            live = service.current()
            self.sent_in(self.player, "password old-secret-1 = new-secret-2")
            live.flag(self.session, self.account2, True)
            self.player.data_out(text="Password changed: new-secret-2 (was old-secret-1)")
            self.assertNoSecret(["old-secret-1", "new-secret-2"])
            self.assertIn(MASK, self.io_of(self.player)[-1][1])


class TestWatch(CaptureTestCase):
    def setUp(self):
        super().setUp()
        self.feed = []
        self.live = service.current()
        self.live.watchers._deliver = lambda session, text: self.feed.append((session, text))

    def test_staff_see_the_players_lines_scrubbed(self):
        self.assertTrue(self.live.watch(self.session, self.account2))
        self.assertFalse(self.live.watch(self.session, self.account2))
        self.sent_in(self.player, "say meet me at |lcquit|ltthe dock|le")
        self.sent_in(self.player, "password s3cret-watch = n3w-watch")
        self.player.data_out(text="Password changed.")
        self.flush()
        shown = "\n".join(text for session, text in self.feed if session is self.session)
        self.assertIn("say meet me at ||lcquit||ltthe dock||le", shown)  # inert in a staff webclient
        self.assertIn(MASK, shown)
        self.assertNotIn("s3cret-watch", shown)
        self.assertNotIn("n3w-watch", shown)
        self.assertIn("Password changed.", shown)
        views = [(e["mode"], e["target"]) for e in self.kind("audit_view")]
        self.assertEqual(views, [("watch", f"{self.account2.key}#{self.account2.id}")])

    def test_several_staff_and_unwatch(self):
        other_staff = self.new_unauthenticated_session(sessid=8)
        self.live.watch(self.session, self.account2)
        self.live.watch(other_staff, self.account2)
        self.sent_in(self.player, "look")
        self.flush()
        self.assertEqual({session for session, _ in self.feed}, {self.session, other_staff})
        self.assertEqual(self.live.unwatch(self.session), [f"{self.account2.key}#{self.account2.id}"])
        self.feed.clear()
        self.sent_in(self.player, "look again")
        self.flush()
        self.assertEqual({session for session, _ in self.feed}, {other_staff})

    def test_staff_from_one_address_are_told_apart(self):
        other_staff = self.new_unauthenticated_session(sessid=9)
        other_staff.address = self.session.address  # Evennia's sessions compare equal by address
        self.assertEqual(other_staff, self.session)
        self.live.watch(self.session, self.account2)
        self.assertTrue(self.live.watch(other_staff, self.account2))
        self.live.closing(other_staff, None, "quit")  # one of them leaves
        self.assertEqual(self.live.watchers.watching(self.session), [f"{self.account2.key}#{self.account2.id}"])
        self.assertEqual(self.live.watchers.watching(other_staff), [])

    def test_the_feed_is_never_fed_again(self):
        self.live.watch(self.session, self.account2)
        self.live.watch(self.player, self.account)  # two staff watching each other
        self.flush()
        self.feed.clear()  # (the player saw the audit_view record of the first watch: it is the account's)
        self.session.data_out(text=("[watch] a fed line", {"type": FEED_TYPE}))
        self.sent_in(self.player, "look")
        self.flush()
        self.assertEqual(len(self.feed), 1)

    def test_watch_ends_when_the_player_leaves(self):
        self.live.watch(self.session, self.account2)
        evennia.SESSION_HANDLER.disconnect.side_effect = None
        type(evennia.SESSION_HANDLER).disconnect(evennia.SESSION_HANDLER, self.player, reason="quit",
                                                 sync_portal=False)
        self.assertEqual(self.live.watchers.watching(self.session), [])
        views = [(e["mode"], e.get("reason")) for e in self.kind("audit_view")]
        self.assertEqual(views[-1], ("unwatch", "player left"))


class TestWatchAcrossAReload(CaptureTestCase):
    def test_a_watch_goes_on_after_a_reload(self):
        from .registry import STATE_FILE

        live = service.current()
        live.watch(self.session, self.account2)
        live.stop()  # a reload: the open connections are saved, watches with them
        with open(f"{self.trail_dir}/{STATE_FILE}") as handle:
            self.assertIn(f"{self.account2.key}#{self.account2.id}", handle.read())
        following = service.start()
        data = self.session.get_sync_data()
        rebuilt = type(self.session)()
        rebuilt.load_sync_data(data)
        rebuilt.sessionhandler = evennia.SESSION_HANDLER
        following.opened(rebuilt)
        self.assertEqual(following.watchers.watching(rebuilt), [f"{self.account2.key}#{self.account2.id}"])


class TestWatchNotify(CaptureTestCase):
    audit_settings = {"AUDIT_WATCH_NOTIFY": True}

    def test_player_is_told_when_configured(self):
        told = []
        self.account2.msg = lambda text=None, **kwargs: told.append(text)
        live = service.current()
        live.watch(self.session, self.account2)
        live.unwatch(self.session, self.account2)
        self.assertEqual(len(told), 2)
