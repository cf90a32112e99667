"""
evennia-audit: search, replay, export and summarise the audit trail (the files of `FileSink`).

    evennia-audit search [--dir DIR] [FILTERS] [--json | --count] [--limit N] [--no-prefilter]
    evennia-audit replay [--dir DIR] (--conn ID | --account NAME) [--since T] [--until T]
                         [--no-color] [--speed X] [--max-wait S]
    evennia-audit export [--dir DIR] --format asciicast (--conn ID | --account NAME) [--since T]
                         [--until T] -o FILE [--width W] [--height H] [--no-color] [--idle-limit S]
    evennia-audit stats  [--dir DIR] [FILTERS] [--top N] [--json]

FILTERS: --account NAME (also a failed login's tried account) --character NAME --room NAME
         (names: `bob`, `bob#1`, `#1` or a glob `bo*`, case-insensitive), --ip ADDR|CIDR,
         --conn ID (or a glob: 67470c2a1f3b-*), --direction RCV|SND, --kind KIND[,KIND] (io, connect, login,
         login_fail, logout, disconnect, puppet, unpuppet, account_created, loss),
         --since T / --until T (ISO 8601 like 2026-11-27 or 2026-11-27T07:40Z, or relative: 30m,
         2h, 7d; a bare date as --until means the end of that day), --text REGEX [-i].

`--dir` defaults to ./server/logs when it exists (run from the game directory), else the current
directory. Also runnable as `python -m auditing`.

Replay prints a transcript with a timestamp on every line: what the player typed after "> ", what
the game sent rendered from Evennia's colour markup to ANSI (or stripped with --no-color / NO_COLOR),
connection events after "***" and lost-record gaps after "!!!". Control characters recorded in the
trail are shown escaped (^[), never sent raw to your terminal. `--speed X` waits the recorded gaps
divided by X (each wait capped by --max-wait), like sudoreplay.

`export --format asciicast` writes an asciicast v2 file (asciinema play / asciinema-player): a header
line, then `[seconds, "o", text]` events. Players only show "o" (output) events, so the player's
input is written as an "o" echo of "> line" where it happened.

Exit status: 0 ok (also when a search matches nothing), 1 nothing to replay or export,
2 usage error or missing directory, 130 interrupted.
"""

import argparse
import collections
import os
import re
import shutil
import sys
import time

import orjson

from . import trail
from .trail import Filter, Reader, TrailError
from .verify import add_commands as add_proof_commands

PROG = "evennia-audit"
MAX_PROBLEMS_SHOWN = 20
PROGRESS_MIN_BYTES = 64 << 20

# ---------------------------------------------------------------- Evennia colour markup

_ESC = "\033["
_RESET = "\033[0m"
_COLOUR_INDEX = {"x": 0, "r": 1, "g": 2, "y": 3, "b": 4, "m": 5, "c": 6, "w": 7}
_CODES = {
    "n": _RESET, "/": "\n", "-": "\t", ">": "    ", "_": " ",
    "*": _ESC + "7m", "^": _ESC + "5m", "u": _ESC + "4m", "U": _ESC + "24m",
    "i": _ESC + "3m", "I": _ESC + "23m", "s": _ESC + "9m", "S": _ESC + "29m",
    "h": _ESC + "1m", "H": _ESC + "22m",
}
for _letter, _index in _COLOUR_INDEX.items():
    _CODES[_letter] = f"{_ESC}1m{_ESC}3{_index}m"  # |r: bright (hilite) red
    _CODES[_letter.upper()] = f"{_ESC}22m{_ESC}3{_index}m"  # |R: normal red
_WHITESPACE_CODES = {"/": "\n", "-": "\t", ">": "    ", "_": " "}
# Bright backgrounds have no ANSI code: Evennia maps them to xterm256 cube colours.
_BRIGHT_BG = {"r": "500", "g": "050", "y": "550", "b": "005", "m": "505", "c": "055", "w": "555", "x": "222"}

