"""
evennia-audit: search, follow, replay, export and summarise the audit trail (the files of `FileSink`).

    evennia-audit search   [--dir DIR] [FILTERS] [--json | --count | --wide] [--limit N] [--follow]
    evennia-audit sessions [--dir DIR] [FILTERS] [--json]
    evennia-audit replay   [--dir DIR] (--conn ID | --account NAME) [--since T] [--until T]
                           [--no-color] [--speed X] [--max-wait S]
    evennia-audit export   [--dir DIR] --format asciicast (--conn ID | --account NAME) [--since T]
                           [--until T] -o FILE [--width W] [--height H] [--no-color] [--idle-limit S]
    evennia-audit stats    [--dir DIR] [FILTERS] [--top N] [--json]

FILTERS: --account NAME (also a failed login's tried account, and the records of that account's
         connections from before its login) --character NAME --room NAME
         (names: `bob`, `bob#1`, `#1` or a glob `bo*`, case-insensitive), --ip ADDR|CIDR,
         --conn ID (or a glob: 67470c2a1f3b-*), --direction RCV|SND, --kind KIND[,KIND] (io, connect, login,
         login_fail, logout, disconnect, puppet, unpuppet, account_created, audit_view, loss),
         --since T / --until T (ISO 8601 like 2026-11-27 or 2026-11-27T07:40Z, or relative: 30m,
         2h, 7d; a bare date as --until means the end of that day), --text REGEX [-i].

`--dir` defaults to ./server/logs when it exists (run from the game directory), else the current
directory. Also runnable as `python -m auditing`. Files: see `auditing.trail` (our names, logrotate's
numbered and dateext names, gzip'd or not, and the old contrib's lines, shown as `"legacy": true`).

Legend (the same as the in-game `audit` command's): "> " typed by the player (RCV), "< " shown by the
game (SND), "*** " a connection event, "!!! " records lost. Nothing from the trail reaches the terminal
raw: control characters are shown as ^[ or \x9b (see `auditing.render`), JSON escapes C0 and C1.

`search --follow` keeps printing new matching records as they are written (`tail -F`: across day
rollover, the sink's and logrotate's rotation, and a replaced directory) until interrupted.

`sessions` prints one line per connection: start, end, duration, connection id, account(s),
character(s), IP, protocol, end reason, record count. With filters, the connections that have a matching
record are listed, with all their records in the time range counted.

Replay prints a transcript with a timestamp on every line, game output rendered from Evennia's colour
markup to ANSI (or stripped with --no-color / NO_COLOR). `--speed X` waits the recorded gaps divided by
X (each wait capped by --max-wait), like sudoreplay.

`export --format asciicast` writes an asciicast v2 file (asciinema play / asciinema-player), mode 0600
like the trail, never through a symlink: a header line, then `[seconds, "o", text]` events. Players only
show "o" (output) events, so the player's input is written as an "o" echo of "> line" where it happened.

Exit status (like grep): 0 something matched / was done, 1 nothing matched (nothing to replay or
export), 2 usage error, missing directory or no audit file in it, 130 interrupted.
"""

import argparse
import collections
import errno
import os
import shutil
import sys
import time

import orjson

from . import render, trail
from .render import MARKERS, for_terminal
from .trail import Filter, Reader, TrailError
from .verify import add_commands as add_proof_commands

PROG = "evennia-audit"
MAX_PROBLEMS_SHOWN = 20
PROGRESS_MIN_BYTES = 64 << 20
FOLLOW_INTERVAL = 0.2  # seconds between two looks at the directory with --follow
EXIT_MATCHED, EXIT_NONE, EXIT_ERROR = 0, 1, 2

# ---------------------------------------------------------------- shared helpers


class NoTrail(TrailError):
    """The directory holds no audit file (grep's "file not found": exit status 2)."""

    def __init__(self, directory):
        super().__init__(f"no audit files (audit_YYYY-MM-DD*.log[.gz]) in {directory}")


def default_dir():
    return os.path.join("server", "logs") if os.path.isdir(os.path.join("server", "logs")) else "."


