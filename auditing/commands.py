"""
The in-game `audit` command for staff.

Add it to a command set of your game, e.g. in `commands/default_cmdsets.py`:

    from auditing.commands import CmdAudit

    class AccountCmdSet(default_cmds.AccountCmdSet):
        def at_cmdset_creation(self):
            super().at_cmdset_creation()
            self.add(CmdAudit())

Who may use it: `AUDIT_COMMAND_LOCK` (default `"cmd:perm(Admin) or perm(Developer)"`). What it shows
comes from the audit trail itself, the files of the file sink in `AUDIT_LOG_DIR` (read with
`auditing.trail`, like `evennia-audit`), so history survives reloads and restarts. The files are read
off the reactor thread (`deferToThread`) and each look is bounded in time (`READ_BUDGET`) and records,
newest day first: a long trail never stalls the game. Everything shown is inert (`auditing.render`):
a player's colour codes, links (`|lc...|le`) and control characters are shown, never interpreted.
Every use is itself recorded, as an `audit_view` record naming who looked at whom and how.
"""

import datetime
import functools
import time

from evennia import Command
from twisted.internet import threads

from . import conf, hooks, render, service, trail
from .event import token
from .render import for_game

DEFAULT_LIMIT = 20
TRANSCRIPT_LIMIT = 40
SESSIONS_LIMIT = 10
MAX_LIMIT = 200
READ_BUDGET = 5.0  # seconds one look at the trail may take (off the reactor thread)
SESSION_SCAN_RECORDS = 20_000  # newest records of an account searched for its connections
# Seconds waited for the writer, so what was just typed is in the files (off the reactor thread;
# the writer process may still be starting just after a reload).
FLUSH_TIMEOUT = 3.0

# Runs `function` off the reactor thread and returns a Deferred (a seam for tests).
defer_to_thread = threads.deferToThread


def _lock():
    try:
        return conf.command_lock()
    except conf.AuditConfigError:
        return conf.DEFAULT_COMMAND_LOCK  # the start-up error names the bad value


class Target:
    """Whom the staff member asked about: field ("account" or "character"), the name#dbref the trail
    uses (or the name as typed for one no longer in the database), and its live connection id."""

    def __init__(self, field, key, conn=None):
        self.field, self.key, self.conn = field, key, conn

    def filter(self, **options):
        return trail.Filter(**{self.field: self.key}, **options)

    def owns(self, record):
        """The record is this account's / character's own (not a failed login that tried the name)."""
        return trail.name_matcher(self.key)(record.get(self.field))