_MARKUP_RE = re.compile(
    r"""
      (?P<esc>\|\||\{\{)
    | \|l(?P<link>[cu])(?P<target>.*?)\|lt(?P<label>.*?)\|le
    | \|(?P<hexbg>\[)?\#(?P<hex>[0-9a-fA-F]{6}|[0-9a-fA-F]{3})
    | \|(?P<rgbbg>\[)?(?P<rgb>[0-5]{3})
    | \|(?P<greybg>\[)?=(?P<grey>[a-z])
    | \|\[(?P<bg>[rgybmcwxRGYBMCWX])
    | \|!(?P<plain>[RGYBMCWX])
    | \|(?P<code>[rgybmcwxRGYBMCWXnhH/\-_>*^uUiIsS])
    """,
    re.X | re.S,
)

# Control characters from the trail are shown, never interpreted by the terminal.
_CONTROL = {c: "^" + chr(c + 64) for c in range(0x20) if chr(c) not in "\n\t"}
_CONTROL[0x7F] = "^?"
_CONTROL.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})


def sanitize(text):
    """Recorded text made safe for a terminal: CRLF -> LF, other control characters escaped (^[)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return text.translate(_CONTROL)


def _xterm(index, background):
    return f"{_ESC}{4 if background else 3}8;5;{index}m"


def _markup_sub(match, color):
    group = match.lastgroup
    if group == "esc":
        return match.group()[0]
    if group == "label":  # the lastgroup of a link
        inner = match.group("target") if match.group("link") == "u" else match.group("label")
        return render(inner, color)
    if group == "code":
        code = match.group("code")
        return _CODES[code] if color else _WHITESPACE_CODES.get(code, "")
    if not color:
        return ""
    if group == "hex":
        value = match.group("hex")
        if len(value) == 3:
            value = "".join(char * 2 for char in value)
        red, green, blue = (int(value[i:i + 2], 16) for i in (0, 2, 4))
        return f"{_ESC}{4 if match.group('hexbg') else 3}8;2;{red};{green};{blue}m"
    if group == "rgb":
        red, green, blue = (int(char) for char in match.group("rgb"))
        return _xterm(16 + red * 36 + green * 6 + blue, match.group("rgbbg"))
    if group == "grey":
        letter = match.group("grey")
        index = 16 if letter == "a" else 231 if letter == "z" else 134 + ord(letter)
        return _xterm(index, match.group("greybg"))
    if group == "bg":
        letter = match.group("bg")
        if letter.islower():
            red, green, blue = (int(char) for char in _BRIGHT_BG[letter])
            return _xterm(16 + red * 36 + green * 6 + blue, True)
        return f"{_ESC}4{_COLOUR_INDEX[letter.lower()]}m"
    if group == "plain":
        return f"{_ESC}3{_COLOUR_INDEX[match.group('plain').lower()]}m"
    return match.group()  # pragma: no cover


def render(text, color=True):
    """Evennia colour markup -> ANSI escape sequences (`color`) or plain text.

    Covers |r |g |y |b |m |c |w |x (bright) and |R ... |X (normal), |!R (colour without changing
    brightness), |[R / |[r backgrounds, |h |H, |n, |u |i |s |* |^ and their resets, xterm256 |123 |[123
    |=a |[=a, truecolor |#ff0000 |[#f00, |/ newline, |- tab, |_ space, |> indent, || and {{ escapes, and
    MXP links |lc...|lt...|le (shown as their text). Colour output matches Evennia's own
    `parse_ansi(text, xterm256=True, truecolor=True)` except that line breaks are "\\n".
    """
    if "|" not in text and "{{" not in text:
        return text
    return _MARKUP_RE.sub(lambda match: _markup_sub(match, color), text)


_SGR_RE = re.compile(r"\033\[[0-9;]*m")


def split_lines(rendered, color):
    """Split rendered text into lines; with colour, each line restarts the attributes still active."""
    lines = rendered.split("\n")
    if not color:
        return lines
    out, active = [], ""
    for line in lines:
        out.append(active + line)
        for match in _SGR_RE.finditer(line):
            code = match.group()
            active = "" if code == _RESET else active + code
    return out


def strip_ansi(text):
    return _SGR_RE.sub("", text)


# ---------------------------------------------------------------- shared helpers


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


def _open_reader(args, flt, quiet=False, **options):
    """A Reader over args.dir with problem reporting and progress; says so when there is nothing.

    `quiet`: for a second pass over the same files, do not report the same things again.
    """
    problems = _Problems(sys.stderr)
    reader = Reader(args.dir, flt, on_problem=None if quiet else problems, **options)
    if quiet:
        return reader, problems, _Progress(sys.stderr, reader.bytes_total)
    for name in reader.duplicates:
        sys.stderr.write(f"{PROG}: {os.path.join(args.dir, name)}: skipped, the same file exists uncompressed\n")
    if not reader.all_files:
        sys.stderr.write(f"{PROG}: no audit files (audit_YYYY-MM-DD*.log[.gz]) in {args.dir}\n")
    progress = _Progress(sys.stderr, reader.bytes_total)
    reader.on_progress = progress
    return reader, problems, progress


def _short_time(value):
    return f"{value[:10]} {value[11:19]}" if isinstance(value, str) and len(value) >= 19 else str(value or "")


def _fit(text, width):
    return text if len(text) <= width else text[: max(width - 1, 0)] + "~"


_DETAIL_FIELDS = ("tried_account", "account", "character", "room", "protocol", "ip", "reason", "cause")


def _details(record, skip=()):
    parts = []
    for key in _DETAIL_FIELDS:
        value = trail.field(record, key)
        if value not in (None, "") and key not in skip:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def _loss_text(record):
    return (f"{record.get('lost', '?')} record(s) lost between {record.get('first_time', '?')} and "
            f"{record.get('last_time', '?')}" + (f" ({record['cause']})" if record.get("cause") else ""))


# ---------------------------------------------------------------- search


def cmd_search(args):
    flt = _make_filter(args)
    reader, problems, progress = _open_reader(args, flt, prefilter=not args.no_prefilter)
    out = sys.stdout
    limit = args.limit
    count = 0
    try:
        if args.count:
            for _ in reader:
                count += 1
                if limit is not None and count >= limit:
                    break
            progress.done()
            out.write(f"{count}\n")
        elif args.json:
            buffer = getattr(out, "buffer", None)
            for _record, line in reader:
                if buffer is not None:
                    buffer.write(line + b"\n")
                else:
                    out.write(line.decode("utf-8", "replace") + "\n")
                count += 1
                if limit is not None and count >= limit:
                    break
            progress.done()
        else:
            columns = shutil.get_terminal_size((120, 24)).columns
            name = 12 + min(max((columns - 120) // 10, 0), 6)  # wider terminals: longer names
            widths = (19, 16, 10, name, name, name)
            text_width = max(columns - sum(widths) - len(widths), 20)
            header = ("TIME", "CONN", "DIR/KIND", "ACCOUNT", "CHARACTER", "ROOM")
            out.write(" ".join(h.ljust(w) for h, w in zip(header, widths)) + " TEXT\n")
            for record, _line in reader:
                out.write(_table_row(record, widths, text_width) + "\n")
                count += 1
                if limit is not None and count >= limit:
                    break
            progress.done()
            if not count and reader.all_files:
                sys.stderr.write(f"{PROG}: no records matched\n")
        out.flush()
    finally:
        progress.done()
    problems.summary(reader)
    return 0


def _table_row(record, widths, text_width):
    kind = record.get("kind", "io")
    if kind == "io":
        label = record.get("direction", "io")
        text = record.get("text")
        if text is None:
            data = record.get("data")
            text = "[oob] " + orjson.dumps(data).decode() if data else ""
        text = render(sanitize(str(text)), color=False).replace("\n", " \u23ce ")
    elif kind == "loss":
        label, text = kind, _loss_text(record)
    else:
        label, text = kind, _details(record, skip=("account", "character", "room"))
    cells = (
        _short_time(trail.record_time(record)),
        str(record.get("conn", "")),
        label,
        str(record.get("account", "")),
        str(record.get("character", "")),
        str(record.get("room", "")),
    )
    row = " ".join(_fit(cell, width).ljust(width) for cell, width in zip(cells, widths))
    return row + " " + _fit(sanitize(text).replace("\n", " "), text_width)


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
        # First pass (prefiltered on the name): which connections did the account use?
        match = trail.name_matcher(args.account)
        flt = Filter(account=args.account, since=args.since, until=args.until)
        reader, problems, progress = _open_reader(args, flt)
        conns = set()
        try:
            for record, _line in reader:
                if record.get("conn") and match(record.get("account")):
                    conns.add(record["conn"])
        finally:
            progress.done()
        problems.summary(reader)
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
    """Entries for the records in order, loss records merged in by time."""
    items = [(trail.record_time(r), 0, i, r) for i, r in enumerate(records)]
    items += [(trail.record_time(r), 1, i, r) for i, r in enumerate(losses)]
    items.sort(key=lambda item: item[:3])
    entries = []
    for when, _rank, _index, record in items:
        kind = record.get("kind", "io")
        conn = str(record.get("conn", ""))
        if kind == "io":
            text = record.get("text")
            if record.get("direction") == "RCV":
                if text is None:
                    data = record.get("data")
                    if not data:
                        continue
                    text = "[oob] " + orjson.dumps(data).decode()
                entries.append(Entry(when, conn, "in", sanitize(str(text)).split("\n")))
            else:
                if text is None:
                    data = record.get("data")
                    if not data:
                        continue
                    lines = ["[oob] " + sanitize(orjson.dumps(data).decode())]
                else:
                    lines = split_lines(render(sanitize(str(text)), color), color)
                entries.append(Entry(when, conn, "out", lines))
        elif kind == "loss":
            entries.append(Entry(when, conn, "loss", [sanitize(_loss_text(record))]))
        else:
            entries.append(Entry(when, conn, "event", [sanitize(f"{kind} {_details(record)}".strip())]))
    return entries


_DIM, _BOLD, _RED, _CYAN = _ESC + "2m", _ESC + "1m", _ESC + "31m", _ESC + "36m"
_MARKERS = {"in": "> ", "out": "  ", "event": "*** ", "loss": "!!! "}


def _styled(entry, line, color):
    marker = _MARKERS[entry.style]
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
    accounts = sorted({str(r["account"]) for r in records if r.get("account")})
    heading = (f"# {len(records)} records, {_short_time(records[0].get('time'))} .. "
               f"{_short_time(records[-1].get('time'))} UTC, connection(s) {', '.join(conns)}"
               + (f", account(s) {', '.join(accounts)}" if accounts else ""))
    out.write((f"{_DIM}{heading}{_RESET}" if color else heading) + "\n")
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
        longest = max([longest] + [len(strip_ansi(line)) for line in lines])
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
        with open(args.output, "wb") as handle:
            handle.write(blob)
        sys.stderr.write(f"{PROG}: wrote {len(events)} events ({entries[-1].epoch - start:.1f} s) to {args.output}\n")
    return 0


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
        out.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    write = out.write
    write(f"trail: {stats['directory']}: {stats['files']} file(s), {stats['bytes']:,} bytes, "
          f"{stats['records']:,} records")
    if stats["first_time"]:
        write(f", {_short_time(stats['first_time'])} .. {_short_time(stats['last_time'])} UTC")
    write("\n")
    write(f"malformed lines: {stats['malformed_lines']}\n")
    if stats["unreadable_files"]:
        write(f"unreadable files: {stats['unreadable_files']}\n")
    if stats["by_kind"]:
        write("\nrecords by kind:\n")
        for kind, n in stats["by_kind"].items():
            write(f"  {kind:<16} {n:>10,}\n")
    if stats["per_account_day"]:
        write("\nrecords per account per day:\n")
        write(f"  {'DAY':<10}  {'ACCOUNT':<24} {'RECORDS':>10}\n")
        for row in stats["per_account_day"]:
            write(f"  {row['day']:<10}  {_fit(row['account'], 24):<24} {row['records']:>10,}\n")
    if stats["top_ips"]:
        write(f"\ntop IPs:\n  {'IP':<40} {'RECORDS':>10} {'CONNS':>6}\n")
        for row in stats["top_ips"]:
            write(f"  {row['ip']:<40} {row['records']:>10,} {row['connections']:>6}\n")
    fails = stats["login_failures"]
    write(f"\nlogin failures: {fails['total']}\n")
    if fails["total"]:
        write("  by tried account:\n")
        for row in fails["by_account"]:
            write(f"    {_fit(row['account'], 30):<30} {row['count']:>6}\n")
        write("  by IP:\n")
        for row in fails["by_ip"]:
            write(f"    {row['ip']:<30} {row['count']:>6}\n")
    loss = stats["loss"]
    write(f"\nloss records: {loss['records']}, records lost: {loss['lost']}\n")
    for span in loss["spans"]:
        write(f"  {span['first_time']} .. {span['last_time']}  lost {span['lost']}"
              + (f"  ({span['cause']})" if span.get("cause") else "") + "\n")
    return 0


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


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Search, replay, export and summarise an Evennia audit trail (audit_YYYY-MM-DD*.log[.gz]).",
        epilog="Exit status: 0 ok (also when a search matches nothing), 1 nothing to replay/export, "
               "2 usage error or missing directory.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", default=None,
                        help="trail directory (default: ./server/logs if it exists, else .)")

    times = argparse.ArgumentParser(add_help=False)
    times.add_argument("--since", metavar="T", help="from this time: ISO 8601 (2026-11-27T07:40Z) or relative (30m, 2h, 7d)")
    times.add_argument("--until", metavar="T", help="up to this time (inclusive; a bare date means its end)")

    filters = argparse.ArgumentParser(add_help=False)
    group = filters.add_argument_group("filters (all given must match)")
    group.add_argument("--account", metavar="NAME", help="account (bob, bob#1, #1, bo*), also the tried account of a failed login")
    group.add_argument("--character", metavar="NAME", help="puppeted character")
    group.add_argument("--room", metavar="NAME", help="room the character was in")
    group.add_argument("--ip", metavar="ADDR", help="client address or CIDR network")
    group.add_argument("--conn", metavar="ID", help="connection id, or a glob (67470c2a1f3b-*)")
    group.add_argument("--direction", type=str.upper, choices=("RCV", "SND"), help="RCV: player input, SND: game output")
    group.add_argument("--kind", metavar="KIND", help="record kind(s), comma-separated: " + ", ".join(trail.KINDS))
    group.add_argument("--text", metavar="REGEX", help="regular expression searched in the recorded text")
    group.add_argument("-i", "--ignore-case", action="store_true", help="--text ignores case")

    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    search = sub.add_parser("search", parents=[common, times, filters], help="find records",
                            description="Print matching records as a table, JSON Lines (--json) or a count.")
    mode = search.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="JSON Lines, the records as stored (pipe to jq)")
    mode.add_argument("--count", action="store_true", help="print only the number of matching records")
    search.add_argument("--limit", type=_positive_int, metavar="N", help="stop after N matches")
    search.add_argument("--no-prefilter", action="store_true",
                        help="parse every line (slower; reports every malformed line)")
    search.set_defaults(func=cmd_search)

    def target(subparser):
        which = subparser.add_mutually_exclusive_group(required=True)
        which.add_argument("--conn", metavar="ID", help="one connection (its id, or a glob matching only it)")
        which.add_argument("--account", metavar="NAME", help="every connection of an account")
        subparser.add_argument("--no-color", action="store_true", help="strip colours (also when NO_COLOR is set)")

    replay = sub.add_parser("replay", parents=[common, times], help="print a session transcript",
                            description="Transcript of a connection or an account: input after '> ', "
                                        "output rendered, every line timestamped.")
    target(replay)
    replay.add_argument("--speed", type=_positive_float, metavar="X",
                        help="replay in real time divided by X (2 = twice as fast)")
    replay.add_argument("--max-wait", type=_positive_float, default=3.0, metavar="S",
                        help="longest wait between two records with --speed (default 3 s)")
    replay.set_defaults(func=cmd_replay)

    export = sub.add_parser("export", parents=[common, times], help="write an asciicast recording",
                            description="Write an asciicast v2 file (asciinema play FILE). Input is shown as an "
                                        "'o' echo of '> line' so players display it.")
    export.add_argument("--format", choices=("asciicast",), default="asciicast", help="output format (asciicast v2)")
    target(export)
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write ('-': stdout)")
    export.add_argument("--width", type=_positive_int, help="terminal columns (default: longest line, 80..250)")
    export.add_argument("--height", type=_positive_int, default=30, help="terminal rows (default 30)")
    export.add_argument("--title", help="recording title")
    export.add_argument("--idle-limit", type=_positive_float, metavar="S", help="players compress pauses longer than S seconds")
    export.set_defaults(func=cmd_export)

    stats = sub.add_parser("stats", parents=[common, times, filters], help="summarise the trail",
                           description="Records per account per day, top IPs, login failures, lost records, malformed lines.")
    stats.add_argument("--top", type=_positive_int, default=10, metavar="N", help="rows in the top lists (default 10)")
    stats.add_argument("--json", action="store_true", help="one JSON document")
    stats.set_defaults(func=cmd_stats)
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
        return 2
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
