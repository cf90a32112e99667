"""
Tamper evidence on the writer: a hash chain over the delivered records, sealed with a forward-secure key.

Chain. `ChainingSink` wraps a built-in sink and adds two fields at the end of every record it hands
over (the record stays one JSON object):

    {...,"chain_seq":1234,"chain":"<32 hex>"}

`chain_seq` counts the records of the stream (1, 2, ...); `chain` = BLAKE2b-128(previous `chain` (32 hex
characters) || chain_seq in decimal || the record's bytes without the two fields), in hex. Those bytes are the line
as written minus its tail, so a verifier recomputes the chain from the line as it stands
(`split_chained`), without re-serialising JSON; a syslog daemon that stores the message as received
(`%msg%`) keeps it verifiable too. One chain
per output stream: a new day, a rotated file, a reload continue it. Only what the inner sink reports
delivered advances the chain: records it refused are chained again, from the right head, when the
pipeline retries them.

Seals. Every `seal_interval` seconds (when records were chained since the last seal) and at close, a
`seal` record holds a MAC (keyed BLAKE2b) of the chain head under the key of epoch n, k(n); then
k(n+1) = H(k(n)) replaces it in memory and in the key file (rewritten atomically), so whoever takes the
server later holds only a key that cannot seal the past (the idea of journald's Forward Secure Sealing).
The verifier derives k(n) from k(0), the key `evennia-audit keygen` printed once, by n hashings.
Without a key file the records are chained but not sealed (logged once).

Resuming. The head is taken, at the first write, from the last complete record of the trail (file
sink: a clean close ends it with a `final` seal) or, for syslog, from a small state file in AUDIT_LOG_DIR
(written at each flush; `clean` at close). After a clean close the chain simply continues; otherwise a
`chain_start` record (reason `crash`) states the head it recovered, and whether a cut last line was
found, so the verifier tells a crash from an edit. Without a seal key a file trail cannot tell a reload
from a crash, so only a cut line (a sure crash) starts a `chain_start` there. A brand new chain starts
at `chain_seq` 1 from the zero head.
"""

import gzip
import hashlib
import inspect
import json
import os
import time
import zlib

import orjson

from . import FORMAT_VERSION
from .event import iso_time
from .filesink import day_of
from .sinkbase import Sink, SinkError
from .trail import TrailError, list_files

CHAIN_BYTES = 16
KEY_BYTES = 32
ZERO_HEAD = b"0" * (2 * CHAIN_BYTES)  # the "previous chain value" of chain_seq 1 (values are hex bytes)
SECRET_MODE = 0o600
STATE_NAME = "audit_chain_{}.state"  # syslog outputs only (a file trail holds its own head)
_CHAIN_OPEN = b',"chain":"'
_SUFFIX_LEN = len(_CHAIN_OPEN) + 2 * CHAIN_BYTES + 2  # ,"chain":"<hex>"}
_SEQ_KEY = b',"chain_seq":'
_LINE = b'%b,"chain_seq":%d,"chain":"%b"}'  # record without its "}", chain_seq, hex chain
_TAIL_WINDOW = 1 << 16


def _log(level, message):
    from .pipeline import _log as pipeline_log

    pipeline_log(level, message)


# ---------------------------------------------------------------- the chain


def chain_value(previous, seq, record):
    """The chain value (hex bytes) of a record: BLAKE2b-128 of the previous value, chain_seq, record."""
    return hashlib.blake2b(b"%b%d%b" % (previous, seq, record), digest_size=CHAIN_BYTES).hexdigest().encode()


def chained_line(record, seq, chain):
    """The record as written: `record` (bytes of one JSON object) with its chain fields appended."""
    return _LINE % (record[:-1], seq, chain)


