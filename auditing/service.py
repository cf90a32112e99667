"""
The audit service: one object per server process, created and validated when the server starts.

It owns the validated configuration (`conf.AuditConfig`), the writer (`pipeline.Pipeline`), the
connection registry (`registry.ConnectionRegistry`: ids, sequence numbers, what carries over a
reload or a crash), the session that is executing input right now, and the receivers of Evennia's
signals (wired in `auditing.hooks`, the one module that touches Evennia's internals).

    from auditing import service
    service.current()          # the running service, or a `DisabledService` saying why not
    service.current().stats()  # counters for admins

`start()` is called by `hooks.start_with_server()` when Evennia loads the session class at server
start (tests call it themselves). A bad setting gives one error line in the server log at start,
a `DisabledService` that records nothing, and a notice to staff (Admin/Developer) when they log in.
The taps it hands to the session class are decided once, at start: both directions are always
observed (scrubbing needs the prompts and the typed secrets whatever is recorded); the settings
decide what is written (see `event.Builder`).
"""

import atexit
import json
import os
import threading
import time

from . import capture as capture_policy
from . import conf, hooks, lifecycle
from .event import RCV, SND, _snapshot, capture, frozen
from .event import token
from .registry import ConnectionRegistry
from .watch import Watchers

_SAVE_DELAY = 1.0  # seconds: connection changes are written to the state file at most this often
CRASH_REASON = "server process ended without a clean stop (crash or kill -9)"
RELOAD_REASON = "connection closed while the server reloaded"
SHUTDOWN_REASON = "server shutdown"

_SIGNALS = (
    "SIGNAL_ACCOUNT_POST_LOGIN_FAIL",
    "SIGNAL_OBJECT_POST_PUPPET",
    "SIGNAL_OBJECT_POST_UNPUPPET",
    "SIGNAL_ACCOUNT_POST_CREATE",
)


class _Ghost:
    """Stands in for a session in records no live session owns: a connection the previous server
    process left open, or the server itself (settings records)."""

    logged_in = False
    account = puppet = None

    def __init__(self, conn, seq=0, protocol="", ip="", sessid=None):
        self.audit_conn = conn
        self.audit_seq = seq
        self.protocol_key = protocol
        self.address = ip
        self.sessid = sessid

    @classmethod
    def of(cls, carried):
        return cls(carried.conn, carried.seq, carried.protocol, carried.ip, carried.sessid)


