"""
Every place where auditing touches Evennia or Twisted beyond the session class, in one module.

- `start_with_server()`: Evennia imports `SERVER_SESSION_CLASS` when the portal first syncs its
  sessions to a starting server process (before any player's input is handled), which imports
  `auditing.server`, which calls this: the audit service starts and validates its settings there.
- Evennia's signals (login failures, puppeting, account creation) are routed to the service
  (`connect_signals`).
- The server service's `shutdown(mode)` is watched, because only a full shutdown closes the players'
  connections (Evennia sends no signal for it), and the reactor's "before shutdown" trigger stops
  the service (flushing the writer).
- The session handler is asked for the open sessions; the reactor runs small jobs later or in its
  thread pool; the server log gets our messages; Django's `setting_changed` (tests) restarts the service.
"""

import sys

SIGNAL_UID = "auditing.hooks.{}"
STAFF_PERMISSIONS = ("Admin", "Developer")


# ---------------------------------------------------------------- logging


_LOGGERS = {"err": "log_err", "warn": "log_warn", "info": "log_info", "sec": "log_sec"}


def log(level, message):
    """One line in Evennia's server log ("err", "warn", "info" or "sec"); stderr outside a server."""
    try:
        from evennia.utils import logger

        getattr(logger, _LOGGERS[level])(f"auditing: {message}")
    except Exception:
        print(f"auditing: {message}", file=sys.stderr)


def log_error(message):
    log("err", message)


def log_info(message):
    log("info", message)


def log_security(message):
    log("sec", message)


# ---------------------------------------------------------------- the reactor


def _reactor():
    from twisted.internet import reactor

    return reactor


def reactor_running():
    """True inside a running Evennia server process (False in `evennia test`, shells, tools)."""
    try:
        return bool(_reactor().running)
    except Exception:
        return False


def call_later(delay, function, *args):
    """Run `function` on the reactor thread after `delay` seconds; None when no reactor runs."""
    if not reactor_running():
        return None
    return _reactor().callLater(delay, function, *args)


def on_game_thread(function, *args):
    """Run `function` on the reactor thread (from another thread); inline when no reactor runs."""
    if reactor_running():
        _reactor().callFromThread(function, *args)
    else:
        function(*args)


def in_server_process():
    """True inside a running Evennia server process (not the portal, a test run or a shell)."""
    try:
        import evennia

        return evennia.EVENNIA_SERVER_SERVICE is not None and reactor_running()
    except Exception:
        return False


def find_account_or_character(name):
    """The account of that name (first), else the object (character) of that key; None if neither."""
    from evennia.accounts.models import AccountDB
    from evennia.objects.models import ObjectDB

    return (AccountDB.objects.filter(username__iexact=name).first()
            or ObjectDB.objects.filter(db_key__iexact=name).first())


def is_account(obj):
    from evennia.accounts.models import AccountDB

    return isinstance(obj, AccountDB)


def in_thread(function, *args):
    """Run `function` in the reactor's thread pool (inline when no reactor runs)."""
    if reactor_running():
        _reactor().callInThread(function, *args)
    else:
        function(*args)


def before_reactor_shutdown(function):
    """Call `function` when the reactor stops (stop, reload, reboot); returns a handle or None."""
    try:
        return _reactor().addSystemEventTrigger("before", "shutdown", function)
    except Exception:
        return None


def cancel_trigger(handle):
    if handle is not None:
        try:
            _reactor().removeSystemEventTrigger(handle)
        except Exception:
            pass


# ---------------------------------------------------------------- sessions and accounts


def open_sessions():
    """The server sessions Evennia knows now."""
    try:
        import evennia

        handler = evennia.SESSION_HANDLER
        return list(handler.values()) if handler is not None else []
    except Exception:
        return []


def creating_session(ip):
    """The logged-out connection from `ip` that last ran a command (account creation names none)."""
    candidates = [
        session
        for session in open_sessions()
        if not session.logged_in and ip is not None and str(ip) in str(session.address)
    ]
    return max(candidates, key=lambda session: session.cmd_last, default=None)


def is_staff(account):
    """Does the account hold Admin or Developer (or is it a superuser)?"""
    try:
        return bool(account.is_superuser) or any(
            account.check_permstring(permission) for permission in STAFF_PERMISSIONS
        )
    except Exception:
        return False


def flagged_account_names(attribute, category):
    """Names of the accounts that carry the flag Attribute (one query, at start)."""
    from evennia.accounts.models import AccountDB

    return [
        account.key
        for account in AccountDB.objects.get_by_attribute(key=attribute, category=category)
    ]


def stored_value(key):
    """A value Evennia keeps in its database across restarts (ServerConfig); None without a database."""
    try:
        from evennia.server.models import ServerConfig

        return ServerConfig.objects.conf(key)
    except Exception:
        return None


def store_value(key, value):
    try:
        from evennia.server.models import ServerConfig

        ServerConfig.objects.conf(key, value)
    except Exception as error:
        log_error(f"could not store {key}: {error}")


# ---------------------------------------------------------------- the server's own lifecycle


def watch_shutdown(on_mode):
    """Call `on_mode(mode)` when Evennia's server service starts shutting down (idempotent).

    mode is "reload", "reset" or "shutdown"; only "shutdown" (`evennia stop`, `reboot`) closes the
    connections. The service's `shutdown` method is wrapped, since Evennia sends no signal for it.
    """
    try:
        import evennia

        service = evennia.EVENNIA_SERVER_SERVICE
    except Exception:
        return
    if service is None:
        return
    original = getattr(service.shutdown, "audit_original", service.shutdown)

    def shutdown(mode="reload", _reactor_stopping=False, **kwargs):
        try:
            on_mode(mode, _reactor_stopping)
        except Exception as error:
            log_error(f"noting the shutdown mode failed: {error}")
        return original(mode=mode, _reactor_stopping=_reactor_stopping, **kwargs)

    shutdown.audit_original = original
    service.shutdown = shutdown


def connect_signals(receivers):
    """Route Evennia's signals to `receivers`, a dict of signal name -> callable (replaces earlier ones)."""
    from evennia.server import signals

    for name, receiver in receivers.items():
        signal = getattr(signals, name)
        uid = SIGNAL_UID.format(name)
        signal.disconnect(dispatch_uid=uid)
        signal.connect(_guarded(receiver), weak=False, dispatch_uid=uid)


def disconnect_signals(names):
    try:
        from evennia.server import signals
    except Exception:
        return
    for name in names:
        getattr(signals, name).disconnect(dispatch_uid=SIGNAL_UID.format(name))


_guard_failures = [0]


def _guarded(receiver):
    """Signal receivers run inside Evennia's login and puppet code: never raise into it."""

    def guarded(*args, **kwargs):
        try:
            receiver(*args, **kwargs)
        except Exception as error:
            _guard_failures[0] += 1
            if _guard_failures[0] == 1 or _guard_failures[0] % 10_000 == 0:
                log_error(f"a signal receiver failed ({type(error).__name__}: {error}); "
                          f"{_guard_failures[0]} so far, the game is unaffected")

    return guarded


def on_setting_changed(callback):
    """Tests change settings with `override_settings`: call `callback(name)` for each change."""
    try:
        from django.test.signals import setting_changed
    except Exception:  # pragma: no cover - Django without its test signals
        return

    def receiver(setting=None, **kwargs):
        callback(setting or "")

    setting_changed.connect(receiver, weak=False, dispatch_uid="auditing.hooks.setting_changed")
