"""
Lifecycle records and connection ids that survive `evennia reload`.

Records, in the same stream as the I/O records and told apart by `kind`:

    connect         a client connected (ip, protocol)
    login           an account logged in on the connection
    login_fail      a login was refused: `tried_account` (the name typed), never the password
    logout          the account left the connection (quit, or the connection dropped)
    disconnect      the connection closed; `reason` when Evennia gives one
    puppet/unpuppet the connection took or released control of a character (`character`)
    account_created a new account (`account`), from the connection that created it

Sources: the session's own hooks (`at_sync`, `at_login`, `at_disconnect`) and Evennia's signals
(`SIGNAL_ACCOUNT_POST_LOGIN_FAIL`, `SIGNAL_OBJECT_POST_PUPPET`/`UNPUPPET`,
`SIGNAL_ACCOUNT_POST_CREATE`). A `connect NAME ...` line that leaves the connection logged out also
gives a `login_fail` (Evennia sends no signal when NAME is not an account).

Connection ids: Evennia reuses session numbers, and `evennia reload` rebuilds every server session
from the portal's copy. At shutdown the id and sequence number of every open connection is written
to `<AUDIT_LOG_DIR>/.audit_connections.json` (0600), keyed by what the portal keeps across the
reload (session number, protocol, address and the portal's connection time); the next server
process takes them back, so a connection keeps its id and its gapless sequence across reloads. A
full stop also closes the connections, so nothing is carried over then.
"""

import json
import os
import time

from . import event

STATE_FILE = ".audit_connections.json"
_STALE_AFTER = 600.0  # seconds: an older file is from a server that did not come back by reload

# The session whose input Evennia is executing right now (game thread), for signals that carry none.
executing = None
# How the server is going down ("reload", "reset" or "shutdown"), seen by `watch_shutdown`.
shutdown_mode = None


def watch_shutdown():
    """Note the mode Evennia's server service shuts down with (idempotent).

    Only a "shutdown" (`evennia stop`, `reboot`) closes the connections; on a reload or reset the
    portal keeps them, and their ids carry over. Evennia sends no signal for it, so the service's
    `shutdown` method is wrapped to remember its `mode` before it runs.
    """
    try:
        import evennia

        service = evennia.EVENNIA_SERVER_SERVICE
    except Exception:
        return
    if service is None or getattr(service.shutdown, "audit_wrapped", False):
        return
    original = service.shutdown

    def shutdown(mode="reload", _reactor_stopping=False, **kwargs):
        global shutdown_mode
        if shutdown_mode is None or not _reactor_stopping:
            shutdown_mode = mode
        return original(mode=mode, _reactor_stopping=_reactor_stopping, **kwargs)

    shutdown.audit_wrapped = True
    service.shutdown = shutdown


def close_all(live, reason="server shutdown"):
    """At a full shutdown: logout and disconnect records for every open connection."""
    try:
        import evennia

        sessions = list(evennia.SESSION_HANDLER.values())
    except Exception:
        return
    for session in sessions:
        if getattr(session, "audit_conn", None) is None:
            continue
        account = session.account if session.logged_in else None
        if account is not None:
            live.record(session, "logout", who=(account, None))
        live.record(session, "disconnect", who=(account, None), reason=reason)


def origin_key(session):
    """What identifies a connection across a reload (all of it is kept by the portal)."""
    return repr((session.sessid, session.protocol_key, str(session.address), session.conn_time))


def _state_path(config):
    return os.path.join(config.log_dir, STATE_FILE)


def save_connections(config, builder=None):
    """Write id, sequence and armed prompt mask of every open connection (at shutdown, after the
    queue was drained; again at exit, the final word)."""
    try:
        import evennia

        handler = evennia.SESSION_HANDLER
        sessions = list(handler.values()) if handler is not None else []
    except Exception:
        return
    # Keyed by the values as they are now: Evennia syncs them to the portal when a reload starts,
    # and the portal hands exactly these back to the next server process.
    states = builder.states if builder is not None else {}
    state = {
        origin_key(session): [
            session.audit_conn,
            session.audit_seq,
            getattr(states.get(session.audit_conn), "armed_by", None),
        ]
        for session in sessions
        if getattr(session, "audit_conn", None)
    }
    path = _state_path(config)
    try:
        os.makedirs(config.log_dir, exist_ok=True)
        temporary = path + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"saved": time.time(), "connections": state}, handle)
        os.replace(temporary, path)
    except OSError:
        pass