class _Problems:
    """Reports malformed lines and unreadable files on stderr (the first few in full)."""

    def __init__(self, stream):
        self.stream = stream
        self.shown = 0

    def __call__(self, path, line_number, reason):
        if self.shown < MAX_PROBLEMS_SHOWN:
            where = path if line_number is None else f"{path}:{line_number}"
            self.stream.write(f"{PROG}: {where}: {reason}\n")
        elif self.shown == MAX_PROBLEMS_SHOWN:
            self.stream.write(f"{PROG}: (further problems not listed)\n")
        self.shown += 1

    def summary(self, reader):
        if reader.malformed:
            self.stream.write(f"{PROG}: skipped {reader.malformed} malformed line(s)\n")
        if reader.unreadable:
            self.stream.write(f"{PROG}: could not read {reader.unreadable} file(s)\n")


class _Progress:
    """A one-line progress bar on stderr, only for a terminal and a big scan."""

    def __init__(self, stream, total):
        self.stream = stream
        self.enabled = total >= PROGRESS_MIN_BYTES and _isatty(stream)
        self.started = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def __call__(self, done, total):
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.2 and done < total:
            return
        self.last = now
        fraction = min(1.0, done / total) if total else 1.0
        width = 30
        filled = int(fraction * width)
        rate = done / max(now - self.started, 1e-6) / 1e6
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} "
            f"{done / 1e6:,.0f}/{total / 1e6:,.0f} MB {rate:,.0f} MB/s"
        )
        self.stream.flush()
        self.drawn = True

    def done(self):
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _make_filter(args, **overrides):
    fields = {}
    for name in ("account", "character", "ip", "conn", "room", "direction", "kind", "since", "until", "text"):
        fields[name] = getattr(args, name, None)
    fields["ignore_case"] = getattr(args, "ignore_case", False)
    fields.update(overrides)
    return Filter(**fields)


def _account_filter(args, **overrides):
    """The filter of the command line; with --account, also that account's records from before its
    login (a first pass finds its connections). Following, an empty directory is fine: files come."""
    conns = None
    following = getattr(args, "follow", False)
    if getattr(args, "account", None) and not (following and not _has_files(args.dir)):
        _check_trail(args.dir)
        problems = _Problems(sys.stderr)
        conns = trail.account_connections(args.dir, args.account, since=args.since, until=args.until,
                                          on_problem=problems)
    return _make_filter(args, account_conns=conns, **overrides)


def _has_files(directory):
    try:
        return bool(trail.list_files(directory)[0])
    except TrailError:
        return False


def _check_trail(directory):
    """Raise NoTrail when `directory` holds no audit file (TrailError when it is missing)."""
    if not trail.list_files(directory)[0]:
        raise NoTrail(directory)


def _open_reader(args, flt, quiet=False, **options):
    """A Reader over args.dir with problem reporting and progress. Raises NoTrail without audit files.

    `quiet`: for a second pass over the same files, do not report the same things again.
    """
    problems = _Problems(sys.stderr)
    reader = Reader(args.dir, flt, on_problem=None if quiet else problems, **options)
    if not reader.all_files:
        raise NoTrail(args.dir)
    if quiet:
        return reader, problems, _Progress(sys.stderr, reader.bytes_total)
    for name in reader.duplicates:
        sys.stderr.write(f"{PROG}: {os.path.join(args.dir, name)}: skipped, the same file exists uncompressed\n")
    progress = _Progress(sys.stderr, reader.bytes_total)
    reader.on_progress = progress
    return reader, problems, progress


def _fit(text, width):
    return text if len(text) <= width else text[: max(width - 1, 0)] + "~"


def _write_json(out, record, line):
    """One record as a JSON line, C0 and C1 escaped; a contrib line is written as the record it gave."""
    blob = render.json_line(record) if record.get("legacy") else render.escape_json_line(line)
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        buffer.write(blob + b"\n")
    else:
        out.write(blob.decode("utf-8", "replace") + "\n")


# ---------------------------------------------------------------- search


