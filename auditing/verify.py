"""
`evennia-audit keygen` and `evennia-audit verify`: prove the trail was not edited, or say where it was.

    evennia-audit keygen [--key-file PATH] [--force]
    evennia-audit verify [--key K] [--json] [PATH]

`keygen` writes the evolving seal key file (epoch 0, mode 0600) and prints the verification key k(0)
once: keep it off the server. `verify` reads a trail directory (daily, rotated, gzip'd files, in the
order `auditing.trail.list_files` gives) or one file (a central rsyslog's file, one record per line),
recomputes the hash chain (`auditing.chain`), checks every seal against k(epoch) derived from the key,
and reports each problem with file, line, record time and `chain_seq`, and the sealed interval it
falls in. Tampering (modified, inserted, deleted, reordered records, a truncated or removed file, a bad
seal) is kept apart from what is not: crashes (a cut line, a chain restarted by `chain_start`), loss
records, files removed by retention. Exit status: 0 intact (crashes and losses are reported, not
failures), 1 tampering found, 2 usage error or no trail.
"""

import collections
import datetime
import hmac
import os
import sys
import zlib

import orjson

from .chain import (
    ZERO_HEAD, SealKey, chain_value, evolve, key_id, read_lines, seal_mac, split_chained,
)
from .trail import TrailError, TrailFile, list_files

TAMPERING = ("modified", "inserted", "deleted", "reordered", "truncated", "file_removed", "bad_seal",
             "unparseable")
_KNOWN_WINDOW = 100_000  # chain values remembered, to tell a reordered record from an inserted one