class AuditService:
    """Configuration, writer, connection registry and signal receivers of one server process.

    Args:
        config (conf.AuditConfig): the validated settings.
        clock (callable): epoch seconds.
    """

    error = None

    def __init__(self, config, clock=time.time):
        from .pipeline import Pipeline

        self.config = config
        self.clock = clock
        self.pipeline = Pipeline(config)
        self.registry = ConnectionRegistry(config.log_dir, clock)
        self.executing = None  # the session whose input Evennia runs now (for signals naming none)
        self.shutdown_mode = None
        self.capture_errors = 0
        self.watchers = Watchers()
        self.pipeline.observers.append(self.watchers)
        self.server_source = _Ghost(f"server-{self.registry.new_id()}", protocol="server")
        self.tap_in = self._make_tap(RCV)
        self.tap_out = self._make_tap(SND)
        self._stopped = False
        self._clean_saved = False
        self._save_call = None
        self._trigger = None

    # ---------------------------------------------------------------- start and stop

    def start(self):
        """Take back the previous process's connections, wire Evennia, start the writer."""
        problem = self.registry.load()
        if problem:
            hooks.log_error(problem)
        self._load_flags()
        hooks.connect_signals(self._receivers())
        hooks.watch_shutdown(self._note_shutdown)
        self.pipeline.start()
        self._trigger = hooks.before_reactor_shutdown(self.stop)
        atexit.register(self._at_exit)
        # After the portal's sync handed back the sessions it kept: the rest were closed meanwhile.
        hooks.call_later(0, self.close_leftovers)
        c = self.config
        self._record_settings_change()
        hooks.log_security(
            f"auditing online: input={c.audit_in} output={c.audit_out} sparse={c.allow_sparse} "
            f"callback={c.callback_path} log_dir={c.log_dir} masks={len(c.masks)} extra, "
            f"prompt masks={len(c.prompt_masks)} extra"
        )
        return self

    def stop(self, save=True):
        """Flush the writer; at a reload, save the open connections for the next process."""
        if self._stopped:
            return
        self._stopped = True
        hooks.cancel_trigger(self._trigger)
        hooks.disconnect_signals(_SIGNALS)
        if self._save_call is not None and self._save_call.active():
            self._save_call.cancel()
        if self.shutdown_mode == "shutdown":
            # The portal goes too: every connection ends here, and nothing carries over.
            self.close_all(SHUTDOWN_REASON)
            save = False
        self.pipeline.stop()  # drained first: the saved scrubbing state includes every prompt seen
        if save:
            self._save(clean=True)
            self._clean_saved = True
        else:
            self.registry.discard()  # nothing carries over
            atexit.unregister(self._at_exit)

    def _at_exit(self):
        # Records after the shutdown trigger (disconnect notices) moved the sequence numbers on.
        if not self._stopped:
            self.stop()
        elif self._clean_saved and os.path.isdir(self.registry.directory):
            self._save(clean=True)

    def _note_shutdown(self, mode, reactor_stopping):
        if self.shutdown_mode is None or not reactor_stopping:
            self.shutdown_mode = mode

    # ---------------------------------------------------------------- the game thread's taps

    def _make_tap(self, direction):
        submit = self.pipeline.submit
        assign = self.registry.assign
        # The writer process takes kwargs as marshal bytes (`event.frozen`); decided once, here.
        snapshot = frozen if getattr(self.pipeline, "takes_frozen", False) else _snapshot

        def tap(session, kwargs):
            if session.audit_conn is None:  # a session built by hand, not synced from the portal
                assign(session)
            submit(capture(session, direction, kwargs, snapshot=snapshot))

        return tap

    def record(self, session, kind, who=None, **fields):
        """Queue a lifecycle record (login, logout, ...) for `session`. Never raises."""
        try:
            if session.audit_conn is None:
                self.registry.assign(session)
            self.pipeline.submit(capture(session, None, fields, kind=kind, who=who))
        except Exception as error:
            self.failed(error)

    def failed(self, error):
        """An exception on the game thread inside auditing: counted, logged once, never raised."""
        self.capture_errors += 1
        if self.capture_errors == 1 or self.capture_errors % 10_000 == 0:
            hooks.log_error(
                f"could not capture an event ({type(error).__name__}: {error}); "
                f"{self.capture_errors} so far, the game is unaffected"
            )

    # ---------------------------------------------------------------- connections

    def opened(self, session):
        """A server session was (re)built: take back its id after a reload, or record a connect."""
        if session.audit_conn is not None:
            return
        carried = self.registry.take_back(session)
        if carried is not None and carried.clean:
            session.audit_conn, session.audit_seq = carried.conn, carried.seq
            if carried.scrub:
                self.pipeline.builder.import_state(carried.conn, carried.scrub, self.clock())
            for watched in carried.watching:  # a watch goes on across a reload
                self.watchers.start(session, watched)
            return
        self.registry.assign(session)
        if carried is not None:
            # After a crash the sequence numbers since the last save are unknown: a new id, linked.
            self._close_ghost(carried, CRASH_REASON)
            self.record(session, "connect", resumed_from=carried.conn)
        else:
            self.record(session, "connect")
        self.connections_changed()

    def logged_in(self, session):
        self.record(session, "login")
        self.connections_changed()

    def closing(self, session, account, reason):
        """The connection is closing (logout first if logged in)."""
        if getattr(session, "audit_closed", False):
            return
        session.audit_closed = True
        self._end_watches(session, account)
        if account is not None:
            self.record(session, "logout", who=(account, None))
        self.record(session, "disconnect", who=(account, None), reason=reason or "")
        self.connections_changed()

    def close_all(self, reason):
        """At a full shutdown: logout and disconnect records for every open connection."""
        for session in hooks.open_sessions():
            if getattr(session, "audit_conn", None) is not None:
                account = session.account if session.logged_in else None
                self.closing(session, account, reason)

    def _end_watches(self, session, account):
        """Either side of a watch logged out or left: that watch is over."""
        if not self.watchers:
            return
        for target in self.watchers.stop(session):
            self.record(session, "audit_view", mode="unwatch", target=target, reason="staff left")
        if account is not None:
            target = token(account)
            for staff in self.watchers.end_target(target):
                self.record(staff, "audit_view", mode="unwatch", target=target, reason="player left")
                staff.msg(f"|w[watch]|n {render_name(target)} left; the watch is over.")

    def close_leftovers(self):
        """Connections the previous process had open that no session claimed: their disconnect."""
        for carried in self.registry.leftovers():
            self._close_ghost(carried, RELOAD_REASON if carried.clean else CRASH_REASON)

    def _close_ghost(self, carried, reason):
        ghost = _Ghost.of(carried)
        if carried.account:
            self.record(ghost, "logout", account=carried.account)
        self.record(ghost, "disconnect", reason=reason, account=carried.account)

    def login_attempt_ended(self, session, line):
        """After a `connect NAME ...` line ran and the session is still logged out: a failed login."""
        if getattr(session, "audit_login_failure_recorded", False):
            session.audit_login_failure_recorded = False
            return
        name = lifecycle.tried_name(line)
        if name is not None:
            self.record(session, "login_fail", tried_account=name)

    # ---------------------------------------------------------------- the state file

    def connections_changed(self):
        """Write the open connections soon (off the game thread), so a crash leaves the list."""
        if self._stopped or (self._save_call is not None and self._save_call.active()):
            return
        self._save_call = hooks.call_later(_SAVE_DELAY, self._save_in_background)

    def _save_in_background(self):
        snapshot = self.registry.snapshot(hooks.open_sessions())
        hooks.in_thread(self._write_snapshot, snapshot)

    def _write_snapshot(self, snapshot):
        problem = self.registry.save(snapshot)
        if problem and self.registry.save_errors == 1:
            hooks.log_error(problem)

    def _save(self, clean):
        builder, now = self.pipeline.builder, self.clock()
        scrub = {conn: builder.export_state(conn, now) for conn in list(builder.states)}
        sessions = hooks.open_sessions()
        watching = {session.audit_conn: self.watchers.watching(session) for session in sessions
                    if getattr(session, "audit_conn", None)}
        self._write_snapshot(self.registry.snapshot(sessions, scrub, watching, clean=clean))

    # ---------------------------------------------------------------- what is recorded, watching

    def _load_flags(self):
        """Accounts flagged in game (an Attribute on the account) join AUDIT_FLAGGED's."""
        try:
            names = hooks.flagged_account_names(capture_policy.FLAG_ATTRIBUTE, capture_policy.FLAG_CATEGORY)
        except Exception as error:  # no database (a tool): AUDIT_FLAGGED still applies
            hooks.log_error(f"could not read the flagged accounts: {error}")
            names = []
        self.pipeline.policy = capture_policy.CapturePolicy(self.config, names)

    def _record_settings_change(self):
        """A `capture_change` record when what the settings record differs from the last start."""
        now = capture_policy.describe_settings(self.config)
        try:
            before = json.loads(hooks.stored_value("audit_capture_settings") or "null")
        except ValueError:
            before = None
        if before != now:
            self.record(self.server_source, "capture_change", changed_by="settings", what="settings",
                        **{"from": before, "to": now})
            hooks.store_value("audit_capture_settings", json.dumps(now))

    def flag(self, staff_session, account, on):
        """Record `account` in full (or not) from now on, kept on the account. Returns False if unchanged."""
        policy = self.pipeline.policy
        was = policy.is_flagged(account)
        if on:
            account.attributes.add(capture_policy.FLAG_ATTRIBUTE, True, category=capture_policy.FLAG_CATEGORY)
        else:
            account.attributes.remove(capture_policy.FLAG_ATTRIBUTE, category=capture_policy.FLAG_CATEGORY)
        if not on and account.key.lower() in self.config.flagged:
            return False  # AUDIT_FLAGGED in the settings still flags it
        policy.flag(account.key, on)
        if was == on:
            return False
        level = self.config.capture
        self.record(staff_session, "capture_change", what="flag", target=account,
                    **{"from": "all" if was else level, "to": "all" if on else level})
        return True

    def watch(self, staff_session, target):
        """`staff_session` watches `target` (an account or character) live. False if it already did."""
        watched = token(target)
        if not self.watchers.start(staff_session, watched):
            return False
        self.record(staff_session, "audit_view", mode="watch", target=watched)
        if self.config.watch_notify:
            target.msg("|wStaff are now watching your session.|n")
        return True

    def unwatch(self, staff_session, target=None):
        """Stop watching `target` (everyone when None); the tokens no longer watched."""
        stopped = self.watchers.stop(staff_session, token(target) if target is not None else None)
        for watched in stopped:
            self.record(staff_session, "audit_view", mode="unwatch", target=watched)
            if self.config.watch_notify and target is not None:
                target.msg("|wStaff stopped watching your session.|n")
        return stopped

    # ---------------------------------------------------------------- signals

    def _receivers(self):
        def login_fail(sender=None, session=None, **kwargs):
            session = session or self.executing
            if session is not None and hasattr(session, "audit_conn"):
                session.audit_login_failure_recorded = True
                self.record(session, "login_fail", tried_account=getattr(sender, "key", str(sender)))

        def puppet_change(kind):
            def receiver(sender=None, session=None, **kwargs):
                if session is not None and hasattr(session, "audit_conn"):
                    self.record(session, kind, puppet=sender)

            return receiver

        def account_created(sender=None, ip=None, **kwargs):
            session = self.executing or hooks.creating_session(ip)
            if session is not None and hasattr(session, "audit_conn"):
                self.record(session, "account_created", created_account=sender)

        return {
            "SIGNAL_ACCOUNT_POST_LOGIN_FAIL": login_fail,
            "SIGNAL_OBJECT_POST_PUPPET": puppet_change("puppet"),
            "SIGNAL_OBJECT_POST_UNPUPPET": puppet_change("unpuppet"),
            "SIGNAL_ACCOUNT_POST_CREATE": account_created,
        }

    # ---------------------------------------------------------------- for admins

    def stats(self):
        """Counters: what was accepted, delivered, lost, and whether the output is failing."""
        return {"running": True, "capture_errors": self.capture_errors, **self.pipeline.stats()}


