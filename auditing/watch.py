"""
Watching a player live (`audit/watch`): the player's scrubbed records, sent to staff as they are built.

The writer thread builds and scrubs every event; `Watchers.observe` (a pipeline observer) picks the
events of watched accounts and characters, renders each as one inert line (`render.game_line`:
the player's markup and control characters shown, never interpreted) and hands the lines to the
game thread once per batch, so a flood gives one message per writer batch, not one per event. The
feed comes after scrubbing: a password the watched player types shows as `********`. Watching is not
recording: the feed shows what the player does even where the capture level does not record it.
"""

import threading

from . import hooks, render


class Watchers:
    """Who watches whom. Targets are "name#dbref" tokens of an account or a character; watchers are
    staff sessions, known by their connection id (Evennia's sessions compare equal by address, so
    two sessions from one IP would be one member of a set).

    Args:
        deliver (callable): `deliver(session, text)` on the game thread (tests pass their own).
    """

    def __init__(self, deliver=None):
        self._lock = threading.Lock()
        self._by_target = {}  # token -> {staff connection id: staff session}
        self._pending = {}  # staff connection id -> (session, lines of the current writer batch)
        self._deliver = deliver or _message

    def __bool__(self):
        return bool(self._by_target)

    def start(self, staff, target):
        """`staff` (a session) watches `target`; False if it already did."""
        with self._lock:
            sessions = self._by_target.setdefault(target, {})
            if staff.audit_conn in sessions:
                return False
            sessions[staff.audit_conn] = staff
            return True

    def stop(self, staff, target=None):
        """Stop `staff` watching `target` (all targets when None); the targets it stopped watching."""
        stopped = []
        with self._lock:
            for token, sessions in list(self._by_target.items()):
                if (target is None or token == target) and staff.audit_conn in sessions:
                    del sessions[staff.audit_conn]
                    stopped.append(token)
                if not sessions:
                    del self._by_target[token]
        return stopped

    def end_target(self, target):
        """The watched player left: the staff who watched them (their watch is over)."""
        with self._lock:
            return list(self._by_target.pop(target, {}).values())

    def watching(self, staff):
        with self._lock:
            return sorted(token for token, sessions in self._by_target.items() if staff.audit_conn in sessions)

    def observe(self, event):
        """Pipeline observer (writer thread): queue the event's line for whoever watches its player."""
        if not self._by_target or _is_feed(event):
            return
        tokens = (event.get("account"), event.get("character"))
        with self._lock:
            staff = {}
            for token in tokens:
                if token:
                    staff.update(self._by_target.get(token, {}))
        if staff:
            line = f"|w[watch {render.for_game(tokens[0] or tokens[1] or '?', one_line=True)}]|n " + render.game_line(event)
            with self._lock:
                for conn, session in staff.items():
                    self._pending.setdefault(conn, (session, []))[1].append(line)

    def batch_done(self):
        """Pipeline hook after each batch (writer thread): one message per staff member."""
        if not self._pending:
            return
        with self._lock:
            pending, self._pending = self._pending, {}
        for session, lines in pending.values():
            hooks.on_game_thread(self._deliver, session, "\n".join(lines))


FEED_TYPE = "audit_watch"  # the output type of the feed's own messages: never fed again


def _is_feed(event):
    options = (event.get("data") or {}).get("text_options") or {}
    return isinstance(options, dict) and options.get("type") == FEED_TYPE


def _message(session, text):
    try:
        session.msg(text=(text, {"type": FEED_TYPE}))
    except Exception as error:  # a session gone meanwhile: nothing to show to
        hooks.log_info(f"watch feed to {session} not sent: {error}")