def split_chained(line):
    """(record, chain_seq, chain as hex bytes) of a chained line, or None if it has no chain fields.

    `record` is the record as hashed: the line without its two chain fields.
    """
    if len(line) <= _SUFFIX_LEN or line[-_SUFFIX_LEN:-_SUFFIX_LEN + len(_CHAIN_OPEN)] != _CHAIN_OPEN:
        return None
    if line[-2:] != b'"}':
        return None
    chain = line[-2 - 2 * CHAIN_BYTES:-2]
    where = line.rfind(_SEQ_KEY, 0, len(line) - _SUFFIX_LEN)
    if where < 0:
        return None
    try:
        seq = int(line[where + len(_SEQ_KEY):-_SUFFIX_LEN])
    except ValueError:
        return None
    return line[:where] + b"}", seq, chain


def record_bytes(kind, now, **fields):
    """One of the chain's own records (chain_start, seal, retention), serialised."""
    return orjson.dumps({"v": FORMAT_VERSION, "kind": kind, "time": iso_time(now), **fields})


# ---------------------------------------------------------------- keys


def evolve(key):
    """k(n+1) from k(n): one-way, so k(n+1) tells nothing of k(n)."""
    return hashlib.blake2b(bytes(key), digest_size=KEY_BYTES, person=b"audit-evolve").digest()


def derive(initial_key, epoch):
    """k(epoch) from k(0) by `epoch` evolutions."""
    key = bytes(initial_key)
    for _ in range(epoch):
        key = evolve(key)
    return key


def key_id(initial_key):
    """A short public name of k(0), carried by every seal (says which key to verify with)."""
    return hashlib.blake2b(bytes(initial_key), digest_size=8, person=b"audit-key-id").hexdigest()


def seal_mac(key, epoch, sealed_seq, sealed_head_hex, when):
    """The MAC a seal carries: keyed BLAKE2b-256 over what it seals."""
    message = f"audit-seal|{epoch}|{sealed_seq}|{sealed_head_hex}|{when}".encode()
    return hashlib.blake2b(message, key=bytes(key), digest_size=32).hexdigest()


