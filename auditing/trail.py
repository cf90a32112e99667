"""
Reading audit trails back: the files `auditing.filesink.FileSink` writes, in the order it wrote them.

Files (anything else in the directory is ignored):

    audit_YYYY-MM-DD.log        the current file of a UTC day
    audit_YYYY-MM-DD.N.log      size rotation: when the day's file is full the sink renames it to the
                                next free N (1, 2, ...) and starts a new unnumbered file
    audit_YYYY-MM-DD.log.N      logrotate's numbered names (N = 1 is the newest of them)
    audit_YYYY-MM-DD.log-YYYYMMDD   logrotate's `dateext` names (also -YYYYMMDDHH, -YYYYMMDD-SECONDS)
    ... .gz                     any of these compressed (read transparently)

Order: by day; within a day by base name (`.1.log`, `.2.log`, ..., the unnumbered file last), and for
one base name logrotate's copies before the base (`.log.2`, `.log.1`, then dateext names oldest first,
then `.log` itself). If one file is there both plain and compressed (gzip still running), the plain one
is read and the other reported as a duplicate.

Lines in the old contrib's format (`<time> [-] {json}`, Evennia's `log_file`, in the same file names)
are read as records marked `"legacy": true`, with their time made canonical.

Records are filed under the UTC day of their own `time` (FileSink buckets a batch by event time), so
with `since`/`until` the files of days entirely outside the range are skipped without being opened.

Reading is streaming and bounded in memory: files are read in binary blocks of about a megabyte and only
the lines that can match are parsed (orjson). A cheap byte-level prefilter proves most lines cannot
match without parsing them: the JSON text of a record contains each string value verbatim (printable
ASCII other than `"`, `\\` and `/` is never escaped), so a line that lacks `"bob` cannot be a record of
the account bob. The filter asks for such needles (`Filter.needles()`); when all of them are selective
the reader jumps from hit to hit in each block (`bytes.find`) instead of looking at every line.

Besides `Reader`: `account_connections` (the connections an account logged in on, for its records from
before the login), `newest` (the last N matches, newest day first, within a time budget: the in-game
command), `sessions` (records grouped into one `Session` per connection) and `Follower` (new records
as they are written, `tail -F` style).

Malformed lines (not JSON, not an object, a last line cut off by a crash) are reported with file and line
number, skipped and counted; they never stop the scan. Lines that the prefilter rules out are not parsed,
so they are not checked either: the count is complete when nothing is filtered (`stats`, plain `search`).
"""

import collections
import datetime
import fnmatch
import gzip
import ipaddress
import os
import re
import time
import zlib
from dataclasses import dataclass

import orjson

try:  # Python 3.11+
    import re._parser as _sre_parse
    from re._constants import LITERAL as _LITERAL
except ImportError:  # pragma: no cover - older layouts
    import sre_parse as _sre_parse  # noqa
    from sre_constants import LITERAL as _LITERAL  # noqa

UTC = datetime.timezone.utc
CHUNK = 1 << 20  # bytes read per block
FILE_RE = re.compile(
    r"audit_(?P<day>\d{4}-\d{2}-\d{2})(?:\.(?P<part>\d+))?(?:\.contrib(?:\.(?P<aside>\d+))?(?P<contrib>))?\.log"
    r"(?:\.(?P<rotated>\d+)|-(?P<dateext>\d{8}(?:\d{2})?(?:-\d+)?))?(?P<gz>\.gz)?\Z"
)
# The old contrib's line: Evennia's log_file time (2-digit year, optional offset), " [-] ", the JSON.
LEGACY_RE = re.compile(rb"(\d{2,4})-(\d\d)-(\d\d) (\d\d:\d\d:\d\d)([+-]\d\d(?::?\d\d)?)? \[-\] (\{.*)\Z", re.S)
LIFECYCLE_KINDS = (
    "connect", "login", "login_fail", "logout", "disconnect", "puppet", "unpuppet", "account_created",
    "audit_view", "capture_change", "retention",
)
KINDS = ("io",) + LIFECYCLE_KINDS + ("loss", "error")
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


class TrailError(Exception):
    """The trail cannot be read at all (missing directory, bad time expression...)."""


def utcnow():
    """Now, timezone-aware UTC (a function so tests can move the clock)."""
    return datetime.datetime.now(UTC)


