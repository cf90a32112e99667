"""
AuditedServerSession: Evennia's ServerSession with an audit tap on input and output.

Enable it in `server/conf/settings.py`:

    SERVER_SESSION_CLASS = "auditing.server.AuditedServerSession"

`data_in` (client -> game) and `data_out` (game -> client) hand a captured copy of their arguments to
the audit service and then always call Evennia's own method: the game behaves exactly as without
auditing, and no exception from auditing can reach it (it is counted and logged once instead).
The session's hooks add lifecycle records (connect, login, logout, disconnect; see
`auditing.lifecycle`). Evennia imports this module when the server starts, which starts the audit
service (`auditing.service`) and validates the settings before any player's input is handled.
"""

from evennia.server.serversession import ServerSession

from . import service
from .event import RCV, SND, Builder, capture


class AuditedServerSession(ServerSession):
    """A ServerSession whose input and output are recorded (see README.md for the settings)."""

    # Connection id (stable across `evennia reload`) and per-connection sequence number.
    audit_conn = None
    audit_seq = 0

    def data_in(self, **kwargs):
        """Record client input, then pass it on to Evennia unchanged."""
        live = service.current()
        try:
            live.tap_in(self, kwargs)
        except Exception as error:
            live.failed(error)
        if self.logged_in:
            super().data_in(**kwargs)
            return
        # Before login: tell the service who is executing (for signals without a session), and
        # notice a `connect` that did not log in.
        live.executing = self
        try:
            super().data_in(**kwargs)
        finally:
            live.executing = None
        if not self.logged_in:
            try:
                line = kwargs["text"][0][0]
                if isinstance(line, str):
                    live.login_attempt_ended(self, line)
            except (KeyError, IndexError, TypeError):
                pass
            except Exception as error:
                live.failed(error)

    def data_out(self, **kwargs):
        """Record game output, then send it on unchanged."""
        live = service.current()
        try:
            live.tap_out(self, kwargs)
        except Exception as error:
            live.failed(error)
        super().data_out(**kwargs)

    # ---------------------------------------------------------------- lifecycle hooks

    def at_sync(self):
        """A new connection, or this server rebuilding it after a reload."""
        super().at_sync()
        live = service.current()
        try:
            live.opened(self)
        except Exception as error:
            live.failed(error)

    def at_login(self, account):
        """The connection logged in to `account`."""
        super().at_login(account)
        live = service.current()
        try:
            live.logged_in(self)
        except Exception as error:
            live.failed(error)

    def at_disconnect(self, reason=None):
        """The connection is closing: logout (if logged in), then disconnect."""
        account = self.account if self.logged_in else None
        super().at_disconnect(reason)  # unpuppets first (its own record)
        live = service.current()
        try:
            live.closing(self, account, reason)
        except Exception as error:
            live.failed(error)

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
        live = service.current()
        if not kwargs or live.pipeline is None:
            return {}
        if self.audit_conn is None:
            live.registry.assign(self)
        builder = Builder(live.config, live.pipeline.builder.scrubber)
        return builder.build(capture(self, SND if src == "server" else RCV, kwargs)) or {}

    def mask(self, msg):
        """Scrub one line as input, else as output (the contrib's `mask`). Returns the text."""
        live = service.current()
        if live.pipeline is None:
            return msg
        scrubber = live.pipeline.builder.scrubber
        text, label = scrubber.command(msg, self.logged_in)
        if label is None:
            text, label = scrubber.output(msg, self.logged_in)
        return text


# Evennia imports this module as the server starts: the audit service starts with it.
service.start_with_server()