def _ignore(session, kwargs):
    """The tap when auditing is off."""


class DisabledService:
    """What runs when auditing is not started or its settings are invalid: nothing, and it says why."""

    config = None
    pipeline = None
    executing = None
    tap_in = tap_out = staticmethod(_ignore)

    def __init__(self, error):
        self.error = error

    def record(self, session, kind, who=None, **fields):
        pass

    def failed(self, error):
        pass

    def opened(self, session):
        pass

    def logged_in(self, session):
        """Staff are told at login that nothing is being recorded, and why."""
        account = getattr(session, "account", None)
        if self.error and account is not None and hooks.is_staff(account):
            session.msg(f"|rAuditing is OFF|n: {_inert(self.error)}. Fix it in server/conf/settings.py and reload.")

    def closing(self, session, account, reason):
        pass

    def login_attempt_ended(self, session, line):
        pass

    def stop(self, save=True):
        pass

    def stats(self):
        return {"running": False, "error": self.error}


def _inert(text):
    return str(text).replace("|", "||")


def render_name(token):
    return _inert(token)


NOT_STARTED = "auditing has not started (it starts with the server)"
_current = DisabledService(NOT_STARTED)
_last_error = [None]
_lock = threading.Lock()


def current():
    """The running `AuditService`, or a `DisabledService` (see its `error`)."""
    return _current


