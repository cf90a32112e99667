"""
The connection registry: ids, sequence numbers and what carries over a restart of the server process.

Evennia reuses session numbers, and `evennia reload` rebuilds every server session from the portal's
copy, so a connection is identified by what the portal keeps across a reload (session number,
protocol, address and the portal's connection time: `origin_key`). The registry gives each new
connection an id unique across server restarts and remembers, in `<AUDIT_LOG_DIR>/.audit_connections.json`
(mode 0600, never through a symlink), which connections are open:

- at an orderly reload it writes every open connection's id, sequence number and scrubbing state
  (after the writer drained, so the state includes every prompt seen), marked `clean`;
- while the server runs it rewrites the file (off the game thread) whenever a connection opens,
  logs in or out or closes, marked not clean, so a `kill -9` leaves the list of what was open.

The next server process takes the file back once (`load`): a connection the portal hands back keeps
its id and gapless sequence after a reload; one that does not come back (it closed during the reload,
or the server crashed) is `leftover` and gets its `disconnect` record from the service. After a crash a
connection the portal hands back starts a new id (its sequence numbers since the last save are unknown),
with `resumed_from` naming the old one.
"""

import itertools
import json
import os
import threading
import time

STATE_FILE = ".audit_connections.json"
FILE_MODE = 0o600

# Unique across server restarts (start time and pid) and across services of one process (tests).
_ID_PREFIX = f"{int(time.time()):x}{os.getpid():x}"
_id_counter = itertools.count(1)


def origin_key(session):
    """What identifies a connection across a reload (all of it is kept by the portal)."""
    return repr((session.sessid, session.protocol_key, str(session.address), session.conn_time))


class Carried:
    """What a previous server process knew about one open connection."""

    __slots__ = ("conn", "seq", "scrub", "account", "ip", "protocol", "sessid", "watching", "clean")

    def __init__(self, conn, seq, scrub=None, account="", ip="", protocol="", sessid=None, watching=(),
                 clean=True):
        self.conn, self.seq, self.scrub = str(conn), int(seq), scrub
        self.account, self.ip, self.protocol, self.sessid = account, ip, protocol, sessid
        self.watching = [str(token) for token in watching or ()]
        self.clean = clean


class ConnectionRegistry:
    """Connection ids and sequence numbers of one server process, and the state file.

    Args:
        directory (str): where the state file lives (`AUDIT_LOG_DIR`).
        clock (callable): epoch seconds.
    """

    def __init__(self, directory, clock=time.time):
        self.directory = directory
        self.path = os.path.join(directory, STATE_FILE)
        self.clock = clock
        self.carried = {}  # origin_key -> Carried, from the previous process
        self.previous_clean = True  # did the previous process stop in order?
        self._write_lock = threading.Lock()
        self._generation = 0  # of snapshots taken; an older one is never written over a newer one
        self._written = 0
        self.save_errors = 0

    # ---------------------------------------------------------------- ids

    def new_id(self):
        """A connection id unique across server restarts: start time, pid and a counter."""
        return f"{_ID_PREFIX}-{next(_id_counter)}"

    def assign(self, session):
        """Give a session that has no id yet (one built by hand, say) a fresh one."""
        session.audit_conn = self.new_id()
        session.audit_seq = 0
        return session.audit_conn

    def take_back(self, session):
        """The carried-over entry for a rebuilt session, or None (it is removed either way)."""
        return self.carried.pop(origin_key(session), None)

    def leftovers(self):
        """Carried-over connections no session claimed; the registry forgets them."""
        left = list(self.carried.values())
        self.carried.clear()
        return left

    # ---------------------------------------------------------------- the state file

    def snapshot(self, sessions, scrub_states=None, watching=None, clean=False):
        """A JSON-able picture of the open connections (cheap: game thread).

        `scrub_states` and `watching` map connection ids to their scrubbing state (keyed digests, no
        secret in clear) and to the players a staff connection watches; both are saved at a reload.
        """
        scrub_states = scrub_states or {}
        watching = watching or {}
        connections = {}
        for session in sessions:
            conn = getattr(session, "audit_conn", None)
            if not conn:
                continue
            account = session.account if getattr(session, "logged_in", False) else None
            address = getattr(session, "address", "")
            if isinstance(address, (tuple, list)):
                address = address[0] if address else ""
            connections[origin_key(session)] = {
                "conn": conn,
                "seq": session.audit_seq,
                "scrub": scrub_states.get(conn),
                "account": f"{account.key}#{account.id}" if account is not None else "",
                "ip": str(address or ""),
                "protocol": getattr(session, "protocol_key", ""),
                "sessid": getattr(session, "sessid", None),
                "watching": watching.get(conn) or [],
            }
        self._generation += 1
        return self._generation, {"saved": self.clock(), "clean": clean, "connections": connections}

    def save(self, snapshot):
        """Write a snapshot atomically, 0600, refusing symlinks. Returns an error text or None.

        Safe from any thread: a snapshot older than the one last written is skipped.
        """
        generation, state = snapshot
        with self._write_lock:
            if generation < self._written:
                return None
            try:
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                temporary = f"{self.path}.{os.getpid()}.tmp"
                try:
                    os.unlink(temporary)  # a leftover of ours, or something planted: never reused
                except FileNotFoundError:
                    pass
                fd = os.open(
                    temporary,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    FILE_MODE,
                )
                with os.fdopen(fd, "w") as handle:
                    json.dump(state, handle)
                os.replace(temporary, self.path)  # replaces a symlink itself, never its target
            except OSError as error:
                self.save_errors += 1
                return f"cannot write {self.path}: {error}"
            self._written = generation
        return None

    def discard(self):
        """Remove the state file (a full stop: nothing carries over)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as error:
            self.save_errors += 1
            return f"cannot remove {self.path}: {error}"
        return None

    def load(self):
        """Take back what the previous server process saved (once: the file is removed).

        Returns an error text when the file exists but cannot be used, else None.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as error:
            return f"cannot read {self.path} ({error}); connections start with new ids"
        try:
            with os.fdopen(fd) as handle:
                saved = json.load(handle)
            os.unlink(self.path)
            self.previous_clean = bool(saved.get("clean"))
            for key, entry in (saved.get("connections") or {}).items():
                self.carried[key] = Carried(
                    entry["conn"],
                    entry["seq"],
                    entry.get("scrub"),
                    entry.get("account", ""),
                    entry.get("ip", ""),
                    entry.get("protocol", ""),
                    entry.get("sessid"),
                    entry.get("watching"),
                    clean=self.previous_clean,
                )
        except Exception as error:  # hand-edited or cut: connections get new ids, nothing worse
            return f"ignored {self.path}: {type(error).__name__}: {error}"
        return None
