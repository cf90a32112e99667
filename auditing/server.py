"""
AuditedServerSession: Evennia's ServerSession with an audit tap on input and output.

Enable it in `server/conf/settings.py`:

    SERVER_SESSION_CLASS = "auditing.server.AuditedServerSession"

`data_in` (client -> game) and `data_out` (game -> client) hand a captured copy of their arguments to
the audit pipeline and then always call Evennia's own method: the game behaves exactly as without
auditing, and no exception from auditing can reach it (it is counted and logged once instead).
"""

from evennia.server.serversession import ServerSession

from . import runtime
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
        super().data_in(**kwargs)

    def data_out(self, **kwargs):
        """Record game output, then send it on unchanged."""
        try:
            runtime.current().tap_out(self, kwargs)
        except Exception as error:
            runtime.tap_failed(error)
        super().data_out(**kwargs)

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
        if not kwargs:
            return {}
        live = runtime.current()
        builder = Builder(live.config, live.pipeline.builder.scrubber) if live.pipeline else None
        if builder is None:
            return {}
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
