"""
The in-game `audit` command for staff.

Add it to a command set of your game, e.g. in `commands/default_cmdsets.py`:

    from auditing.commands import CmdAudit

    class AccountCmdSet(default_cmds.AccountCmdSet):
        def at_cmdset_creation(self):
            super().at_cmdset_creation()
            self.add(CmdAudit())

Who may use it: `AUDIT_COMMAND_LOCK` (default `"cmd:perm(Admin) or perm(Developer)"`). It shows the
records the audit writer has seen since the server started (the last 200 per account, character and
connection, kept in memory, already scrubbed); for older history use `evennia-audit` on the files.
Every use is itself recorded, as an `audit_view` record naming who looked at whom.
"""

from django.conf import settings
from evennia import Command

from . import conf, service

_DEFAULT_LIMIT = 20
_TRANSCRIPT_LIMIT = 40


def _lock():
    try:
        return conf.command_lock()
    except conf.AuditConfigError:
        return conf.DEFAULT_COMMAND_LOCK  # the start-up error names the bad value


class CmdAudit(Command):
    """
    look at the audit trail

    Usage:
      audit <account or character>[ = <number>]
      audit/transcript <account or character>
      audit/stats

    The first form lists the last records (20 by default) of an account or
    character. /transcript shows what the current connection of that account
    or character typed and was shown, in order. /stats shows the audit
    pipeline's counters: records delivered, lost, and whether the output fails.
    Records are the scrubbed ones: passwords appear as ********.
    """

    key = "audit"
    switch_options = ("transcript", "stats")
    locks = conf.DEFAULT_COMMAND_LOCK
    help_category = "Admin"

    def __init__(self, **kwargs):
        # The lock is read when the command set is built, so AUDIT_COMMAND_LOCK applies on reload.
        kwargs.setdefault("locks", _lock())
        super().__init__(**kwargs)

    def parse(self):
        args = self.args.strip()
        self.switches = []
        if args.startswith("/"):
            switch, _, args = args[1:].partition(" ")
            self.switches = [switch.strip().lower()]
        target, _, number = args.partition("=")
        self.target = target.strip()
        try:
            self.limit = max(1, min(int(number.strip()), 200)) if number.strip() else None
        except ValueError:
            self.limit = None
            self.target = args.strip()

    def func(self):
        live = service.current()
        if live.pipeline is None:
            self.msg(f"Auditing is off: {live.error}")
            return
        if "stats" in self.switches:
            self._record_use(live, "stats", "")
            self._show_stats()
            return
        if not self.target:
            self.msg("Usage: audit <account or character>[ = <number>]  |  audit/transcript <name>  |  audit/stats")
            return
        field, key, connection = self._find(self.target)
        if key is None:
            self.msg(f"No account or character '{self.target}' found.")
            return
        recent = live.pipeline.recent
        live.pipeline.flush(timeout=0.25)  # include what was just typed (bounded: game thread)
        if "transcript" in self.switches:
            self._record_use(live, "transcript", key)
            if connection is None:
                self.msg(f"{key} is not connected.")
                return
            records = recent.get("conn", connection, self.limit or _TRANSCRIPT_LIMIT)
            self.msg(self._transcript(key, records))
        else:
            self._record_use(live, "records", key)
            records = recent.get(field, key, self.limit or _DEFAULT_LIMIT)
            self.msg(self._table(key, records))

    def _find(self, name):
        """(field, "name#dbref", connection id of its newest session) for an account or character."""
        from evennia.accounts.models import AccountDB
        from evennia.objects.models import ObjectDB

        account = AccountDB.objects.filter(username__iexact=name).first()
        if account is not None:
            sessions = account.sessions.all()
            conn = sessions[-1].audit_conn if sessions else None
            return "account", f"{account.key}{account.dbref}", conn
        character = ObjectDB.objects.filter(db_key__iexact=name).first()
        if character is not None:
            sessions = character.sessions.all()
            conn = sessions[-1].audit_conn if sessions else None
            return "character", f"{character.key}{character.dbref}", conn
        return None, None, None

    def _record_use(self, live, mode, target):
        session = self.session
        if session is not None and hasattr(session, "audit_conn"):
            live.record(session, "audit_view", mode=mode, target=target)

    @staticmethod
    def _line(record):
        when = record.get("time", "")[:19].replace("T", " ")
        kind = record.get("kind", "io")
        if kind == "io":
            arrow = "|c<|n" if record.get("direction") == "RCV" else "|y>|n"
            text = record.get("text", "") or ", ".join(record.get("data", {}) or {})
            return f"|w{when}|n {arrow} {text}"
        details = " ".join(
            f"{name}={record[name]}"
            for name in ("ip", "protocol", "tried_account", "puppet", "reason", "lost", "target")
            if record.get(name) not in (None, "")
        )
        return f"|w{when}|n |m[{kind}]|n {details}"

    def _table(self, key, records):
        if not records:
            return f"No records of {key} since the server started (see evennia-audit for older ones)."
        lines = [f"|wLast {len(records)} records of {key}|n (< typed, > shown):"]
        lines.extend(self._line(record) for record in records)
        return "\n".join(lines)

    def _transcript(self, key, records):
        if not records:
            return f"No records of {key}'s current connection yet."
        first = records[0]
        lines = [
            f"|wTranscript of {key}|n, connection {first.get('conn')} from {first.get('ip', '?')} "
            f"({first.get('protocol', '?')}):"
        ]
        lines.extend(self._line(record) for record in records)
        return "\n".join(lines)

    def _show_stats(self):
        stats = service.current().stats()
        lines = ["|wAudit pipeline|n"]
        for name in ("output", "accepted", "delivered", "queued", "retrying", "lost", "failing",
                     "last_cause", "build_errors", "capture_errors"):
            lines.append(f"  {name:<15} {stats.get(name)}")
        lines.append(f"  {'log dir':<15} {getattr(settings, 'AUDIT_LOG_DIR', None) or settings.LOG_DIR}")
        self.msg("\n".join(lines))