def _write_secret(path, data, sync=True):
    """Replace `path` atomically with `data`, mode 0600, never following a symlink.

    With `sync` the data and the rename are on disk before it returns (the key file: the old key
    must not come back after a power cut).
    """
    directory = os.path.dirname(os.path.abspath(path))
    temporary = f"{path}.tmp"
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 SECRET_MODE)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, path)  # rename() replaces a symlink itself, never its target
    if not sync:
        return
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _read_small(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


class SealKey:
    """The current, evolving sealing key (`epoch`, `key`) and its key file.

    The file holds JSON `{"epoch": n, "key": hex k(n), "key_id": ...}`; k(0) itself is never stored.
    """

    def __init__(self, path, epoch, key, ident):
        self.path = path
        self.epoch = epoch
        self.key = bytearray(key)
        self.key_id = ident

    @classmethod
    def create(cls, path):
        """Write a new key file at epoch 0; returns k(0) (show it once, keep it off the server)."""
        initial = os.urandom(KEY_BYTES)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        cls(path, 0, initial, key_id(initial)).save()
        return initial

    @classmethod
    def load(cls, path):
        """The key in `path`, or None if there is no key file. Raises ValueError if it is damaged."""
        try:
            data = json.loads(_read_small(path))
            return cls(path, int(data["epoch"]), bytes.fromhex(data["key"]), str(data["key_id"]))
        except FileNotFoundError:
            return None
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a seal key file ({error})") from None

    def save(self):
        _write_secret(self.path, json.dumps(
            {"epoch": self.epoch, "key": self.key.hex(), "key_id": self.key_id}).encode())

    def seal(self, sealed_seq, head, now):
        """A seal record's fields for `head`, then evolve: k(n) is gone from memory and disk."""
        when = iso_time(now)
        head_hex = head.decode()
        fields = {
            "epoch": self.epoch, "key_id": self.key_id, "sealed_seq": sealed_seq,
            "sealed_head": head_hex, "mac": seal_mac(self.key, self.epoch, sealed_seq, head_hex, when),
        }
        old = self.key
        self.key = bytearray(evolve(old))
        old[:] = bytes(len(old))  # best effort: Python may hold other copies
        self.epoch += 1
        self.save()
        return when, fields


# ---------------------------------------------------------------- reading the head back


def read_lines(path, compressed=None):
    """The lines of a trail file (plain or gzip), without newlines; the last may be cut."""
    compressed = path.endswith(".gz") if compressed is None else compressed
    opener = gzip.open if compressed else open
    with opener(path, "rb") as stream:
        for line in stream:
            yield line


def last_chained(path, compressed=None):
    """(chain_seq, chain, cut, record) of the last complete chained line of a file; None values if none.

    `cut` says the file ends inside a record (a crash during a write); `record` is that line, parsed.
    """
    cut = False
    try:
        if compressed or path.endswith(".gz"):
            lines = list(read_lines(path, True))
        else:
            with open(path, "rb") as stream:
                size = stream.seek(0, os.SEEK_END)
                window = _TAIL_WINDOW
                while True:
                    stream.seek(max(0, size - window))
                    data = stream.read()
                    lines = data.split(b"\n")
                    if size <= window or len(lines) > 2:
                        lines = [line + b"\n" for line in lines[:-1]] + [lines[-1]]
                        if size > window:
                            lines = lines[1:]  # the first one may start mid-line
                        break
                    window *= 4
    except (OSError, EOFError, zlib.error):
        return None, None, False, None
    for line in reversed(lines):
        if not line.strip():
            continue
        if not line.endswith(b"\n"):
            cut = True
            continue
        parts = split_chained(line.rstrip(b"\n"))
        if parts is not None:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            return parts[1], parts[2], cut, record
    return None, None, cut, None


def trail_head(directory):
    """(chain_seq, chain, cut, record) at the end of the newest trail file holding a chained record."""
    try:
        files, _duplicates = list_files(directory)
    except TrailError:
        return None, None, False, None
    cut_seen = False
    for trail_file in reversed(files):
        seq, chain, cut, record = last_chained(trail_file.path, trail_file.compressed)
        cut_seen = cut_seen or cut
        if seq is not None:
            return seq, chain, cut_seen, record
    return None, None, cut_seen, None


def read_state(path):
    """The chain state file as a dict, or None."""
    try:
        data = json.loads(_read_small(path))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- the sink


class ChainingSink(Sink):
    """Chain (and seal) the records a built-in sink delivers; also the writer's day hook.

    Args:
        inner: the built-in sink (`sinkbase.Sink`): `write(records[, times])`, `flush`, `close`.
        state_path (str or None): the chain state file of a sink whose trail cannot be read back
            (syslog): head at the last flush, `clean` after close. None for a file trail.
        key_path (str or None): the evolving seal key file; None or missing: no seals.
        seal_interval (float): seconds between seals.
        chain (bool): add chain fields (False: only the day hook and the injected records).
        trail_dir (str or None): the file sink's directory, where the head is read back from.
        on_new_day (callable or None): `on_new_day(day, now)` -> list of serialised records to write
            first, called on the writer thread at the first write and when the day changes
            (`auditing.retention`).
        clock (callable): epoch seconds.
    """

    def __init__(self, inner, state_path, key_path=None, seal_interval=60.0, chain=True,
                 trail_dir=None, on_new_day=None, clock=time.time):
        self.inner = inner
        self.state_path = state_path
        self.key_path = key_path
        self.seal_interval = seal_interval
        self.chain = chain
        self.trail_dir = trail_dir
        self.on_new_day = on_new_day
        self.clock = clock
        self._inner_takes_times = "times" in inspect.signature(inner.write).parameters
        self._started = False
        self._closed = False
        self._head = ZERO_HEAD
        self._seq = 0
        self._key = None
        self._sealed_seq = 0
        self._last_seal = 0.0
        self._day = None
        self._own = []  # [(record bytes, time)]: the sink's own records, delivered before any other
        self._state_saved = None
        self._problem_logged = set()

    # ------------------------------------------------------------ start

    def _start(self, now):
        self._started = True
        self._last_seal = now
        if self.chain:
            self._load_key()
            self._resume(now)
            self._sealed_seq = self._seq

    def _resume(self, now):
        if self.trail_dir is not None:
            seq, head, cut, last = trail_head(self.trail_dir)
            # A clean close ends the trail with a final seal.
            clean = not cut and (self._key is None or (type(last) is dict and last.get("final") is True))
        else:
            state = (read_state(self.state_path) if self.state_path else None) or {}
            seq, head, cut = state.get("chain_seq"), state.get("chain"), False
            head = head.encode() if seq else None
            clean = bool(state.get("clean"))
        if not seq:
            return  # a new chain: its first record has chain_seq 1 and follows the zero head
        self._seq, self._head = seq, head
        if not clean:
            self._queue_own(record_bytes(
                "chain_start", now, reason="crash", prev_seq=seq, prev_head=head.decode(),
                cut_line=cut, detail="the previous writer stopped without closing the chain",
            ), now)
        self._save_state(clean=False)

    def _load_key(self):
        if not self.key_path:
            self._log_once("nokey", "info", "the audit trail is chained but not sealed: no seal key "
                           "file (evennia-audit keygen creates one)")
            return
        try:
            self._key = SealKey.load(self.key_path)
        except (OSError, ValueError) as error:
            self._log_once("key", "err", f"cannot read the seal key {self.key_path}: {error}; "
                           "the trail is chained but not sealed")
            return
        if self._key is None:
            self._log_once("nokey", "info", f"the audit trail is chained but not sealed: no key file "
                           f"{self.key_path} (evennia-audit keygen creates one)")

    def _log_once(self, what, level, message):
        if what not in self._problem_logged:
            self._problem_logged.add(what)
            _log(level, message)

    # ------------------------------------------------------------ writing

    def _queue_own(self, record, now):
        self._own.append((record, now))

    def _new_day(self, day, now):
        if day == self._day:
            return
        self._day = day
        if self.on_new_day is None:
            return
        try:
            for record in self.on_new_day(day, now):
                self._queue_own(record, now)
        except Exception as error:  # retention must never stop the trail
            self._log_once("day", "err", f"audit day hook failed: {type(error).__name__}: {error}")

    def write(self, records, times=None):
        """Chain `records` (and any own records waiting) and hand them to the inner sink."""
        now = self.clock()
        if not self._started:
            self._start(now)
        self._new_day(day_of(times[-1] if times else now), now)
        own = len(self._own)
        if own:
            records = [record for record, _ in self._own] + list(records)
            if times is not None:
                times = [when for _, when in self._own] + list(times)
        elif not records:
            return
        try:
            self._deliver(records, times)
        except SinkError as error:
            done_own = min(error.delivered, own)
            del self._own[:done_own]
            if error.delivered < own:
                rejected_own = min(error.rejected, own - error.delivered)
                del self._own[:rejected_own]
                raise SinkError(error.cause, 0, 0) from None
            raise SinkError(error.cause, error.delivered - own, error.rejected) from None
        del self._own[:own]
        # After close (events written on the caller's thread once the writer stopped), the trail must
        # still end with a final seal, or the next start would take the stop for a crash.
        self._seal_if_due(now, final=self._closed and own < len(records))

    def _deliver(self, records, times):
        """Chain and write; on SinkError the head advances over the delivered records only."""
        if self.chain:
            out, heads = self._chained(records)
        else:
            out, heads = records, None
        try:
            if self._inner_takes_times:
                self.inner.write(out, times if times is not None else [self.clock()] * len(out))
            else:
                self.inner.write(out)
        except SinkError as error:
            self._advance(heads, error.delivered)
            raise
        self._advance(heads, len(out))

    def _chained(self, records):
        # chain_value() and chained_line() inlined: this loop is the chain's whole cost per record.
        head, seq = self._head, self._seq
        blake2b, line = hashlib.blake2b, _LINE
        out, heads = [], []
        append, remember = out.append, heads.append
        for record in records:
            seq += 1
            head = blake2b(b"%b%d%b" % (head, seq, record), digest_size=CHAIN_BYTES).hexdigest().encode()
            append(line % (record[:-1], seq, head))
            remember(head)
        return out, heads

    def _advance(self, heads, delivered):
        if heads and delivered > 0:
            self._head = heads[delivered - 1]
            self._seq += delivered

    def _deliver_own(self):
        """Try the waiting own records alone; they stay queued if the sink still fails."""
        if not self._own:
            return True
        try:
            self.write([], [] if self._inner_takes_times else None)
        except SinkError as error:
            self._log_once("own", "err", f"audit chain record not delivered yet: {error.cause}")
            return False
        return True

    # ------------------------------------------------------------ seals

    def _seal_if_due(self, now, final=False):
        """Seal when the interval is up and records came; `final` (close): always."""
        if self._key is None or self._own or (self._seq == self._sealed_seq and not final):
            return
        if not final and now - self._last_seal < self.seal_interval:
            return
        try:
            when, fields = self._key.seal(self._seq, self._head, now)
        except OSError as error:
            self._log_once("seal", "err", f"cannot evolve the seal key {self.key_path}: {error}; "
                           "sealing stops until the next start")
            self._key = None
            return
        self._sealed_seq, self._last_seal = self._seq + 1, now
        if final:
            fields["final"] = True  # the next start knows the writer stopped cleanly
        self._queue_own(orjson.dumps({"v": FORMAT_VERSION, "kind": "seal", "time": when, **fields}), now)
        self._deliver_own()
        self._save_state(clean=False)

    def on_idle(self):
        """Writer thread, every flush interval: deliver waiting own records, seal when due."""
        try:
            now = self.clock()
            if not self._started:
                self._start(now)
            self._new_day(day_of(now), now)
            if self._deliver_own():
                self._seal_if_due(now)
        except Exception as error:  # the writer must go on
            self._log_once("idle", "err", f"audit chain: {type(error).__name__}: {error}")

    # ------------------------------------------------------------ state, flush, close

    def _save_state(self, clean):
        if not self.chain or not self.state_path:
            return
        state = (self._seq, self._head, clean)
        if state == self._state_saved:
            return
        try:
            _write_secret(self.state_path, json.dumps(
                {"chain_seq": self._seq, "chain": self._head.decode(), "clean": clean,
                 "time": iso_time(self.clock())}).encode(), sync=clean)
            self._state_saved = state
        except OSError as error:
            self._log_once("state", "err", f"cannot write {self.state_path}: {error}")

    def flush(self):
        self.inner.flush()
        self._save_state(clean=False)

    def close(self):
        """Seal what is unsealed, record a clean stop, close the inner sink."""
        self._closed = True
        try:
            now = self.clock()
            if self._started and self._deliver_own():
                self._seal_if_due(now, final=True)
            if self._started and not self._own:
                self._save_state(clean=True)
        finally:
            self.inner.close()

    def abandon(self):
        """Close as a crash would leave it: what is written stays, no final seal, state not clean.

        For the writer process whose server died (kill -9): the server's unsent records are lost,
        and the next start's `chain_start` makes `verify` say so."""
        self._closed = True
        try:
            if self._started:
                self._deliver_own()
            self.flush()
        finally:
            self.inner.close()

    def __getattr__(self, name):
        # The pipeline and tests may look at the inner sink's attributes (directory, path_for...).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