class Verifier:
    """One pass over a trail; `run()` returns the report (a dict).

    Args:
        files (list of trail.TrailFile): in writing order.
        key (bytes or None): k(0); None checks the chain only.
    """

    def __init__(self, files, key=None):
        self.files = files
        self.key = key
        self.key_id = key_id(key) if key is not None else None
        self.problems = []
        self.notes = []
        self.intervals = []  # closing seals, in order
        self.records = 0
        self.head = None  # chain value of the last record in order, None before the first
        self.expected = None  # next chain_seq
        self.first = None  # (seq, position) of the first chained record
        self.known = collections.OrderedDict()  # seq -> (chain, position)
        self.missing = []  # [first seq, last seq, position before, position after, seals seen]
        self.waiting = {}  # seq -> (body, chain, position): records whose predecessor is missing
        self.malformed = []  # [position, line, at the end of its file] not yet explained
        self.last_position = None
        self.last_epoch = None
        self.derived = None  # (epoch, key) cache
        self.crashes_since_seal = 0
        self.gaps_since_seal = 0
        self.unchained = 0
        self.retention_through = None
        self.retention_files = []
        self.replay = None  # ((first seq, position), next seq) of resent copies being read
        self.last_seq = None
        self.sealed_seq = None
        self._last_line_ok = True

    # ------------------------------------------------------------ reporting

    def _problem(self, kind, position, detail, seals=None, **extra):
        """A tampering finding; `seals`: seals seen before it (default: now), for its interval."""
        self.problems.append({"kind": kind, **self._where(position), "detail": detail,
                              "_seals": len(self.intervals) if seals is None else seals, **extra})

    def _note(self, kind, position, detail, **extra):
        self.notes.append({"kind": kind, **self._where(position), "detail": detail,
                           "_seals": len(self.intervals), **extra})

    @staticmethod
    def _where(position):
        if position is None:
            return {"file": None, "line": None, "time": None, "chain_seq": None}
        trail_file, line, when, seq = position
        return {"file": trail_file.name, "line": line, "time": when, "chain_seq": seq}

    # ------------------------------------------------------------ the scan

    def run(self):
        for trail_file in self.files:
            try:
                self._scan_file(trail_file)
            except OSError as error:
                self._problem("unparseable", (trail_file, None, None, None),
                              f"cannot read the file: {error.strerror or error}")
        self._finish()
        return self._report()

    def _scan_file(self, trail_file):
        number = 0
        try:
            for number, line in enumerate(read_lines(trail_file.path, trail_file.compressed), 1):
                self._line(trail_file, number, line)
        except (EOFError, OSError, zlib.error) as error:
            if isinstance(error, FileNotFoundError):
                raise
            self._problem("truncated", (trail_file, number + 1, None, None),
                          f"the compressed file ends early or is damaged ({error})")
        if self.malformed and self.malformed[-1][0][0] is trail_file and not self._last_line_ok:
            self.malformed[-1][2] = True  # what follows (a chain_start after a crash?) will tell

    def _line(self, trail_file, number, line):
        complete = line.endswith(b"\n")
        line = line[:-1] if complete else line
        self._last_line_ok = True
        if not line.strip():
            return
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = None
        position = (trail_file, number, None, None)
        if type(record) is not dict:
            self._last_line_ok = False
            self.malformed.append([position, line, False])
            return
        self.records += 1
        when = record.get("time")
        parts = split_chained(line)
        if parts is None:
            position = (trail_file, number, when, None)
            self._explain_malformed(None, line, record)
            if self.head is None:
                self.unchained += 1
            else:
                self._problem("inserted", position, "a record without chain fields inside the chained trail")
            return
        body, seq, chain = parts
        position = (trail_file, number, when, seq)
        self._explain_malformed(position, line, record)
        self._chained(record, body, seq, chain, position)
        self.last_position = position

    def _explain_malformed(self, position, line, record):
        """Lines that were not JSON, explained by what follows them (or reported as tampering)."""
        restarted = record.get("kind") == "chain_start" and record.get("cut_line") is True
        for index, (bad_position, bad_line, at_file_end) in enumerate(self.malformed):
            if restarted and index == len(self.malformed) - 1:
                self._note("crash", bad_position, "a record cut by a crash; the writer restarted after it")
            elif line.startswith(bad_line):
                self._note("interrupted_write", bad_position,
                           "a write cut short by an error (disk full?); the record follows whole")
            elif at_file_end:
                self._problem("truncated", bad_position, "the file ends inside a record: it was cut short")
            else:
                self._problem("unparseable", bad_position, "a line that is not a JSON record (edited?)")
        self.malformed = []

    # ------------------------------------------------------------ the chain

    def _chained(self, record, body, seq, chain, position):
        kind = record.get("kind")
        previous_head = self.head
        if kind == "chain_start":
            previous_head = self._restart(record, seq, position)
        elif self.head is not None and (self.replay is not None or seq < self.expected) and \
                self._resent(body, seq, chain, position):
            return
        elif self.head is None:
            self.first = (seq, position)
            if seq == 1:
                previous_head = ZERO_HEAD
        elif seq < self.expected:
            self._out_of_order(record, body, seq, chain, position)
            return
        elif seq > self.expected:
            self.missing.append([self.expected, seq - 1, self.last_position, position, len(self.intervals)])
            self.gaps_since_seal += 1
            self.waiting[seq] = (body, chain, position)
            if len(self.waiting) > _KNOWN_WINDOW:
                self.waiting.pop(next(iter(self.waiting)))
            previous_head = None
        if previous_head is not None and chain_value(previous_head, seq, body) != chain:
            self._problem("modified", position, "the record does not match its chain value: it was edited")
        self.head, self.expected, self.last_seq = chain, seq + 1, seq
        self._remember(seq, chain, position)
        self._kind(record, seq, previous_head, position)

    def _resent(self, body, seq, chain, position):
        """True for a copy a sink resent (syslog over TCP after a reconnect delivers at least once).

        Resent copies repeat, in order, the records just before them, up to the last one, with the
        same chain values; anything else that repeats a `chain_seq` was inserted.
        """
        earlier = self.known.get(seq)
        same = earlier is not None and earlier[0] == chain and seq < self.expected
        if self.replay is not None:
            start, next_seq = self.replay
            self.replay = None
            if same and seq == next_seq:
                self.replay = (start, seq + 1)
            else:
                self._problem("inserted", start[1], f"chain_seq {start[0]} appears a second time "
                              f"(also at {self.known[start[0]][1][0].name}:{self.known[start[0]][1][1]}): "
                              "a record was inserted or copied")
        if same and self.replay is None:
            self.replay = ((seq, position), seq + 1)
        if self.replay is None:
            return False
        before = self.known.get(seq - 1)
        if before is not None and chain_value(before[0], seq, body) != chain:
            self._problem("modified", position, "the record does not match its chain value: it was edited")
        if seq == self.expected - 1:
            (first, first_position), self.replay = self.replay[0], None
            self._note("resent", first_position, f"chain_seq {first}..{seq} written again, in order "
                       "(a sink resent them after a reconnect)")
        return True

    def _remember(self, seq, chain, position):
        self.known[seq] = (chain, position)
        if len(self.known) > _KNOWN_WINDOW:
            self.known.popitem(last=False)

    def _restart(self, record, seq, position):
        try:
            prev_seq = int(record.get("prev_seq"))
            prev_head = record["prev_head"].encode()
        except (TypeError, ValueError, KeyError, AttributeError):
            self._problem("modified", position, "a chain_start record without a valid previous head")
            return None
        self.crashes_since_seal += 1
        if self.head is None:
            self.first = (prev_seq + 1, position)
        elif prev_seq == self.expected - 1 and prev_head == self.head:
            self._note("crash", position, "the writer stopped without closing the chain "
                       f"(kill -9, power cut); the chain resumes from chain_seq {prev_seq}")
        elif prev_seq >= self.expected:
            self.missing.append([self.expected, prev_seq, self.last_position, position, len(self.intervals)])
            self.gaps_since_seal += 1
        else:
            self._note("crash", position, f"the writer restarted from chain_seq {prev_seq} after a crash; "
                       f"records {prev_seq + 1}..{self.expected - 1} were written after the head it recovered")
        if seq != prev_seq + 1:
            self._problem("modified", position, "a chain_start record whose chain_seq does not follow prev_seq")
        return prev_head

    def _out_of_order(self, record, body, seq, chain, position):
        for gap in self.missing:
            if gap[0] <= seq <= gap[1]:
                self._fill(gap, seq)
                self._problem("reordered", position,
                              f"chain_seq {seq} comes after chain_seq {self.last_seq}: records were moved")
                self._check_link(seq, body, chain, position)
                self._remember(seq, chain, position)
                return
        earlier = self.known.get(seq)
        where = f" (also at {earlier[1][0].name}:{earlier[1][1]})" if earlier else ""
        self._problem("inserted", position, f"chain_seq {seq} appears a second time{where}: "
                      "a record was inserted or copied")

    def _fill(self, gap, seq):
        self.missing.remove(gap)
        if gap[0] < seq:
            self.missing.append([gap[0], seq - 1, *gap[2:]])
        if seq < gap[1]:
            self.missing.append([seq + 1, *gap[1:]])

    def _check_link(self, seq, body, chain, position):
        before = self.known.get(seq - 1)
        if before is not None and chain_value(before[0], seq, body) != chain:
            self._problem("modified", position, "the record does not match its chain value: it was edited")
        after = self.waiting.pop(seq + 1, None)
        if after is not None and chain_value(chain, seq + 1, after[0]) != after[1]:
            self._problem("modified", after[2], "the record does not match its chain value: it was edited")

    # ------------------------------------------------------------ record kinds

    def _kind(self, record, seq, previous_head, position):
        kind = record.get("kind")
        if kind == "loss":
            self._note("loss", position, f"{record.get('lost')} events lost between {record.get('first_time')} "
                       f"and {record.get('last_time')} ({record.get('cause')})", lost=record.get("lost"))
        elif kind == "retention":
            self._note("retention", position, f"{record.get('action')}: {', '.join(record.get('files') or [])}")
            if record.get("action") == "delete":
                self.retention_files.extend(record.get("files") or [])
                through = record.get("through_seq")
                if isinstance(through, int):
                    self.retention_through = max(self.retention_through or 0, through)
        elif kind == "seal":
            self._seal(record, seq, previous_head, position)

    def _seal(self, record, seq, previous_head, position):
        epoch = record.get("epoch")
        problems = []
        # After a gap (already reported) the head before the seal is unknown, and removed seals are
        # part of that deletion: not reported twice.
        if previous_head is not None and (record.get("sealed_seq") != seq - 1
                                          or record.get("sealed_head") != previous_head.decode()):
            problems.append("it does not match the chain before it: records it seals were rewritten")
        if self.last_epoch is not None and epoch != self.last_epoch + 1:
            if isinstance(epoch, int) and epoch > self.last_epoch + 1 and self.gaps_since_seal:
                pass
            elif isinstance(epoch, int) and epoch > self.last_epoch + 1 and self.crashes_since_seal:
                self._note("crash", position, f"seals of epochs {self.last_epoch + 1}..{epoch - 1} were never "
                           "written (the writer crashed after evolving its key)")
            else:
                problems.append(f"epoch {epoch} follows epoch {self.last_epoch}: seals were removed or copied")
        if self.key is not None:
            if record.get("key_id") != self.key_id:
                problems.append(f"sealed with another key (key_id {record.get('key_id')}, yours {self.key_id})")
            elif not isinstance(epoch, int) or epoch < 0 or not self._mac_ok(record, epoch):
                problems.append("its MAC is wrong: the seal was forged or edited")
        for problem in problems:
            self._problem("bad_seal", position, f"seal of epoch {epoch}: {problem}")
        self.intervals.append({"epoch": epoch, "sealed_at": record.get("time"), "file": position[0].name,
                               "line": position[1], "verified": self.key is not None and not problems})
        self.last_epoch = epoch if isinstance(epoch, int) else self.last_epoch
        self.sealed_seq = seq
        self.crashes_since_seal = 0
        self.gaps_since_seal = 0

    def _mac_ok(self, record, epoch):
        if self.derived is None or self.derived[0] > epoch:
            self.derived = (0, bytes(self.key))
        at, key = self.derived
        for _ in range(epoch - at):
            key = evolve(key)
        self.derived = (epoch, key)
        expected = seal_mac(key, epoch, record.get("sealed_seq"), record.get("sealed_head"), record.get("time"))
        return hmac.compare_digest(expected, str(record.get("mac")))

    # ------------------------------------------------------------ the end

    def _finish(self):
        if self.replay is not None:
            (first, position), _next = self.replay
            self._problem("inserted", position, f"chain_seq {first} appears a second time: a record was "
                          "inserted or copied")
        last_file = self.files[-1] if self.files else None
        for position, _line, at_file_end in self.malformed:
            if at_file_end and position[0] is last_file:
                self._note("crash", position, "the last line is cut: a crash or a write in progress")
            elif at_file_end:
                self._problem("truncated", position, "the file ends inside a record: it was cut short")
            else:
                self._problem("unparseable", position, "a line that is not a JSON record (edited?)")
        self._start_of_trail()
        for gap in sorted(self.missing, key=lambda gap: gap[0]):
            self._gap(*gap)

    def _start_of_trail(self):
        if self.first is None or self.first[0] <= 1:
            return
        seq, position = self.first
        if self.retention_through is not None and self.retention_through >= seq - 1:
            self._note("retention", position, f"records before chain_seq {seq} were removed by retention "
                       f"({', '.join(self.retention_files)})")
        else:
            self._problem("file_removed", position, f"the trail starts at chain_seq {seq}: "
                          f"the first {seq - 1} records (their files) are missing", 0)

    def _gap(self, first, last, before, after, seals):
        count = last - first + 1
        span = f"chain_seq {first}..{last}" if count > 1 else f"chain_seq {first}"
        records = f"{count} records" if count > 1 else "1 record"
        if before is not None and after is not None and before[0] is not after[0]:
            removed = self._files_between(before[0], after[0])
            if removed:
                self._problem("file_removed", after, f"{records} ({span}) missing: "
                              f"file(s) {', '.join(removed)} removed", seals, missing=count)
            else:
                self._problem("truncated", after, f"{records} ({span}) missing at the end of "
                              f"{before[0].name} (after line {before[1]}): the file was truncated", seals,
                              missing=count)
        else:
            self._problem("deleted", after, f"{records} ({span}) deleted before this line",
                          seals, missing=count)

    @staticmethod
    def _files_between(earlier, later):
        """Names of trail files that should lie between two files but do not exist."""
        if earlier.day is None or later.day is None:
            return []
        names = []
        day = earlier.day + datetime.timedelta(days=1)
        while day < later.day:
            names.append(f"audit_{day.isoformat()}.log")
            day += datetime.timedelta(days=1)
        if earlier.day == later.day and later.index != earlier.index + 1 and later.index < 1 << 61:
            names += [f"audit_{later.day}.{n}.log" for n in range(earlier.index + 1, later.index)]
        if earlier.day < later.day and later.index not in (1, 1 << 62):
            names += [f"audit_{later.day}.{n}.log" for n in range(1, later.index)]
        return names

    def _report(self):
        for item in self.problems + self.notes:
            index = item.pop("_seals")
            item["interval"] = self.intervals[index] if index < len(self.intervals) else "unsealed"
            if item["kind"] in TAMPERING:
                item["tampering"] = True
        tampering = [p for p in self.problems if p["kind"] in TAMPERING]
        return {
            "intact": not tampering,
            "files": [f.name for f in self.files],
            "records": self.records,
            "unchained": self.unchained,
            "last_chain_seq": self.last_seq,
            "seals": len(self.intervals),
            "key_checked": self.key is not None,
            "last_seal": self.intervals[-1] if self.intervals else None,
            "unsealed_records": self._unsealed_count(),
            "problems": sorted(self.problems, key=_order),
            "notes": sorted(self.notes, key=_order),
        }

    def _unsealed_count(self):
        if self.last_seq is None:
            return 0
        if self.sealed_seq is None:
            return self.last_seq - (self.first[0] if self.first else 1) + 1
        return self.last_seq - self.sealed_seq