# ---------------------------------------------------------------- time expressions

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|sec|secs|m|min|mins|h|hr|hrs|d|day|days|w|wk|weeks?)\Z", re.I)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text, end=False, now=None):
    """An absolute or relative time expression -> aware UTC datetime.

    Absolute: ISO 8601 (`2026-11-27`, `2026-11-27T07:40`, `2026-11-27 07:40:12Z`, with or without an
    offset; no offset means UTC). Relative to now: `90s`, `30m`, `2h`, `7d`, `1w`; also `now`,
    `today`, `yesterday`. With `end=True` (for `until`) a bare date means the end of that day.
    """
    text = str(text).strip()
    now = now or utcnow()
    lowered = text.lower()
    if lowered == "now":
        return now
    if lowered in ("today", "yesterday"):
        day = now.date() - datetime.timedelta(days=1 if lowered == "yesterday" else 0)
        return _day_bound(day, end)
    match = _RELATIVE.match(text)
    if match:
        amount = float(match.group(1))
        unit = match.group(2)[0].lower()
        return now - datetime.timedelta(seconds=amount * _UNIT_SECONDS[unit])
    try:
        if len(text) == 10:
            return _day_bound(datetime.date.fromisoformat(text), end)
        value = datetime.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise TrailError(
            f"bad time {text!r}: use ISO 8601 (2026-11-27, 2026-11-27T07:40:12Z) or a relative time "
            "(30m, 2h, 7d)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _day_bound(day, end):
    bound = datetime.datetime.combine(day, datetime.time(0), UTC)
    if end:
        bound += datetime.timedelta(days=1, microseconds=-1)
    return bound


def iso(value):
    """A datetime as the trail writes times: 2026-11-27T07:40:12.123456Z."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_time(text):
    """A record's time string in the canonical 27-character form (so strings compare as times)."""
    if type(text) is str and len(text) == 27 and text[19] == "." and text[26] == "Z":
        return text
    try:
        value = datetime.datetime.fromisoformat(str(text).replace("z", "Z"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return iso(value)


def record_time(record):
    """The time of a record (`time`, or the end of the span of a loss record), canonical, or None."""
    value = record.get("time") or record.get("last_time") or record.get("first_time")
    return canonical_time(value) if value else None


def field(record, key):
    """`record[key]`, or `record["data"][key]` for lifecycle details kept in the data dict."""
    value = record.get(key)
    if value is None:
        data = record.get("data")
        if type(data) is dict:
            value = data.get(key)
    return value


def epoch(time_string):
    """Canonical time string -> epoch seconds (float)."""
    return datetime.datetime.fromisoformat(time_string.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------- the filter


def _fold(text):
    """ASCII-only lower case: the same folding `bytes.lower()` does, so the prefilter agrees."""
    return text.lower() if text.isascii() else text.encode("utf-8", "surrogatepass").lower().decode(
        "utf-8", "surrogatepass"
    )


_SAFE = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\", "/"}
# ASCII letters that Python's re.IGNORECASE also matches to non-ASCII characters (K and KELVIN SIGN...).
_UNICODE_FOLDING = frozenset("iIkKsS")


def _conns_needle(conns):
    """One needle for a set of connection ids: the line holds `"<one of them>"`. None if one of them
    cannot be a needle. Their common prefix is literal, so the regex engine skips ahead to it."""
    if not conns or not all(_needle_ok(conn) for conn in conns):
        return None
    if len(conns) == 1:
        (conn,) = conns
        return Needle(b'"' + conn.encode() + b'"')
    prefix = os.path.commonprefix(sorted(conns))
    rests = b"|".join(re.escape(conn[len(prefix):].encode()) for conn in sorted(conns, key=len, reverse=True))
    pattern = re.compile(re.escape(b'"' + prefix.encode()) + b"(?:" + rests + b')"')
    return Needle(b'"' + prefix.encode(), pattern=pattern)


def _is_glob(text):
    return any(char in text for char in "*?[")


def _needle_ok(text):
    return bool(text) and all(char in _SAFE for char in text)


@dataclass(frozen=True)
class Needle:
    """A byte string every matching line contains (`fold`: compare after `bytes.lower()`)."""

    data: bytes
    fold: bool = False
    selective: bool = True  # rare enough to jump from hit to hit
    pattern: object = None  # one of several strings (a compiled bytes regex); `data` is their common prefix

    def __post_init__(self):
        if self.fold and self.data.lower() == self.data.upper():
            object.__setattr__(self, "fold", False)  # no letters: no need to lower-case the haystack


def name_matcher(query):
    """Matcher for account/character/room values like `bob#1`: `bob`, `bob#1`, `#1` or a glob."""
    folded = _fold(query)
    if _is_glob(folded):
        regex = re.compile(fnmatch.translate(folded), re.S)
        return lambda value: type(value) is str and (
            regex.match(_fold(value)) is not None or regex.match(_fold(value).split("#", 1)[0]) is not None
        )
    if folded.startswith("#"):
        return lambda value: type(value) is str and _fold(value).endswith(folded)
    with_ref = folded + "#"

    def match(value):
        if type(value) is not str:
            return False
        value = _fold(value)
        return value == folded or value.startswith(with_ref)

    return match


def _name_needle(query):
    folded = _fold(query)
    if _is_glob(folded):
        literal = re.split(r"[*?\[]", folded, 1)[0]
        return Needle(b'"' + literal.encode(), True) if _needle_ok(literal) else None
    if folded.startswith("#"):
        return Needle(folded.encode() + b'"', True) if _needle_ok(folded) else None
    return Needle(b'"' + folded.encode(), True) if _needle_ok(folded) else None


def required_literal(pattern, flags=0):
    """The longest run of literal characters every match of `pattern` contains, or None.

    Returns (literal, ignorecase). Only top-level literals count (not inside groups, repeats or
    alternatives), and only characters that appear verbatim in JSON text.
    """
    try:
        parsed = _sre_parse.parse(pattern, flags)
    except Exception:
        return None
    ignorecase = bool(parsed.state.flags & re.IGNORECASE)
    best, run = "", []
    for op, arg in list(parsed) + [(None, None)]:
        char = chr(arg) if op is _LITERAL else None
        if char is not None and char in _SAFE and not (ignorecase and char in _UNICODE_FOLDING):
            run.append(char)
            continue
        if len(run) > len(best):
            best = "".join(run)
        run = []
    return (best, ignorecase) if best else None


class Filter:
    """What a record must match; every criterion given must hold.

    Args:
        account: name (`bob`), `name#dbref`, `#dbref` or a glob (`bo*`), case-insensitive; also
            matches the account a failed login tried (`tried_account`).
        character, room: like account.
        ip: an address, or a network in CIDR form (`10.0.0.0/8`).
        conn: a connection id, or a glob (`67470c2a1f3b-*`), or a collection of ids.
        direction: `RCV` (player input) or `SND` (game output).
        kind: a record kind (`io`, `login`, `login_fail`, `loss`...) or several, comma-separated.
        since, until: datetimes or time expressions (see `parse_time`); both inclusive.
        text: a regular expression searched in the record's text (as recorded, with colour markup).
        ignore_case: the text regex ignores case.
        now: the reference time for relative `since`/`until` (default: now).
        account_conns: connection ids of that account (see `account_connections`): their records
            from before the login (no account yet) match `account` too.
    """

    def __init__(self, account=None, character=None, ip=None, conn=None, room=None, direction=None,
                 kind=None, since=None, until=None, text=None, ignore_case=False, now=None,
                 account_conns=None):
        self.account, self.character, self.room = account, character, room
        self.account_conns = frozenset(account_conns) if account and account_conns else None
        self.ip = ip
        self.conn = conn if conn is None or isinstance(conn, str) else frozenset(conn)
        self.direction = direction.upper() if direction else None
        if self.direction not in (None, "RCV", "SND"):
            raise TrailError(f"bad direction {direction!r}: use RCV (input) or SND (output)")
        if isinstance(kind, str):
            kind = [part.strip() for part in kind.split(",") if part.strip()]
        self.kinds = frozenset(kind) if kind else None
        now = now or utcnow()
        self.since = since if isinstance(since, datetime.datetime) or since is None else parse_time(since, now=now)
        self.until = (until if isinstance(until, datetime.datetime) or until is None
                      else parse_time(until, end=True, now=now))
        self.since_s = iso(self.since) if self.since else None
        self.until_s = iso(self.until) if self.until else None
        self.text = text
        try:
            self.text_re = re.compile(text, re.I if ignore_case else 0) if text is not None else None
        except re.error as error:
            raise TrailError(f"bad text regex {text!r}: {error}") from None
        self.ignore_case = ignore_case
        self.network = None
        if ip and "/" in ip:
            try:
                self.network = ipaddress.ip_network(ip, strict=False)
            except ValueError as error:
                raise TrailError(f"bad network {ip!r}: {error}") from None
        self._checks = self._build_checks()

    def __bool__(self):
        return bool(self._checks)

    def _build_checks(self):
        checks = []
        if self.kinds is not None:
            kinds = self.kinds
            checks.append(lambda r: r.get("kind", "io") in kinds)
        if self.direction:
            direction = self.direction
            checks.append(lambda r: r.get("direction") == direction)
        if isinstance(self.conn, frozenset):
            conns = self.conn
            checks.append(lambda r: r.get("conn") in conns)
        elif self.conn:
            conn = self.conn
            if _is_glob(conn):
                conn_match = re.compile(fnmatch.translate(conn), re.S).match
                checks.append(lambda r: type(r.get("conn")) is str and conn_match(r["conn"]) is not None)
            else:
                checks.append(lambda r: r.get("conn") == conn)
        if self.ip:
            if self.network is not None:
                network = self.network

                def in_network(r):
                    try:
                        return ipaddress.ip_address(r.get("ip", "")) in network
                    except ValueError:
                        return False

                checks.append(in_network)
            else:
                ip = self.ip
                checks.append(lambda r: r.get("ip") == ip)
        if self.account:
            match = name_matcher(self.account)
            before_login = self.account_conns or frozenset()
            checks.append(lambda r: match(r.get("account")) or match(field(r, "tried_account")) or (
                not r.get("account") and r.get("conn") in before_login))
        if self.character:
            match_character = name_matcher(self.character)
            checks.append(lambda r: match_character(r.get("character")))
        if self.room:
            match_room = name_matcher(self.room)
            checks.append(lambda r: match_room(r.get("room")))
        if self.since_s or self.until_s:
            since, until = self.since_s, self.until_s

            def in_time(r):
                when = record_time(r)
                if when is None:
                    return False
                return (since is None or when >= since) and (until is None or when <= until)

            checks.append(in_time)
        if self.text_re is not None:
            search = self.text_re.search

            def text_matches(r):
                text = r.get("text")
                if text is None:
                    return False
                return search(text if type(text) is str else str(text)) is not None

            checks.append(text_matches)
        return checks

    def matches(self, record):
        """True when `record` (a dict) meets every criterion."""
        for check in self._checks:
            if not check(record):
                return False
        return True

    def needles(self, with_account=True):
        """Byte strings every matching line contains (see the module docstring)."""
        needles = []
        if isinstance(self.conn, frozenset):
            pass  # alternatives: see needle_groups()
        elif self.conn:
            if _is_glob(self.conn):
                literal = re.split(r"[*?\[]", self.conn, 1)[0]
                if _needle_ok(literal):
                    needles.append(Needle(b'"' + literal.encode()))
            elif _needle_ok(self.conn):
                needles.append(Needle(b'"' + self.conn.encode() + b'"'))
        if self.ip and self.network is None and _needle_ok(self.ip):
            needles.append(Needle(b'"' + self.ip.encode() + b'"'))
        for query in (self.account if with_account else None, self.character, self.room):
            needle = _name_needle(query) if query else None
            if needle:
                needles.append(needle)
        if self.kinds is not None and len(self.kinds) == 1:
            (kind,) = self.kinds
            if _needle_ok(kind):
                needles.append(Needle(b'"' + kind.encode() + b'"', selective=kind != "io"))
        if self.direction:
            needles.append(Needle(b'"' + self.direction.encode() + b'"', selective=False))
        if self.text_re is not None:
            literal = required_literal(self.text, re.I if self.ignore_case else 0)
            if literal and len(literal[0]) >= 2:
                value, fold = literal
                needles.append(Needle(_fold(value).encode() if fold else value.encode(), fold))
        return needles

    def needle_groups(self):
        """Alternatives: a line can match only if it holds every needle of one group."""
        conns = self.conn if isinstance(self.conn, frozenset) else None
        if self.account_conns:
            # The account's name, or one of its connections (its records from before the login).
            base = self.needles(with_account=False) + ([_conns_needle(conns)] if conns else [])
            account, before_login = _name_needle(self.account), _conns_needle(self.account_conns)
            if account is None or before_login is None or None in base:
                return [[n for n in base if n is not None]]
            return [base + [account], base + [before_login]]
        needle = _conns_needle(conns) if conns else None
        return [self.needles() + ([needle] if needle else [])]

    def day_range(self):
        """(first day, last day) of files that can hold matches; None for an open end."""
        return (self.since.date() if self.since else None, self.until.date() if self.until else None)


# ---------------------------------------------------------------- files


@dataclass
class TrailFile:
    path: str
    name: str
    day: datetime.date
    index: int  # our size-rotation number; the unnumbered (newest) file of a day sorts last
    compressed: bool
    size: int
    rotation: tuple = (2,)  # logrotate's copies of this base name sort before it (see the docstring)

    @property
    def key(self):
        return (self.day, self.index, self.rotation)

    @property
    def current(self):
        """The name the sink writes to (not a rotated or compressed copy)."""
        return self.index == _NEWEST and self.rotation == (2,) and not self.compressed


_NEWEST = 1 << 62


def parse_name(name):
    """(day, index, rotation, compressed) for an audit file name, or None for any other name."""
    match = FILE_RE.match(name)
    if not match:
        return None
    try:
        day = datetime.date.fromisoformat(match.group("day"))
    except ValueError:
        return None
    index = int(match.group("part")) if match.group("part") else _NEWEST
    if match.group("contrib") is not None:
        # The old contrib's file our sink moved aside (`filesink`): older than our files of the day.
        index = -_NEWEST + int(match.group("aside") or 0)
    if match.group("rotated"):
        rotation = (0, -int(match.group("rotated")))  # logrotate: .log.2 is older than .log.1
    elif match.group("dateext"):
        rotation = (1, *map(int, match.group("dateext").split("-")))
    else:
        rotation = (2,)
    return day, index, rotation, bool(match.group("gz"))


def list_files(directory):
    """Audit files in `directory`, in writing order, and names skipped as duplicates.

    Raises TrailError if `directory` is missing or not a directory.
    """
    if not os.path.isdir(directory):
        raise TrailError(f"{directory}: no such directory" if not os.path.exists(directory)
                         else f"{directory}: not a directory")
    found = {}
    duplicates = []
    try:
        names = sorted(os.listdir(directory))
    except OSError as error:
        raise TrailError(f"{directory}: cannot list: {error.strerror or error}") from None
    for name in names:
        parsed = parse_name(name)
        if parsed is None:
            continue
        day, index, rotation, compressed = parsed
        path = os.path.join(directory, name)
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        entry = TrailFile(path, name, day, index, compressed, size, rotation)
        other = found.get(entry.key)
        if other is not None:
            keep, drop = (other, entry) if not other.compressed else (entry, other)
            found[entry.key] = keep
            duplicates.append(drop.name)
        else:
            found[entry.key] = entry
    return [found[key] for key in sorted(found)], duplicates


# ---------------------------------------------------------------- lines


def decode_line(line):
    """One line of a trail file -> (record dict, None) or (None, reason); (None, None) for a blank line.

    A line in the old contrib's format gives its record marked `"legacy": True`, its time canonical.
    """
    try:
        record = _loads(line)
    except _JSONDecodeError as error:
        if not line.strip():
            return None, None
        legacy = LEGACY_RE.match(line.strip()) if line[:1].isdigit() or line[:1].isspace() else None
        if legacy is None:
            return None, f"not JSON ({error})"
        return _legacy_record(legacy)
    if type(record) is not dict:
        return None, f"not a JSON object ({type(record).__name__})"
    return record, None


def _legacy_record(match):
    try:
        record = _loads(match.group(6))
    except _JSONDecodeError as error:
        return None, f"not JSON after the contrib's time stamp ({error})"
    if type(record) is not dict:
        return None, f"not a JSON object ({type(record).__name__})"
    year, month, day, clock, offset = (part.decode() if part else "" for part in match.groups()[:5])
    year = str(2000 + int(year)) if len(year) == 2 else year
    stamped = canonical_time(f"{year}-{month}-{day}T{clock}{offset}")
    record["time"] = canonical_time(record.get("time") or "") or stamped
    record.setdefault("kind", "io")
    record["legacy"] = True
    return record, None


# ---------------------------------------------------------------- the reader


class Reader:
    """Iterate the records of a trail directory that match a filter, in file order.

    Iterating yields `(record, line)`: the parsed dict and its raw JSON bytes.

    Args:
        directory (str): The trail directory.
        filter (Filter): What to keep (default: everything).
        also_kinds (iterable): Record kinds kept whatever the filter says (but still within
            since/until), e.g. `("loss",)` for a replay that shows gaps.
        prefilter (bool): Use the byte-level prefilter (turn off to check every line).
        on_problem (callable): `on_problem(path, line_number, reason)` for each malformed line or
            unreadable file (line_number None for a whole file).
        on_progress (callable): `on_progress(bytes_done, bytes_total)` after each block.
        select (callable): `select(trail_file)` -> read it? (e.g. one day, or no current file).
        deadline (float): Stop reading when `clock()` passes it (checked after each block); `stopped`
            then says the scan is incomplete.

    After iterating, `files` (read), `skipped` (outside the time range), `duplicates`, `lines`
    (lines parsed), `malformed`, `unreadable` and `bytes_total` describe the scan.
    """

    def __init__(self, directory, filter=None, also_kinds=(), prefilter=True, on_problem=None,
                 on_progress=None, select=None, deadline=None, clock=time.monotonic):
        self.directory = directory
        self.filter = filter if filter is not None else Filter()
        self.also_kinds = frozenset(also_kinds)
        self.on_problem = on_problem
        self.on_progress = on_progress
        all_files, self.duplicates = list_files(directory)
        first, last = self.filter.day_range()
        self.files = [f for f in all_files if (first is None or f.day >= first) and (last is None or f.day <= last)
                      and (select is None or select(f))]
        self.skipped = [f for f in all_files if f not in self.files]
        self.all_files = all_files
        self.deadline, self.clock = deadline, clock
        self.stopped = False
        self.bytes_total = sum(f.size for f in self.files)
        self.lines = 0
        self.malformed = 0
        self.unreadable = 0
        self._groups = self._needle_groups() if prefilter else None

    def _needle_groups(self):
        """Alternatives of needle lists: a line may match if it holds every needle of one group."""
        groups = self.filter.needle_groups()
        for kind in sorted(self.also_kinds):
            if not _needle_ok(kind):
                return None
            groups.append([Needle(b'"' + kind.encode() + b'"')])
        if any(not group for group in groups):
            return None  # some alternative accepts any line
        return groups

    # The matching predicate (filter plus the `also_kinds` alternative).
    def _predicate(self):
        flt = self.filter
        if not flt and not self.also_kinds:
            return None
        if not self.also_kinds:
            return flt.matches
        also = self.also_kinds
        since, until = flt.since_s, flt.until_s

        def predicate(record):
            if flt.matches(record):
                return True
            if record.get("kind") in also:
                when = record_time(record)
                return when is not None and (since is None or when >= since) and (until is None or when <= until)
            return False

        return predicate

    def __iter__(self):
        predicate = self._predicate()
        done = 0
        for trail_file in self.files:
            yield from self._read_file(trail_file, predicate, done)
            if self.stopped:
                return
            done += trail_file.size
            if self.on_progress:
                self.on_progress(done, self.bytes_total)

    def _problem(self, trail_file, line_number, reason, count_line=True):
        if count_line:
            self.malformed += 1
        if self.on_problem:
            self.on_problem(trail_file.path, line_number, reason)

    def _read_file(self, trail_file, predicate, done_before):
        try:
            raw = open(trail_file.path, "rb")
        except OSError as error:
            self.unreadable += 1
            self._problem(trail_file, None, f"cannot read: {error.strerror or error}", count_line=False)
            return
        with raw:
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if trail_file.compressed else raw
            base = 0  # lines before the current block
            tail = b""
            groups = self._groups
            jump = groups is not None and all(any(n.selective for n in g) for g in groups)
            while True:
                try:
                    block = stream.read(CHUNK)
                except (OSError, EOFError, zlib.error) as error:
                    self._problem(trail_file, base + 1, f"cannot decompress the rest of the file: {error}")
                    tail = b""
                    break
                if not block:
                    break
                buf = tail + block if tail else block
                cut = buf.rfind(b"\n") + 1
                if cut == 0:
                    tail = buf
                    continue
                tail = buf[cut:]
                if jump:
                    base += yield from self._scan_hits(buf, cut, base, groups, predicate, trail_file)
                else:
                    base += yield from self._scan_lines(buf[:cut], base, groups, predicate, trail_file)
                if self.on_progress:
                    self.on_progress(done_before + raw.tell(), self.bytes_total)
                if self.deadline is not None and self.clock() > self.deadline:
                    self.stopped = True
                    return
            if tail:
                # A last line without its newline: a crash or a write in progress cut it short.
                if groups is None or _line_may_match(tail, groups):
                    self.lines += 1
                    record = self._parse(tail, trail_file, base + 1, truncated=True)
                    if record is not None and (predicate is None or predicate(record)):
                        yield record, tail

    def _parse(self, line, trail_file, line_number, truncated=False):
        record, reason = decode_line(line)
        if reason is not None:
            self._problem(trail_file, line_number, "truncated last line" if truncated else reason)
        return record

    def _scan_lines(self, block, base, groups, predicate, trail_file):
        """Every line of `block` (whole lines ending in newline), prefiltered per line if asked.

        Returns the number of lines in the block.
        """
        lines = block.split(b"\n")
        lines.pop()  # after the final newline
        loads, decode_error = _loads, _JSONDecodeError
        parsed = 0
        for number, line in enumerate(lines, base + 1):
            if groups is not None and not _line_may_match(line, groups):
                continue
            parsed += 1
            try:
                record = loads(line)
            except decode_error:
                record = None
            if type(record) is not dict:
                record = self._parse(line, trail_file, number)  # a contrib line, or reports it
                if record is None:
                    continue
            if predicate is None or predicate(record):
                yield record, line
        self.lines += parsed
        return len(lines)

    def _scan_hits(self, buf, cut, base, groups, predicate, trail_file):
        """Only the lines of buf[:cut] holding a selective needle of some group.

        Returns the number of lines in buf[:cut] (counted once, between the hits).
        """
        lowered = None
        starts = {}
        for group in groups:
            primary = max((n for n in group if n.selective), key=lambda n: len(n.data))
            if primary.fold:
                if lowered is None:
                    lowered = buf.lower()
                hay = lowered
            else:
                hay = buf
            find = _finder(primary, hay)
            pos = find(0, cut)
            while pos != -1:
                start = buf.rfind(b"\n", 0, pos) + 1
                end = buf.find(b"\n", pos)
                starts[start] = end
                pos = find(end + 1, cut)
        if not starts:
            return buf.count(b"\n", 0, cut)
        order = sorted(starts) if len(groups) > 1 else list(starts)
        number = base + 1
        previous = 0
        for start in order:
            number += buf.count(b"\n", previous, start)
            previous = start
            line = buf[start:starts[start]]
            if not _line_may_match(line, groups):
                continue
            self.lines += 1
            record = self._parse(line, trail_file, number)
            if record is not None and (predicate is None or predicate(record)):
                yield record, line
        return number - base - 1 + buf.count(b"\n", previous, cut)


def _finder(needle, hay):
    """find(start, stop) -> the position of the needle in hay[start:stop], or -1."""
    if needle.pattern is None:
        data, find = needle.data, hay.find
        return lambda start, stop: find(data, start, stop)
    search = needle.pattern.search

    def find_one_of(start, stop):
        match = search(hay, start, stop)
        return -1 if match is None else match.start()

    return find_one_of


def _line_may_match(line, groups):
    lowered = None
    for group in groups:
        for needle in group:
            if needle.pattern is not None:
                if needle.pattern.search(line) is None:
                    break
            elif needle.fold:
                if lowered is None:
                    lowered = line.lower()
                if needle.data not in lowered:
                    break
            elif needle.data not in line:
                break
        else:
            return True
    return False


def account_connections(directory, account, since=None, until=None, **options):
    """The connection ids on which `account` (a name query, see `name_matcher`) was logged in.

    `options` go to the Reader (on_problem, on_progress...). A failed login that only tried the name
    does not count: that connection was not the account's.
    """
    match = name_matcher(account)
    conns = set()
    for record, _line in Reader(directory, Filter(account=account, since=since, until=until), **options):
        if record.get("conn") and match(record.get("account")):
            conns.add(record["conn"])
    return conns


def newest(directory, filter=None, limit=20, keep=None, budget=None, clock=time.monotonic):
    """The last `limit` records matching `filter` (and `keep(record)`), oldest first, reading days
    newest first and stopping as soon as there are enough: what the in-game command needs.

    `budget` (seconds) bounds the scan; returns (records, complete) where `complete` is False when the
    budget ran out before the oldest day was reached. The records returned are always the newest ones,
    without a gap: a day the budget cut short is left out.
    """
    filter = filter if filter is not None else Filter()
    first, last = filter.day_range()
    days = sorted({f.day for f in list_files(directory)[0]
                   if (first is None or f.day >= first) and (last is None or f.day <= last)}, reverse=True)
    deadline = None if budget is None else clock() + budget
    found = []
    for day in days:
        batch = collections.deque(maxlen=limit)
        reader = Reader(directory, filter, select=lambda f, day=day: f.day == day, deadline=deadline, clock=clock)
        for record, _line in reader:
            if keep is None or keep(record):
                batch.append(record)
        if reader.stopped:
            return found, False  # the day's newest part was not reached: show none of it, no gap
        found = list(batch) + found
        if len(found) >= limit:
            return found[-limit:], True
    return found, True


# ---------------------------------------------------------------- connections (sessions)


@dataclass
class Session:
    """One connection as the trail tells it (see `sessions`)."""

    conn: str
    start: str = None
    end: str = None
    ended: bool = False  # a disconnect record closes it
    end_reason: str = None
    ip: str = None
    protocol: str = None
    records: int = 0
    accounts: list = None
    characters: list = None

    def __post_init__(self):
        self.accounts = [] if self.accounts is None else self.accounts
        self.characters = [] if self.characters is None else self.characters

    @property
    def duration(self):
        """Seconds from the first to the last record (or the disconnect)."""
        return epoch(self.end) - epoch(self.start) if self.start and self.end else 0.0

    def duration_text(self):
        seconds = int(self.duration)
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    def as_dict(self):
        return {"conn": self.conn, "accounts": self.accounts, "characters": self.characters, "ip": self.ip,
                "protocol": self.protocol, "start": self.start, "end": self.end,
                "duration": round(self.duration, 3), "ended": self.ended,
                "end_reason": self.end_reason if self.ended else None, "records": self.records}

    def add(self, record):
        when = record_time(record)
        self.records += 1
        if when:
            if self.start is None or when < self.start:
                self.start = when
            if self.end is None or when > self.end:
                self.end = when
        self.ip = self.ip or record.get("ip")
        self.protocol = self.protocol or record.get("protocol")
        for name, seen in (("account", self.accounts), ("character", self.characters)):
            value = record.get(name)
            if value and type(value) is str and value not in seen:
                seen.append(value)
        if record.get("kind") == "disconnect":
            self.ended = True
            self.end_reason = str(field(record, "reason") or "") or None


def sessions(records):
    """Group records (dicts, any order) by connection -> Sessions, ordered by start time.

    A record without a connection id (the old contrib's) is grouped by host, pid and session number.
    Loss and error records belong to no connection and are left out.
    """
    found = {}
    for record in records:
        kind = record.get("kind", "io")
        if kind in ("loss", "error"):
            continue
        conn = record.get("conn")
        if not conn:
            conn = f"legacy:{record.get('hostname', '?')}:{record.get('pid', '?')}:{record.get('session', '?')}"
        entry = found.get(conn)
        if entry is None:
            entry = found[conn] = Session(conn)
        entry.add(record)
    return sorted(found.values(), key=lambda entry: (entry.start or "", entry.conn))


# ---------------------------------------------------------------- following (tail -F)


class Follower:
    """New records of a trail directory as they are written, with `tail -F` semantics.

    Each `poll()` lists the directory again by name (so a replaced directory is picked up) and reads
    what each audit file gained since the last poll. Files are known by (device, inode): a file the
    sink renamed (its size rotation, logrotate's `create`) is read to its end under its new name; a
    file that shrank (logrotate's `copytruncate`) is read again from its start; a new current file
    (a new day, or after a rotation) is read from its start. A new file under a rotated or compressed
    name is a copy of what was already read (copytruncate, gzip) and is not read. Only complete lines
    are returned; a line being written is kept until its newline arrives.

    Args:
        directory (str): The trail directory.
        filter (Filter): What to keep.
        on_problem (callable): As for Reader.
        from_start (bool): Also return what the current files hold now (default: only new lines).
    """

    def __init__(self, directory, filter=None, on_problem=None, from_start=False):
        self.directory = directory
        self.filter = filter if filter is not None else Filter()
        self.on_problem = on_problem
        self.groups = self.filter.needle_groups()
        if any(not group for group in self.groups):
            self.groups = None
        self.known = {}  # (dev, ino) -> [offset, partial line, path]
        if not from_start:
            for trail_file, identity, size in self._files():
                self.known[identity] = [size, b"", trail_file.path]

    def _files(self):
        try:
            files, _duplicates = list_files(self.directory)
        except TrailError:
            return []  # the directory is being replaced: try again at the next poll
        found = []
        for trail_file in files:
            if trail_file.compressed:
                continue
            try:
                info = os.stat(trail_file.path)
            except OSError:
                continue
            found.append((trail_file, (info.st_dev, info.st_ino), info.st_size))
        return found

    def poll(self):
        """The matching records written since the last poll: a list of (record, line)."""
        out = []
        seen = set()
        files = self._files()
        copies = [(f, identity, size) for f, identity, size in files
                  if identity not in self.known and not f.current]
        for trail_file, identity, size in files:
            seen.add(identity)
            state = self.known.get(identity)
            if state is None:
                if not trail_file.current:
                    continue  # a copy under a rotated name: its lines were read as they were written
                state = self.known[identity] = [0, b"", trail_file.path]
            state[2] = trail_file.path
            if size < state[0]:
                # Truncated in place (copytruncate): what was added since the last poll is in the
                # copy, past the offset we had reached.
                out.extend(self._rest_of_copy(trail_file, state, copies))
                state[0], state[1] = 0, b""
            if size > state[0]:
                out.extend(self._read(trail_file.path, state))
        for identity in list(self.known):
            if identity not in seen:
                del self.known[identity]  # deleted, or compressed away
        return out

    def _rest_of_copy(self, trail_file, state, copies):
        for copy, identity, size in copies:
            if copy.day == trail_file.day and size >= state[0]:
                self.known[identity] = [state[0], state[1], copy.path]
                return self._read(copy.path, self.known[identity])
        return []

    def _read(self, path, state):
        try:
            with open(path, "rb") as handle:
                handle.seek(state[0])
                data = handle.read()
        except OSError as error:
            if self.on_problem:
                self.on_problem(path, None, f"cannot read: {error.strerror or error}")
            return []
        state[0] += len(data)
        data = state[1] + data
        cut = data.rfind(b"\n") + 1
        state[1] = data[cut:]
        matches = self.filter.matches
        out = []
        for line in data[:cut].split(b"\n")[:-1]:
            if self.groups is not None and not _line_may_match(line, self.groups):
                continue
            record, reason = decode_line(line)
            if reason is not None and self.on_problem:
                self.on_problem(path, None, reason)
            if record is not None and matches(record):
                out.append((record, line))
        return out


def read(directory, filter=None, **options):
    """Shortcut: the matching records (dicts) of a trail directory."""
    for record, _line in Reader(directory, filter, **options):
        yield record


__all__ = [
    "Filter", "Follower", "Reader", "Session", "account_connections", "decode_line", "newest", "sessions", "TrailError", "TrailFile", "list_files", "parse_time", "read", "record_time",
    "canonical_time", "epoch", "field", "name_matcher", "iso", "utcnow", "required_literal", "KINDS", "LIFECYCLE_KINDS",
]