class CmdAudit(Command):
    """
    look at the audit trail

    Usage:
      audit <account or character>[ = <number>]
      audit/transcript <account or character>[ = <number>]
      audit/sessions <account or character>[ = <number>]
      audit/stats
      audit/watch <account or character>
      audit/unwatch [<account or character>]
      audit/flag <account>
      audit/unflag <account>

    The first form lists the last records (20 by default) of an account or
    character. /transcript shows what its current connection (or, if it is
    not connected, its last one) typed and was shown, in order. /sessions
    lists its last connections: start, end, duration, IP, protocol, end
    reason and record count. /stats shows the audit pipeline's counters.
    /watch streams a player's records to you live (scrubbed, within a
    second) until /unwatch or either of you logs out. /flag records an
    account in full (input and output) whatever AUDIT_CAPTURE says, until
    /unflag; it is kept on the account across restarts.
    Legend: > typed by the player, < shown by the game, *** connection
    event, !!! records lost. Records are the scrubbed ones: passwords appear
    as ********. Older history: evennia-audit on the files.
    """

    key = "audit"
    switch_options = ("transcript", "sessions", "stats", "watch", "unwatch", "flag", "unflag")
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
            self.limit = max(1, min(int(number.strip()), MAX_LIMIT)) if number.strip() else None
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
        control = next((s for s in ("watch", "unwatch", "flag", "unflag") if s in self.switches), None)
        if control:
            self._control(live, control)
            return
        if not self.target:
            self.msg("Usage: audit <name>[ = <number>]  |  audit/transcript <name>  |  audit/sessions <name>  "
                     "|  audit/stats  |  audit/watch <name>  |  audit/unwatch  |  audit/flag <account>")
            return
        target = self._find(self.target)
        mode = next((s for s in ("transcript", "sessions") if s in self.switches), "records")
        self._record_use(live, mode, target.key)
        work = functools.partial(LOOKS[mode], conf.get().log_dir, target, self.limit,
                                 flush=functools.partial(live.pipeline.flush, timeout=FLUSH_TIMEOUT))
        deferred = defer_to_thread(work)
        deferred.addCallbacks(self.msg, self._failed)
        return deferred

    def _control(self, live, switch):
        """watch / unwatch / flag / unflag: change what is watched or recorded (each change is a record)."""
        found = hooks.find_account_or_character(self.target) if self.target else None
        name = for_game(self.target, one_line=True)
        if self.target and found is None:
            self.msg(f"No account or character '{name}' found.")
            return
        if switch == "unwatch":
            stopped = live.unwatch(self.session, found)
            self.msg("Stopped watching " + ", ".join(for_game(t, one_line=True) for t in stopped) + "."
                     if stopped else "You were not watching " + (name or "anyone") + ".")
            return
        if found is None:
            self.msg(f"Usage: audit/{switch} <{'account' if 'flag' in switch else 'account or character'}>")
            return
        if switch == "watch":
            if self.session is None or found in (self.account, self.caller):
                self.msg("You cannot watch yourself.")
                return
            started = live.watch(self.session, found)
            self.msg(f"Watching {name}: their records appear here as they happen (audit/unwatch {name} to stop)."
                     if started else f"You are already watching {name}.")
            return
        account = found if hooks.is_account(found) else getattr(found, "account", None)
        if account is None:
            self.msg(f"{name} has no account to flag.")
            return
        changed = live.flag(self.session, account, switch == "flag")
        who = for_game(account.key, one_line=True)
        if switch == "flag":
            self.msg(f"{who} is {'now' if changed else 'already'} recorded in full (input and output).")
        elif changed:
            self.msg(f"{who} is now recorded as AUDIT_CAPTURE says ({live.config.capture}).")
        else:
            self.msg(f"{who} was not flagged in game (AUDIT_FLAGGED in the settings may name it).")

    def _failed(self, failure):
        hooks.log_error(f"the audit command could not read the trail: {failure.getErrorMessage()}")
        self.msg(f"Could not read the audit trail: {for_game(failure.getErrorMessage(), one_line=True)}")

    def _find(self, name):
        """The Target for an account or character name (a name the database no longer knows is
        looked up in the trail as typed)."""
        found = hooks.find_account_or_character(name)
        if found is None:
            return Target("account", name)
        sessions = found.sessions.all()
        conn = getattr(sessions[-1], "audit_conn", None) if sessions else None
        return Target("account" if hooks.is_account(found) else "character", token(found), conn)

    def _record_use(self, live, mode, target):
        session = self.session
        if session is not None and hasattr(session, "audit_conn"):
            live.record(session, "audit_view", mode=mode, target=target)

    def _show_stats(self):
        stats = service.current().stats()
        lines = ["|wAudit pipeline|n"]
        for name in ("output", "accepted", "delivered", "queued", "retrying", "lost", "failing",
                     "last_cause", "build_errors", "capture_errors"):
            lines.append(f"  {name:<15} {for_game(str(stats.get(name)), one_line=True)}")
        lines.append(f"  {'log dir':<15} {for_game(conf.get().log_dir, one_line=True)}")
        self.msg("\n".join(lines))


# ---------------------------------------------------------------- looks at the trail (off the reactor)


