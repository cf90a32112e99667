"""
AuditedServerSession: Evennia's ServerSession with an audit tap on input and output.

Enable it in `server/conf/settings.py`:

    SERVER_SESSION_CLASS = "auditing.server.AuditedServerSession"

`data_in` (client -> game) and `data_out` (game -> client) hand a captured copy of their arguments to
the audit pipeline and then always call Evennia's own method: the game behaves exactly as without
auditing, and no exception from auditing can reach it (it is counted and logged once instead).
The session's hooks add lifecycle records (connect, login, logout, disconnect; see
`auditing.lifecycle`).
"""

from evennia.server.serversession import ServerSession

from . import lifecycle, runtime
from .event import RCV, SND, Builder, capture


class AuditedServerSession(ServerSession):
    """A ServerSession whose input and output are recorded (see README.md for the settings)."""

    # Connection id (stable across `evennia reload`) and per-connection sequence number.
    audit_conn = None
    audit_seq = 0

    def data_in(self, **kwargs):
        """Record client input, then pass it on to Evennia unchanged."""
        try:
            runtime.current().tap_in(self, kwargs)
        except Exception as error:
            runtime.tap_failed(error)
        if self.logged_in:
            super().data_in(**kwargs)
            return
        # Before login: remember who is executing (for signals without a session), and notice a
        # `connect` that did not log in.
        lifecycle.executing = self
        try:
            super().data_in(**kwargs)
        finally:
            lifecycle.executing = None
        if not self.logged_in:
            try:
                line = kwargs["text"][0][0]
                if isinstance(line, str):
                    lifecycle.login_attempt_ended(self, line, runtime.current())
            except (KeyError, IndexError, TypeError):
                pass
            except Exception as error:
                runtime.tap_failed(error)

    def data_out(self, **kwargs):
        """Record game output, then send it on unchanged."""
        try:
            runtime.current().tap_out(self, kwargs)
        except Exception as error:
            runtime.tap_failed(error)
        super().data_out(**kwargs)

    # ---------------------------------------------------------------- lifecycle hooks

    def at_sync(self):
        """A new connection, or this server rebuilding it after a reload."""
        super().at_sync()
        try:
            lifecycle.opened(self, runtime.current())
        except Exception as error:
            runtime.tap_failed(error)

    def at_login(self, account):
        """The connection logged in to `account`."""
        super().at_login(account)
        try:
            runtime.current().record(self, "login")
        except Exception as error:
            runtime.tap_failed(error)

    def at_disconnect(self, reason=None):
        """The connection is closing: logout (if logged in), then disconnect."""
        account = self.account if self.logged_in else None
        super().at_disconnect(reason)  # unpuppets first (its own record)
        try:
            live = runtime.current()
            if account is not None:
                live.record(self, "logout", who=(account, None))
            live.record(self, "disconnect", who=(account, None), reason=reason or "")
        except Exception as error:
            runtime.tap_failed(error)

    # ---------------------------------------------------------------- contrib compatibility

    def audit(self, **kwargs):
        """Build one event synchronously, as Evennia's contrib did (for tests and tools).

        Keyword Args:
            src (str): "client" for input (RCV), "server" for output (SND).
            text, others: as passed to `data_in`/`data_out`.

        Returns:
            dict: the scrubbed event, or {} when there is nothing to record.
        """
        src = kwargs.pop("src", "?")
        live = runtime.current()
        if not kwargs or live.pipeline is None:
            return {}
        builder = Builder(live.config, live.pipeline.builder.scrubber)
        return builder.build(capture(self, SND if src == "server" else RCV, kwargs))

    def mask(self, msg):
        """Scrub one line as input, else as output (the contrib's `mask`). Returns the text."""
        live = runtime.current()
        if live.pipeline is None:
            return msg
        scrubber = live.pipeline.builder.scrubber
        text, label = scrubber.command(msg, self.logged_in)
        if label is None:
            text, label = scrubber.output(msg, self.logged_in)
        return text