def start(config=None):
    """Start the service for `config` (default: the validated settings), stopping any earlier one.

    A configuration error is logged once, naming the setting and value, and leaves auditing off.
    """
    global _current
    with _lock:
        previous = _current
        _current = DisabledService(NOT_STARTED)
        previous.stop(save=False)
        try:
            config = config or conf.get()
        except conf.AuditConfigError as error:
            _current = DisabledService(str(error))
            if _last_error[0] != str(error):  # once, though tests may restart it per setting changed
                hooks.log_error(f"auditing is OFF: {error}. Fix the setting in server/conf/settings.py and reload.")
            _last_error[0] = str(error)
            return _current
        _last_error[0] = None
        _current = AuditService(config).start()
        return _current


def stop():
    """Stop the running service (flushing it); auditing is off until `start()`."""
    global _current
    with _lock:
        previous, _current = _current, DisabledService(NOT_STARTED)
    previous.stop(save=False)


def _on_setting_changed(name):
    """Tests switch settings with `override_settings`: a running service restarts with them."""
    if name.startswith("AUDIT_") or name in ("LOG_DIR", "SERVERNAME"):
        conf.reset()
        if isinstance(_current, AuditService) or (_current.error not in (None, NOT_STARTED)):
            start()


hooks.on_setting_changed(_on_setting_changed)


def start_with_server():
    """Called when `auditing.server` is imported: start now inside a running server process."""
    if hooks.in_server_process() and current().error == NOT_STARTED:
        start()