def _order(item):
    return (item.get("chain_seq") or 0, item.get("file") or "", item.get("line") or 0)


def trail_files(path):
    """The files of a trail directory (`trail.list_files`), or one file (e.g. a central rsyslog's)."""
    if os.path.isfile(path):
        return [TrailFile(path, os.path.basename(path), None, 0, path.endswith(".gz"), os.path.getsize(path))]
    files, _duplicates = list_files(path)
    return files


def verify(path, key=None):
    """Verify the trail at `path` (directory or file) with k(0) `key` (bytes or None): the report."""
    return Verifier(trail_files(path), key).run()


# ---------------------------------------------------------------- CLI


def _print_report(report, path, out):
    seals = f"{report['seals']} seals" + (" checked with your key" if report["key_checked"] else " (not checked: no --key)")
    out.write(f"{path}: {len(report['files'])} files, {report['records']} records, last chain_seq "
              f"{report['last_chain_seq']}, {seals}\n")
    if report["last_seal"]:
        seal = report["last_seal"]
        out.write(f"last seal: epoch {seal['epoch']} at {seal['sealed_at']} ({seal['file']}:{seal['line']}); "
                  f"{report['unsealed_records']} records after it are chained but not sealed yet\n")
    elif report["last_chain_seq"] is not None:
        out.write("no seals: the records are chained but not sealed (no seal key on the server?)\n")
    if report["unchained"]:
        out.write(f"{report['unchained']} records carry no chain fields (written before chaining was on)\n")
    out.write("INTACT\n" if report["intact"] else "TAMPERING FOUND\n")
    for title, items in (("problems", report["problems"]), ("not tampering", report["notes"])):
        if items:
            out.write(f"{title}:\n")
        for item in items:
            interval = item["interval"]
            where_sealed = (f"sealed interval of epoch {interval['epoch']} (seal at {interval['sealed_at']})"
                            if isinstance(interval, dict) else "after the last seal")
            out.write(f"  {item['kind']:<17} {item['file']}:{item['line']} time {item['time']} chain_seq "
                      f"{item['chain_seq']}: {_inert(item['detail'])} [{where_sealed}]\n")


