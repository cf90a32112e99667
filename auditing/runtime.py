"""
The running audit machinery for the current settings: decided once, used on every event.

`current()` returns the `Runtime` for the validated configuration, building it on first use (at
server start, when Evennia loads `SERVER_SESSION_CLASS`). The taps it holds are chosen then, the
structlog way: with `AUDIT_IN = False` the input tap is a function that does nothing, so the game
thread pays no per-event branch on settings. A configuration error is logged once, with the setting
and value, and leaves auditing off (no per-message tracebacks); fixing the setting and reloading
turns it on.
"""

import atexit
import threading

from . import conf, lifecycle
from .event import RCV, SND, capture

_current = None
_lock = threading.Lock()
_tap_errors = 0


def _ignore(session, kwargs):
    """The tap for a direction that is not audited."""


class Runtime:
    """Pipeline plus the two taps for one configuration."""

    def __init__(self, config):
        from .pipeline import Pipeline

        self.config = config
        self.pipeline = Pipeline(config)
        self.tap_in = self._make_tap(RCV) if config.audit_in else _ignore
        self.tap_out = self._make_tap(SND) if config.audit_out else _ignore
        self.error = None
        self._stopped = False
        self._saved = False
        lifecycle.load_connections(config)
        lifecycle.connect_signals()
        lifecycle.watch_shutdown()
        self.pipeline.start()  # last: nothing above can leave a writer thread behind
        # A clean stop, reload or reboot flushes every queued event before the process exits.
        try:
            from twisted.internet import reactor

            reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        except Exception:
            pass
        atexit.register(self._at_exit)

    def _make_tap(self, direction):
        pipeline = self.pipeline

        def tap(session, kwargs):
            pipeline.submit(capture(session, direction, kwargs))

        return tap

    def record(self, session, kind, who=None, **fields):
        """Queue a lifecycle record (login, logout, ...) for `session`. Never raises."""
        try:
            self.pipeline.submit(capture(session, None, fields, kind=kind, who=who))
        except Exception as error:
            tap_failed(error)

    def stop(self, save=True):
        """Save the open connections' ids for a reload, then flush and close the output."""
        if self._stopped:
            return
        self._stopped = True
        if lifecycle.shutdown_mode == "shutdown":
            # The portal goes too: every connection ends here, and nothing carries over.
            lifecycle.close_all(self)
            save = False
        self._saved = save
        self.pipeline.stop()  # drained first: the saved state includes every prompt seen
        if save:
            lifecycle.save_connections(self.config, self.pipeline.builder)

    def _at_exit(self):
        # Events after the shutdown trigger (disconnect notices) moved the sequence numbers on.
        if self._stopped:
            if self._saved:
                lifecycle.save_connections(self.config, self.pipeline.builder)
        else:
            self.stop()


class DisabledRuntime:
    """What runs when the settings are invalid: nothing, after one clear error at start."""

    def __init__(self, error):
        self.error = error
        self.config = None
        self.pipeline = None
        self.tap_in = self.tap_out = _ignore
        _log_error(
            f"auditing is OFF: {error}. Fix the setting in server/conf/settings.py and reload."
        )

    def record(self, session, kind, **fields):
        pass

    def stop(self, save=True):
        pass


def _log_error(message):
    try:
        from evennia.utils import logger

        logger.log_err(f"auditing: {message}")
    except Exception:
        import sys

        print(f"auditing: {message}", file=sys.stderr)


def current():
    """The runtime for the current settings (built on first use)."""
    runtime = _current
    if runtime is None:
        runtime = _build()
    return runtime


def _build():
    global _current
    with _lock:
        if _current is None:
            try:
                config = conf.get()
            except conf.AuditConfigError as error:
                _current = DisabledRuntime(error)
            else:
                _current = Runtime(config)
                _log_info(config)
        return _current


def _log_info(config):
    try:
        from evennia.utils import logger

        logger.log_sec(
            f"auditing online: input={config.audit_in} output={config.audit_out} "
            f"sparse={config.allow_sparse} output={config.callback_path} "
            f"masks={len(config.masks)} extra, prompt masks={len(config.prompt_masks)} extra"
        )
    except Exception:
        pass


def restart():
    """Stop (flushing) the current runtime; the next event builds one for the current settings."""
    global _current
    with _lock:
        old, _current = _current, None
    if old is not None:
        old.stop(save=False)  # a settings change in this process, not a server restart


def tap_failed(error):
    """An exception on the game thread inside auditing: counted, logged once, never raised."""
    global _tap_errors
    _tap_errors += 1
    if _tap_errors == 1 or _tap_errors % 10_000 == 0:
        _log_error(f"could not capture an event ({type(error).__name__}: {error}); "
                   f"{_tap_errors} so far, the game is unaffected")


def stats():
    """Pipeline counters of the running configuration, for admins (`evennia shell`)."""
    runtime = _current
    if runtime is None or runtime.pipeline is None:
        return {"running": False, "error": str(getattr(runtime, "error", "") or "") or None}
    return {"running": True, "capture_errors": _tap_errors, **runtime.pipeline.stats()}


def _on_setting_changed(setting=None, **kwargs):
    if setting and setting.startswith("AUDIT_"):
        restart()


try:
    from django.test.signals import setting_changed

    setting_changed.connect(_on_setting_changed, dispatch_uid="auditing.runtime.setting_changed")
except Exception:  # pragma: no cover
    pass