class _Table:
    """Rows of the search table. Names are never cut (a cut name can name someone else); the text is
    fitted to the terminal, or shown whole with every field (`wide`)."""

    HEADER = ("TIME", "CONN", "DIR/KIND", "ACCOUNT", "CHARACTER", "ROOM")

    def __init__(self, wide):
        self.wide = wide
        columns = shutil.get_terminal_size((120, 24)).columns
        name = 12 + min(max((columns - 120) // 10, 0), 6)  # wider terminals: longer name columns
        self.widths = (19, 16, 10, name, name, name)
        self.columns = columns

    def header(self):
        return " ".join(h.ljust(w) for h, w in zip(self.HEADER, self.widths)) + " TEXT"

    def row(self, record):
        kind = record.get("kind", "io")
        label = MARKERS[render.style(record)].strip() + " " + str(record.get("direction", "io")) if kind == "io" else kind
        cells = [render.short_time(trail.record_time(record)), record.get("conn"), label,
                 record.get("account"), record.get("character"), record.get("room")]
        cells = [_cell(cell if cell is not None else "") for cell in cells]
        row = " ".join(cell.ljust(width) for cell, width in zip(cells, self.widths))
        text = for_terminal(render.describe(record, wide=self.wide, skip=("account", "character", "room"),
                                            with_kind=False),
                            one_line=True)
        if self.wide or kind != "io":
            return row + " " + text  # lifecycle details are short and never cut
        return row + " " + _fit(text, max(self.columns - len(row) - 1, 20))


def cmd_search(args):
    if args.follow:
        return _follow(args)
    flt = _account_filter(args)
    reader, problems, progress = _open_reader(args, flt, prefilter=not args.no_prefilter)
    out = sys.stdout
    limit = args.limit
    count = 0
    table = None if args.json or args.count else _Table(args.wide)
    try:
        if table is not None:
            out.write(table.header() + "\n")
        for record, line in reader:
            if args.json:
                _write_json(out, record, line)
            elif table is not None:
                out.write(table.row(record) + "\n")
            count += 1
            if limit is not None and count >= limit:
                break
        progress.done()
        if args.count:
            out.write(f"{count}\n")
        elif not count:
            sys.stderr.write(f"{PROG}: no records matched\n")
        out.flush()
    finally:
        progress.done()
    problems.summary(reader)
    return EXIT_MATCHED if count else EXIT_NONE


def _follow(args):
    """`search --follow`: the matching records already written since --since (if given), then every
    new one as it is written, until interrupted or --limit."""
    if args.count:
        raise TrailError("--follow cannot be combined with --count")
    flt = _account_filter(args)
    problems = _Problems(sys.stderr)
    since = args.since is not None
    watch = _AccountWatch(args, flt.account_conns) if args.account else None
    follower = trail.Follower(args.dir, flt if watch is None else Filter(since=args.since), on_problem=problems,
                              from_start=since)
    out = sys.stdout
    table = None if args.json else _Table(args.wide)
    if table is not None:
        out.write(table.header() + "\n")
        out.flush()
    count = 0

    def emit(batch):
        nonlocal count
        for record, line in batch:
            if args.json:
                _write_json(out, record, line)
            else:
                out.write(table.row(record) + "\n")
            count += 1
            if args.limit is not None and count >= args.limit:
                out.flush()
                return True
        out.flush()
        return False

    if since and _has_files(args.dir):
        # History: the rotated and compressed files; the current ones are read by the follower.
        history = Reader(args.dir, flt, on_problem=problems, select=lambda f: not f.current)
        if emit(history):
            return EXIT_MATCHED
    while True:
        batch = follower.poll()
        if emit(batch if watch is None else [shown for item in batch for shown in watch(*item)]):
            return EXIT_MATCHED
        time.sleep(args.interval)


class _AccountWatch:
    """`--follow --account`: which new records to show, learning the account's connections as they
    log in. A connection's records from before its login are held (bounded) until it logs in as the
    account, then shown first; a connection that ends without doing so is forgotten."""

    MAX_HELD_CONNECTIONS = 1000
    MAX_HELD_RECORDS = 200  # per connection

    def __init__(self, args, conns):
        self.name = trail.name_matcher(args.account)
        self.rest = _make_filter(args, account=None)  # every other criterion
        self.conns = set(conns or ())
        self.held = collections.OrderedDict()  # conn -> deque of (record, line)

    def __call__(self, record, line):
        """The (record, line) pairs to show now, for one new record."""
        conn, account = record.get("conn"), record.get("account")
        shown = []
        if account and self.name(account) and conn:
            self.conns.add(conn)
            shown = [item for item in self.held.pop(conn, ()) if self.rest.matches(item[0])]
        elif not account and conn and conn not in self.conns:
            if record.get("kind") == "disconnect":
                self.held.pop(conn, None)
            else:
                self._hold(conn, record, line)
        mine = (account and self.name(account)) or self.name(trail.field(record, "tried_account")) or (
            not account and conn in self.conns)
        if mine and self.rest.matches(record):
            shown.append((record, line))
        return shown

    def _hold(self, conn, record, line):
        held = self.held.get(conn)
        if held is None:
            held = self.held[conn] = collections.deque(maxlen=self.MAX_HELD_RECORDS)
            if len(self.held) > self.MAX_HELD_CONNECTIONS:
                self.held.popitem(last=False)  # the oldest connection still not logged in
        held.append((record, line))


# ---------------------------------------------------------------- transcripts (replay, export)


class Entry:
    """One record of a transcript: when, which connection, and its rendered lines."""

    __slots__ = ("time", "epoch", "conn", "style", "lines")

    def __init__(self, time_string, conn, style, lines):
        self.time = time_string
        self.epoch = trail.epoch(time_string)
        self.conn = conn
        self.style = style  # "in", "out", "event", "loss"
        self.lines = lines


def _collect(args):
    """The records of the asked connection, or of every connection the account used (from the login
    prompt on), plus the loss records overlapping them; sorted by time, then sequence number.

    Returns (records, losses); raises TrailError for a --conn glob matching several connections.
    """
    if args.account:
        _check_trail(args.dir)
        # First pass (prefiltered on the name): which connections did the account use?
        conns = trail.account_connections(args.dir, args.account, since=args.since, until=args.until,
                                          on_problem=_Problems(sys.stderr))
        if not conns:
            return [], []
        flt = Filter(conn=conns, since=args.since, until=args.until)
    else:
        flt = Filter(conn=args.conn, since=args.since, until=args.until)
    reader, problems, progress = _open_reader(args, flt, also_kinds=("loss",), quiet=bool(args.account))
    records, losses = [], []
    try:
        for order, (record, _line) in enumerate(reader):
            if record.get("kind") == "loss" and not flt.matches(record):
                losses.append(record)
                continue
            when = trail.record_time(record)
            if when is None:
                continue
            seq = record.get("seq")
            records.append((when, seq if type(seq) is int else -1, order, record))
    finally:
        progress.done()
    if not args.account:
        problems.summary(reader)
    if args.conn:
        conns = {record.get("conn") for *_, record in records}
        if len(conns) > 1:
            raise TrailError(f"--conn {args.conn} matches several connections: " + ", ".join(sorted(map(str, conns))))
    records.sort(key=lambda item: item[:3])
    sorted_records = [item[3] for item in records]
    if sorted_records:
        first, last = records[0][0], records[-1][0]
        losses = [loss for loss in losses if _overlaps(loss, first, last)]
    return sorted_records, losses


def _overlaps(loss, first, last):
    start = trail.canonical_time(loss.get("first_time") or loss.get("time") or "") or ""
    end = trail.canonical_time(loss.get("last_time") or loss.get("time") or "") or start
    return bool(start or end) and start <= last and end >= first


def transcript(records, losses, color):
    """Entries for the records in order, loss records merged in by time; every line inert."""
    items = [(trail.record_time(r), 0, i, r) for i, r in enumerate(records)]
    items += [(trail.record_time(r), 1, i, r) for i, r in enumerate(losses)]
    items.sort(key=lambda item: item[:3])
    entries = []
    for when, _rank, _index, record in items:
        style = render.style(record)
        conn = for_terminal(str(record.get("conn", "")), one_line=True)
        if style == "in":
            text = render.describe(record)
            if text:
                entries.append(Entry(when, conn, style, for_terminal(text).split("\n")))
        elif style == "out":
            text = record.get("text")
            if text in (None, ""):
                text = render.describe(record)  # [oob] ...
                if text:
                    entries.append(Entry(when, conn, style, [for_terminal(text, one_line=True)]))
                continue
            rendered = render.markup(for_terminal(text if type(text) is str else str(text)), color)
            entries.append(Entry(when, conn, style, render.split_lines(rendered, color)))
        else:
            entries.append(Entry(when, conn, style, [for_terminal(render.describe(record), one_line=True)]))
    return entries


_ESC = "\033["
_DIM, _BOLD, _RED, _CYAN, _RESET = _ESC + "2m", _ESC + "1m", _ESC + "31m", _ESC + "36m", render.RESET


def _styled(entry, line, color):
    marker = MARKERS[entry.style]
    if not color:
        return marker + line
    if entry.style == "in":
        return f"{_BOLD}{marker}{line}{_RESET}"
    if entry.style == "event":
        return f"{_CYAN}{marker}{line}{_RESET}"
    if entry.style == "loss":
        return f"{_BOLD}{_RED}{marker}{line}{_RESET}"
    return f"{marker}{line}{_RESET}" if "\033" in line else marker + line


def _color_wanted(args):
    return not args.no_color and not os.environ.get("NO_COLOR")


def _nothing_recorded(args, suffix):
    what = f"connection {args.conn}" if args.conn else f"account {args.account}"
    sys.stderr.write(f"{PROG}: nothing recorded for {what} in {args.dir}{suffix}\n")
    return 1


def cmd_replay(args):
    records, losses = _collect(args)
    if not records:
        return _nothing_recorded(args, "")
    color = _color_wanted(args)
    entries = transcript(records, losses, color)
    out = sys.stdout
    conns = sorted({e.conn for e in entries if e.style != "loss"})
    tag_conn = len(conns) > 1
    accounts = sorted({for_terminal(str(r["account"]), one_line=True) for r in records if r.get("account")})
    heading = (f"# {len(records)} records, {render.short_time(records[0].get('time'))} .. "
               f"{render.short_time(records[-1].get('time'))} UTC, connection(s) {', '.join(conns)}"
               + (f", account(s) {', '.join(accounts)}" if accounts else ""))
    for line in (heading, f"# {render.LEGEND}"):
        out.write((f"{_DIM}{line}{_RESET}" if color else line) + "\n")
    previous = None
    for entry in entries:
        if args.speed and previous is not None:
            gap = (entry.epoch - previous) / args.speed
            if gap > 0:
                out.flush()
                time.sleep(min(gap, args.max_wait))
        previous = entry.epoch
        stamp = f"{entry.time[:10]} {entry.time[11:23]}"
        if tag_conn:
            stamp += f" [{entry.conn}]" if entry.style != "loss" else ""
        prefix = f"{_DIM}{stamp}{_RESET} " if color else stamp + " "
        for line in entry.lines:
            out.write(prefix + _styled(entry, line, color) + "\n")
    out.flush()
    return 0


def cmd_export(args):
    records, losses = _collect(args)
    if not records:
        return _nothing_recorded(args, "; no file written")
    color = _color_wanted(args)
    entries = transcript(records, losses, color)
    start = entries[0].epoch
    events, longest, previous = [], 0, 0.0
    for entry in entries:
        offset = max(round(entry.epoch - start, 6), previous)
        previous = offset
        lines = [_styled(entry, line, color) for line in entry.lines]
        longest = max([longest] + [len(render.strip_sgr(line)) for line in lines])
        events.append([offset, "o", "\r\n".join(lines) + "\r\n"])
    title = args.title or (f"{PROG}: connection {args.conn}" if args.conn else f"{PROG}: account {args.account}")
    header = {
        "version": 2,
        "width": args.width or max(80, min(longest, 250)),
        "height": args.height,
        "timestamp": int(start),
        "title": title,
        "env": {"TERM": "xterm-256color"},
    }
    if args.idle_limit:
        header["idle_time_limit"] = args.idle_limit
    blob = b"\n".join([orjson.dumps(header)] + [orjson.dumps(event) for event in events]) + b"\n"
    if args.output == "-":
        buffer = getattr(sys.stdout, "buffer", None)
        buffer.write(blob) if buffer is not None else sys.stdout.write(blob.decode())
        sys.stdout.flush()
    else:
        write_private(args.output, blob)
        sys.stderr.write(f"{PROG}: wrote {len(events)} events ({entries[-1].epoch - start:.1f} s) to {args.output}\n")
    return 0


def write_private(path, blob):
    """Write `blob` to `path` as the trail is kept: mode 0600, never through a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise TrailError(f"{path}: is a symbolic link; not writing through it") from None
        raise TrailError(f"{path}: cannot write: {error.strerror or error}") from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
        handle.write(blob)


# ---------------------------------------------------------------- sessions


def connections(args):
    """The Sessions (one per connection) the command line asks for, ordered by start.

    Without filters other than the time range: one pass over the range. With filters: a first pass
    (prefiltered) finds the connections having a matching record, a second gathers all their records.
    """
    flt = _make_filter(args)
    time_only = Filter(since=args.since, until=args.until)
    if flt.kinds is None and not any((args.account, args.character, args.room, args.ip, args.conn,
                                      args.direction, args.text)):
        reader, problems, progress = _open_reader(args, time_only)
        try:
            found = trail.sessions(record for record, _line in reader)
        finally:
            progress.done()
        problems.summary(reader)
        return found
    reader, problems, progress = _open_reader(args, flt)
    try:
        conns = {record["conn"] for record, _line in reader if record.get("conn")}
    finally:
        progress.done()
    problems.summary(reader)
    if not conns:
        return []
    reader, _problems, progress = _open_reader(args, Filter(conn=conns, since=args.since, until=args.until),
                                               quiet=True)
    try:
        return trail.sessions(record for record, _line in reader)
    finally:
        progress.done()


def cmd_sessions(args):
    found = connections(args)
    out = sys.stdout
    if args.json:
        for entry in found:
            out.write(render.json_line(entry.as_dict()).decode() + "\n")
    else:
        rows = [render.session_row(entry) for entry in found]
        for line in render.table([render.SESSION_HEADER] + rows, for_terminal):
            out.write(line.rstrip() + "\n")
    if not found:
        sys.stderr.write(f"{PROG}: no connections matched\n")
    out.flush()
    return EXIT_MATCHED if found else EXIT_NONE


# ---------------------------------------------------------------- stats


def compute_stats(reader, top=10):
    per_day = collections.Counter()
    by_kind = collections.Counter()
    ip_records = collections.Counter()
    ip_conns = collections.defaultdict(set)
    fail_account = collections.Counter()
    fail_ip = collections.Counter()
    losses = []
    lost = 0
    total = 0
    first = last = None
    for record, _line in reader:
        total += 1
        kind = record.get("kind", "io")
        by_kind[f"io {record.get('direction', '?')}" if kind == "io" else kind] += 1
        when = trail.record_time(record)
        if when:
            first = when if first is None or when < first else first
            last = when if last is None or when > last else last
        if kind == "loss":
            count = record.get("lost", 0)
            lost += count if isinstance(count, int) else 0
            losses.append({"first_time": record.get("first_time"), "last_time": record.get("last_time"),
                           "lost": count, "cause": record.get("cause")})
            continue
        per_day[(when[:10] if when else "?", str(record.get("account") or "(none)"))] += 1
        ip = record.get("ip")
        if ip:
            ip_records[ip] += 1
            if record.get("conn"):
                ip_conns[ip].add(record["conn"])
        if kind == "login_fail":
            fail_account[str(trail.field(record, "tried_account") or record.get("account") or "(unknown)")] += 1
            fail_ip[str(ip or "(unknown)")] += 1
    return {
        "directory": reader.directory,
        "files": len(reader.files),
        "bytes": reader.bytes_total,
        "records": total,
        "first_time": first,
        "last_time": last,
        "malformed_lines": reader.malformed,
        "unreadable_files": reader.unreadable,
        "by_kind": dict(sorted(by_kind.items())),
        "per_account_day": [{"day": day, "account": account, "records": n}
                            for (day, account), n in sorted(per_day.items())],
        "top_ips": [{"ip": ip, "records": n, "connections": len(ip_conns.get(ip, ()))}
                    for ip, n in ip_records.most_common(top)],
        "login_failures": {
            "total": sum(fail_account.values()),
            "by_account": [{"account": a, "count": n} for a, n in fail_account.most_common(top)],
            "by_ip": [{"ip": ip, "count": n} for ip, n in fail_ip.most_common(top)],
        },
        "loss": {"records": len(losses), "lost": lost, "spans": losses},
    }


def _cell(value):
    """A value from the trail for one cell of a report: inert, on one line."""
    return for_terminal(value if isinstance(value, str) else orjson.dumps(value, default=str).decode(),
                        one_line=True)


def cmd_stats(args):
    flt = _make_filter(args)
    reader, problems, progress = _open_reader(args, flt)
    try:
        stats = compute_stats(reader, args.top)
    finally:
        progress.done()
    problems.summary(reader)
    out = sys.stdout
    if args.json:
        out.write(render.escape_json_line(orjson.dumps(stats, option=orjson.OPT_INDENT_2)).decode() + "\n")
        return EXIT_MATCHED
    write = out.write
    write(f"trail: {stats['directory']}: {stats['files']} file(s), {stats['bytes']:,} bytes, "
          f"{stats['records']:,} records")
    if stats["first_time"]:
        write(f", {render.short_time(stats['first_time'])} .. {render.short_time(stats['last_time'])} UTC")
    write("\n")
    write(f"malformed lines: {stats['malformed_lines']}\n")
    if stats["unreadable_files"]:
        write(f"unreadable files: {stats['unreadable_files']}\n")
    if stats["by_kind"]:
        write("\nrecords by kind:\n")
        for kind, n in stats["by_kind"].items():
            write(f"  {_cell(kind):<16} {n:>10,}\n")
    if stats["per_account_day"]:
        write("\nrecords per account per day:\n")
        write(f"  {'DAY':<10}  {'ACCOUNT':<24} {'RECORDS':>10}\n")
        for row in stats["per_account_day"]:
            write(f"  {row['day']:<10}  {_fit(_cell(row['account']), 24):<24} {row['records']:>10,}\n")
    if stats["top_ips"]:
        write(f"\ntop IPs:\n  {'IP':<40} {'RECORDS':>10} {'CONNS':>6}\n")
        for row in stats["top_ips"]:
            write(f"  {_cell(row['ip']):<40} {row['records']:>10,} {row['connections']:>6}\n")
    fails = stats["login_failures"]
    write(f"\nlogin failures: {fails['total']}\n")
    if fails["total"]:
        write("  by tried account:\n")
        for row in fails["by_account"]:
            write(f"    {_fit(_cell(row['account']), 30):<30} {row['count']:>6}\n")
        write("  by IP:\n")
        for row in fails["by_ip"]:
            write(f"    {_cell(row['ip']):<30} {row['count']:>6}\n")
    loss = stats["loss"]
    write(f"\nloss records: {loss['records']}, records lost: {loss['lost']}\n")
    for span in loss["spans"]:
        write(f"  {_cell(span['first_time'])} .. {_cell(span['last_time'])}  lost {span['lost']}"
              + (f"  ({_cell(span['cause'])})" if span.get("cause") else "") + "\n")
    return EXIT_MATCHED


# ---------------------------------------------------------------- argument parsing


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


class Shared:
    """Argument groups several subcommands share (parents for `add_parser`)."""

    def __init__(self):
        self.common = argparse.ArgumentParser(add_help=False)
        self.common.add_argument("--dir", default=None,
                                 help="trail directory (default: ./server/logs if it exists, else .)")
        self.times = argparse.ArgumentParser(add_help=False)
        self.times.add_argument("--since", metavar="T",
                                help="from this time: ISO 8601 (2026-11-27T07:40Z) or relative (30m, 2h, 7d)")
        self.times.add_argument("--until", metavar="T", help="up to this time (inclusive; a bare date means its end)")
        self.filters = argparse.ArgumentParser(add_help=False)
        group = self.filters.add_argument_group("filters (all given must match)")
        group.add_argument("--account", metavar="NAME",
                           help="account (bob, bob#1, #1, bo*), also the tried account of a failed login and "
                                "the account's connections before their login")
        group.add_argument("--character", metavar="NAME", help="puppeted character")
        group.add_argument("--room", metavar="NAME", help="room the character was in")
        group.add_argument("--ip", metavar="ADDR", help="client address or CIDR network")
        group.add_argument("--conn", metavar="ID", help="connection id, or a glob (67470c2a1f3b-*)")
        group.add_argument("--direction", type=str.upper, choices=("RCV", "SND"),
                           help="RCV: player input, SND: game output")
        group.add_argument("--kind", metavar="KIND", help="record kind(s), comma-separated: " + ", ".join(trail.KINDS))
        group.add_argument("--text", metavar="REGEX", help="regular expression searched in the recorded text")
        group.add_argument("-i", "--ignore-case", action="store_true", help="--text ignores case")


def add_search(sub, shared):
    search = sub.add_parser("search", parents=[shared.common, shared.times, shared.filters], help="find records",
                            description="Print matching records as a table, JSON Lines (--json) or a count.",
                            epilog=f"Legend: {render.LEGEND}.")
    mode = search.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="JSON Lines, the records as stored, C0 and C1 escaped")
    mode.add_argument("--count", action="store_true", help="print only the number of matching records")
    mode.add_argument("--wide", action="store_true", help="every field of every record, nothing cut")
    search.add_argument("--limit", type=_positive_int, metavar="N", help="stop after N matches")
    search.add_argument("--no-prefilter", action="store_true",
                        help="parse every line (slower; reports every malformed line)")
    search.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new matching records as they are written (tail -F); with --since, "
                             "first those already written since then")
    search.add_argument("--interval", type=_positive_float, default=FOLLOW_INTERVAL, metavar="S",
                        help=f"with --follow: seconds between two looks (default {FOLLOW_INTERVAL})")
    search.set_defaults(func=cmd_search)


def add_sessions(sub, shared):
    sessions = sub.add_parser("sessions", parents=[shared.common, shared.times, shared.filters],
                              help="one line per connection",
                              description="One line per connection: start, end, duration, connection, account(s), "
                                          "character(s), IP, protocol, end reason, records. With filters: the "
                                          "connections having a matching record.")
    sessions.add_argument("--json", action="store_true", help="JSON Lines, one object per connection")
    sessions.set_defaults(func=cmd_sessions)


def _add_target(subparser):
    which = subparser.add_mutually_exclusive_group(required=True)
    which.add_argument("--conn", metavar="ID", help="one connection (its id, or a glob matching only it)")
    which.add_argument("--account", metavar="NAME", help="every connection of an account")
    subparser.add_argument("--no-color", action="store_true", help="strip colours (also when NO_COLOR is set)")


def add_replay(sub, shared):
    replay = sub.add_parser("replay", parents=[shared.common, shared.times], help="print a session transcript",
                            description="Transcript of a connection or an account, every line timestamped.",
                            epilog=f"Legend: {render.LEGEND}.")
    _add_target(replay)
    replay.add_argument("--speed", type=_positive_float, metavar="X",
                        help="replay in real time divided by X (2 = twice as fast)")
    replay.add_argument("--max-wait", type=_positive_float, default=3.0, metavar="S",
                        help="longest wait between two records with --speed (default 3 s)")
    replay.set_defaults(func=cmd_replay)


def add_export(sub, shared):
    export = sub.add_parser("export", parents=[shared.common, shared.times], help="write an asciicast recording",
                            description="Write an asciicast v2 file (asciinema play FILE), mode 0600. Input is "
                                        "shown as an 'o' echo of '> line' so players display it.")
    export.add_argument("--format", choices=("asciicast",), default="asciicast", help="output format (asciicast v2)")
    _add_target(export)
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write ('-': stdout)")
    export.add_argument("--width", type=_positive_int, help="terminal columns (default: longest line, 80..250)")
    export.add_argument("--height", type=_positive_int, default=30, help="terminal rows (default 30)")
    export.add_argument("--title", help="recording title")
    export.add_argument("--idle-limit", type=_positive_float, metavar="S",
                        help="players compress pauses longer than S seconds")
    export.set_defaults(func=cmd_export)


def add_stats(sub, shared):
    stats = sub.add_parser("stats", parents=[shared.common, shared.times, shared.filters], help="summarise the trail",
                           description="Records per account per day, top IPs, login failures, lost records, "
                                       "malformed lines.")
    stats.add_argument("--top", type=_positive_int, default=10, metavar="N", help="rows in the top lists (default 10)")
    stats.add_argument("--json", action="store_true", help="one JSON document")
    stats.set_defaults(func=cmd_stats)


def build_parser():
    """The argument parser. A subcommand is one `add_NAME(sub, shared)` call here: it adds its parser
    to `sub` (with `shared.common`, `.times`, `.filters` as parents if it wants them) and sets `func`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Search, follow, replay, export and summarise an Evennia audit trail "
                    "(audit_YYYY-MM-DD*.log[.gz], logrotate's names too).",
        epilog="Exit status (like grep): 0 matched, 1 nothing matched, 2 error (usage, missing directory, "
               f"no audit file). Legend: {render.LEGEND}.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    shared = Shared()
    add_search(sub, shared)
    add_sessions(sub, shared)
    add_replay(sub, shared)
    add_export(sub, shared)
    add_stats(sub, shared)
    add_proof_commands(sub)  # keygen, verify (auditing/verify.py)
    return parser


def main(argv=None):
    """Entry point of `evennia-audit` and `python -m auditing`; returns the exit status."""
    parser = build_parser()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")  # names and text in any script, any locale
        except (AttributeError, ValueError):
            pass
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 2
    if args.dir is None:
        args.dir = default_dir()
    try:
        return args.func(args)
    except TrailError as error:
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (`| head`): not an error. Keep Python from complaining at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