def _inert(text):
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(text))


def cmd_verify(args):
    key = None
    if args.key:
        try:
            key = bytes.fromhex(args.key.strip())
        except ValueError:
            sys.stderr.write("evennia-audit: error: --key must be the hex key keygen printed\n")
            return 2
    path = args.path or args.dir
    if not os.path.exists(path):
        raise TrailError(f"{path}: no such file or directory")
    report = verify(path, key)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_report(report, path, sys.stdout)
    return 0 if report["intact"] else 1


def default_key_file():
    return os.path.join("server", "audit_seal.key")


def cmd_keygen(args):
    path = args.key_file or default_key_file()
    if os.path.lexists(path) and not args.force:
        sys.stderr.write(f"evennia-audit: error: {path} exists (the server's evolving key); --force replaces "
                         "it, and seals written after that verify only with the new key\n")
        return 2
    if os.path.lexists(path):
        os.unlink(path)
    initial = SealKey.create(path)
    sys.stdout.write(
        f"seal key file written: {path} (mode 0600, epoch 0)\n"
        f"verification key (shown once; keep it OFF this server):\n\n    {initial.hex()}\n\n"
        f"check the trail with: evennia-audit verify --key {initial.hex()[:8]}... server/logs\n"
        "restart the game (evennia reload) so the writer starts sealing.\n"
    )
    return 0


def add_commands(sub):
    """Register `keygen` and `verify` on the `evennia-audit` sub-parsers."""
    keygen = sub.add_parser("keygen", help="create the seal key (prints the verification key once)",
                            description="Write the evolving seal key file and print the verification key k(0) once.")
    keygen.add_argument("--key-file", metavar="PATH",
                        help="the key file (default: ./server/audit_seal.key, AUDIT_SEAL_KEY_FILE's default)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key file")
    keygen.set_defaults(func=cmd_keygen, dir=".")
    check = sub.add_parser("verify", help="prove the trail was not edited, or say where it was",
                           description="Recompute the hash chain and check the seals; exit 0 intact, 1 tampering.")
    check.add_argument("--dir", default=None, help="trail directory (default: ./server/logs if it exists, else .)")
    check.add_argument("--key", metavar="HEX", help="the verification key keygen printed (without it: chain only)")
    check.add_argument("--json", action="store_true", help="the report as one JSON document")
    check.add_argument("path", nargs="?", metavar="PATH", help="trail directory or one file (e.g. an rsyslog file)")
    check.set_defaults(func=cmd_verify)