def load_connections(config):
    """Take back what the previous server process saved (once; the file is removed)."""
    path = _state_path(config)
    try:
        with open(path) as handle:
            saved = json.load(handle)
        os.unlink(path)
        if time.time() - float(saved.get("saved") or 0) > _STALE_AFTER:
            return
        for key, (conn, seq, *armed) in saved.get("connections", {}).items():
            event.carried_over[key] = (str(conn), int(seq), armed[0] if armed else None)
    except Exception:  # unreadable or hand-edited: connections get new ids, nothing worse
        return


def opened(session, live):
    """A server session was (re)built: take the carried-over id, or record a new connection."""
    if session.audit_conn is not None:
        return
    carried = event.carried_over.pop(origin_key(session), None)
    if carried:
        session.audit_conn, session.audit_seq, armed_by = carried
        if armed_by and live.pipeline is not None:
            # A password prompt sent before the reload still masks the answer typed after it.
            live.pipeline.builder.state(session.audit_conn).armed_by = armed_by
        return
    session.audit_conn = event.new_connection_id()
    session.audit_seq = 0
    live.record(session, "connect")


def login_attempt_ended(session, line, live):
    """After a `connect NAME ...` line ran and the session is still logged out: a failed login."""
    if getattr(session, "audit_login_failure_recorded", False):
        session.audit_login_failure_recorded = False
        return
    name = _tried_name(line)
    if name is not None:
        live.record(session, "login_fail", tried_account=name)


def _tried_name(line):
    """The account name of a `connect NAME PASSWORD` line, as Evennia's command parses it.

    None when the line is no login attempt: not `connect`, or a lone argument (Evennia answers
    with its usage text, and a lone word may be a password typed without a name).
    """
    from .scrub import _CONNECT, _split_command

    _start, word, args_start = _split_command(line)
    if word not in _CONNECT:
        return None
    args = line[args_start:]
    parts = [part.strip() for part in args.split('"') if part.strip()]
    if len(parts) == 1:
        parts = parts[0].split(None, 1)
    return parts[0] if len(parts) == 2 else None


# ---------------------------------------------------------------- signals


def _guarded(receiver):
    """Signal receivers run inside Evennia's login and puppet code: never raise into it."""

    def guarded(*args, **kwargs):
        try:
            receiver(*args, **kwargs)
        except Exception as error:
            from . import runtime

            runtime.tap_failed(error)

    guarded.__name__ = receiver.__name__
    return guarded


@_guarded
def _on_login_fail(sender=None, session=None, **kwargs):
    from . import runtime

    session = session or executing
    if session is None or not hasattr(session, "audit_conn"):
        return
    session.audit_login_failure_recorded = True
    runtime.current().record(session, "login_fail", tried_account=getattr(sender, "key", str(sender)))


def _on_puppet(kind):
    @_guarded
    def receiver(sender=None, session=None, account=None, **kwargs):
        from . import runtime

        if session is not None and hasattr(session, "audit_conn"):
            runtime.current().record(session, kind, puppet=sender)

    receiver.__name__ = f"_on_{kind}"
    return receiver


def _creating_session(ip):
    """The logged-out connection from `ip` that just ran a command (the signal names no session)."""
    try:
        import evennia

        candidates = [
            session
            for session in evennia.SESSION_HANDLER.values()
            if not session.logged_in and ip is not None and str(ip) in str(session.address)
        ]
    except Exception:
        return None
    return max(candidates, key=lambda session: session.cmd_last, default=None)


@_guarded
def _on_account_created(sender=None, ip=None, **kwargs):
    from . import runtime

    session = executing or _creating_session(ip)
    if session is not None and hasattr(session, "audit_conn"):
        runtime.current().record(session, "account_created", created_account=sender)


_on_puppet_receiver = _on_puppet("puppet")
_on_unpuppet_receiver = _on_puppet("unpuppet")


def connect_signals():
    """Listen to Evennia's signals (idempotent)."""
    from evennia.server import signals

    signals.SIGNAL_ACCOUNT_POST_LOGIN_FAIL.connect(
        _on_login_fail, weak=False, dispatch_uid="auditing.login_fail"
    )
    signals.SIGNAL_OBJECT_POST_PUPPET.connect(
        _on_puppet_receiver, weak=False, dispatch_uid="auditing.puppet"
    )
    signals.SIGNAL_OBJECT_POST_UNPUPPET.connect(
        _on_unpuppet_receiver, weak=False, dispatch_uid="auditing.unpuppet"
    )
    signals.SIGNAL_ACCOUNT_POST_CREATE.connect(
        _on_account_created, weak=False, dispatch_uid="auditing.account_created"
    )
