"""
What is recorded: the capture level, flagged accounts and excluded output types.

Observing is not recording: every input and output is built and scrubbed on the writer thread
whatever is recorded (scrubbing needs the prompts and the typed secrets), and then this policy
decides whether the record is written. Lifecycle records are always written.

    AUDIT_IN / AUDIT_OUT       which directions are recorded at all (the contrib's settings)
    AUDIT_CAPTURE = "all"      "all": both of those; "input": only what players type;
                               "lifecycle": only connect/login/logout/... records
    AUDIT_FLAGGED = []         account names always recorded in full (input and output), like
                               accounts staff flag in game with `audit/flag` (kept on the account)
    AUDIT_EXCLUDE_OUTPUT = []  output `type`s never recorded (a prompt or a map sent every second),
                               except for flagged accounts

Every change of what is recorded is itself a `capture_change` record (`auditing.service`), so the
trail states what it did not record.
"""

from .event import RCV, SND

LEVELS = ("all", "input", "lifecycle")
FLAG_ATTRIBUTE = "audit_flagged"  # an Attribute on the account, category FLAG_CATEGORY
FLAG_CATEGORY = "auditing"


def describe_settings(config):
    """What the settings record, as a small dict for `capture_change` records."""
    return {
        "capture": config.capture,
        "input": config.audit_in,
        "output": config.audit_out,
        "exclude_output": sorted(config.exclude_output),
    }


class CapturePolicy:
    """Decides, per built event, whether it is written. Writer thread; flags change on the game thread.

    Args:
        config (conf.AuditConfig): the validated settings.
        flagged (iterable): lower-case account names flagged in game (from their Attributes).
    """

    def __init__(self, config, flagged=()):
        level = config.capture
        self.directions = frozenset(
            direction
            for direction, on in (
                (RCV, config.audit_in and level in ("all", "input")),
                (SND, config.audit_out and level == "all"),
            )
            if on
        )
        self.excluded = frozenset(config.exclude_output)
        self.flagged = set(config.flagged) | {name.lower() for name in flagged}

    def is_flagged(self, account):
        if account is None or not self.flagged:
            return False
        try:
            return account.key.lower() in self.flagged
        except Exception:
            return False

    def records(self, captured):
        """Is this captured input/output event written? (lifecycle records always are)"""
        kind, direction, account, kwargs = captured[1], captured[2], captured[6], captured[9]
        if kind != "io":
            return True
        if self.is_flagged(account):
            return True
        if direction not in self.directions:
            return False
        return not (direction == SND and self.excluded and _output_type(kwargs) in self.excluded)

    def flag(self, name, on):
        """Flag or unflag an account name (game thread; a set update the writer sees next)."""
        if on:
            self.flagged.add(name.lower())
        else:
            self.flagged.discard(name.lower())


def _output_type(kwargs):
    text = kwargs.get("text")
    if isinstance(text, (tuple, list)) and len(text) == 2 and isinstance(text[1], dict):
        return text[1].get("type")
    # An output sent under another name than text (a prompt, a map over OOB) is its own type.
    names = [name for name in kwargs if name != "options"]
    return names[0] if len(names) == 1 and names[0] != "text" else None