class _Budget:
    """The time left for one look; `incomplete` says when it ran out."""

    def __init__(self, seconds=None):
        self.clock = time.monotonic
        self.deadline = self.clock() + (READ_BUDGET if seconds is None else seconds)
        self.incomplete = False

    def left(self):
        return max(self.deadline - self.clock(), 0.0)

    def note(self):
        return (f"\n|y(stopped after {READ_BUDGET:g} s: older records were not searched; "
                f"evennia-audit reads everything)|n" if self.incomplete else "")


def _newest(directory, flt, limit, budget, keep=None):
    records, complete = trail.newest(directory, flt, limit, keep=keep, budget=budget.left())
    budget.incomplete = budget.incomplete or not complete
    return records


def _guard(look):
    """A look returns the text to show; a trail that cannot be read is said, not raised."""

    @functools.wraps(look)
    def guarded(directory, target, limit, flush=None):
        if flush is not None:
            flush()  # what was just typed reaches the files first (bounded)
        try:
            return look(directory, target, limit, _Budget())
        except trail.TrailError as error:
            return f"Cannot read the audit trail: {for_game(str(error), one_line=True)}"

    return guarded


@_guard
def look_records(directory, target, limit, budget):
    """The last records of an account or character (also failed logins that tried the name)."""
    records = _newest(directory, target.filter(), limit or DEFAULT_LIMIT, budget)
    name = for_game(target.key, one_line=True)
    if not records:
        return f"No records of {name} in the audit trail ({for_game(directory, one_line=True)})." + budget.note()
    lines = [f"|wLast {len(records)} records of {name}|n ({render.LEGEND}):"]
    lines.extend(render.game_line(record) for record in records)
    return "\n".join(lines) + budget.note()


@_guard
def look_transcript(directory, target, limit, budget):
    """The current connection of the target, or its last one if it is not connected."""
    name = for_game(target.key, one_line=True)
    conn, until, when = target.conn, None, "current connection"
    if conn is None:
        last = _newest(directory, target.filter(), 1, budget, keep=lambda r: target.owns(r) and r.get("conn"))
        if not last:
            return f"{name} is not connected and has no connection in the audit trail." + budget.note()
        conn = last[0]["conn"]
        until = trail.parse_time(last[0]["time"]) + datetime.timedelta(days=1)  # its logout and disconnect
        when = "last connection (not connected now)"
    records = _newest(directory, trail.Filter(conn=conn, until=until), limit or TRANSCRIPT_LIMIT, budget)
    if not records:
        return f"No records of {name}'s {when} yet." + budget.note()
    first = records[0]
    lines = [f"|wTranscript of {name}|n, {when} {for_game(conn, one_line=True)} from "
             f"{for_game(str(first.get('ip', '?')), one_line=True)} "
             f"({for_game(str(first.get('protocol', '?')), one_line=True)}); {render.LEGEND}:"]
    lines.extend(render.game_line(record) for record in records)
    return "\n".join(lines) + budget.note()


@_guard
def look_sessions(directory, target, limit, budget):
    """The last connections of the target, one line each (the same `trail.sessions` as the CLI)."""
    limit = limit or SESSIONS_LIMIT
    name = for_game(target.key, one_line=True)
    owned = _newest(directory, target.filter(), SESSION_SCAN_RECORDS, budget,
                    keep=lambda r: target.owns(r) and r.get("conn"))
    conns = list(dict.fromkeys(r["conn"] for r in reversed(owned)))[:limit]
    if not conns:
        return f"No connections of {name} in the audit trail." + budget.note()
    first = min(r["time"] for r in owned if r["conn"] in conns)
    flt = trail.Filter(conn=conns, since=trail.parse_time(first[:10]))
    reader = trail.Reader(directory, flt, deadline=budget.deadline)
    found = trail.sessions(record for record, _line in reader)
    budget.incomplete = budget.incomplete or reader.stopped
    rows = [render.session_row(entry) for entry in found]
    lines = [f"|wLast {len(found)} connection(s) of {name}|n:"]
    lines.extend(render.table([render.SESSION_HEADER] + rows, for_game))
    return "\n".join(lines) + budget.note()


LOOKS = {"records": look_records, "transcript": look_transcript, "sessions": look_sessions}
