"""
Showing audit records to people: one description of a record, one legend, and the renderers that make
what came from the trail inert wherever it is shown.

Everything in a record may come from a player: the text they typed, the output that quotes them (`say`),
the name they typed at the login screen (`tried_account`), the account they created. So what is shown is
made inert for its destination:

- `for_terminal(text)`: no raw control character is ever written. C0 (except newline and tab), DEL and
  C1 become caret / hex notation (`^[`, `\\x9b`), bidirectional overrides become `\\u202e`, so a player
  cannot move the cursor, set the admin's window title or reorder what the admin reads.
- `for_game(text)`: the same, and Evennia markup is escaped (`|` -> `||`): a player's `|lc...|lt...|le`
  cannot become a link that runs a command as the staff member who clicks it, and `|/` cannot forge a
  line of the listing.
- `json_line(record)`: JSON text with every C0 *and* C1 character escaped (`\\u009b`); orjson and json
  leave C1 raw by default.

`markup(text, color)` turns the game's own colour markup into ANSI (or plain text): it is applied to game
output only after `for_terminal`, so the only escape sequences it can produce are its own colours.
"""

import re

import orjson

# ---------------------------------------------------------------- the legend (CLI and in-game command)

MARKERS = {"in": "> ", "out": "< ", "event": "*** ", "loss": "!!! "}
LEGEND = "> typed by the player, < shown by the game, *** connection event, !!! records lost"

# Fields every record carries; shown only in the wide view.
ENVELOPE = ("v", "time", "kind", "hostname", "application", "version", "pid", "session", "conn", "seq",
            "direction", "text", "data", "legacy", "origin", "chain_seq", "chain")
# Shown first, in this order, when present; any other field follows in name order.
DETAIL_ORDER = ("tried_account", "created_account", "target", "mode", "account", "character", "puppet", "room",
                "protocol", "ip", "reason", "cause", "lost", "first_time", "last_time", "masked", "bytes")

# ---------------------------------------------------------------- inert text

# Control characters are shown, never interpreted: C0 as ^X, DEL as ^?, C1 as \x80..\x9f.
_VISIBLE = {c: "^" + chr(c + 64) for c in range(0x20) if chr(c) not in "\n\t"}
_VISIBLE[0x7F] = "^?"
_VISIBLE.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})
# Characters that reorder or hide what follows (Trojan-source style), and the Unicode line breaks.
_VISIBLE.update({c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A),
                                             0x200E, 0x200F, 0x061C, 0x2028, 0x2029)})


def visible(text):
    """`text` with every control character made visible; CRLF becomes LF, newline and tab stay."""
    text = str(text)
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    return text.translate(_VISIBLE)


def for_terminal(text, one_line=False):
    """Text from the trail, safe to write to a terminal (see the module docstring).

    `one_line`: newlines and tabs become ` ⏎ ` and a space, for a table cell.
    """
    text = visible(text)
    if one_line:
        text = text.replace("\n", " \u23ce ").replace("\t", " ")
    return text


def for_game(text, one_line=False):
    """Text from the trail, safe to send to a staff member in game: inert markup, visible controls."""
    return for_terminal(text, one_line).replace("|", "||")


_C1 = re.compile(rb"\xc2([\x80-\x9f])")


def json_line(record):
    """A record as one JSON line (bytes, no newline) with C0 and C1 escaped.

    C1 characters are UTF-8 `\\xc2\\x80`..`\\xc2\\x9f`; that byte pair cannot occur otherwise in UTF-8
    (0xc2 is only ever a lead byte), so replacing it in the encoded text is exact.
    """
    raw = orjson.dumps(record)
    return _C1.sub(lambda m: b"\\u00%02x" % m.group(1)[0], raw) if b"\xc2" in raw else raw


def escape_json_line(line):
    """A JSON line as stored (bytes) with C1 escaped; C0 is always escaped in JSON text already."""
    if b"\xc2" not in line:
        return line
    return _C1.sub(lambda m: b"\\u00%02x" % m.group(1)[0], line)


# ---------------------------------------------------------------- Evennia colour markup

_ESC = "\033["
RESET = "\033[0m"
_COLOUR_INDEX = {"x": 0, "r": 1, "g": 2, "y": 3, "b": 4, "m": 5, "c": 6, "w": 7}
_CODES = {
    "n": RESET, "/": "\n", "-": "\t", ">": "    ", "_": " ",
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


def _xterm(index, background):
    return f"{_ESC}{4 if background else 3}8;5;{index}m"


def _markup_sub(match, color):
    group = match.lastgroup
    if group == "esc":
        return match.group()[0]
    if group == "label":  # the lastgroup of a link: shown as its text, never as a link
        inner = match.group("target") if match.group("link") == "u" else match.group("label")
        return markup(inner, color)
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


def markup(text, color=True):
    """Evennia colour markup -> ANSI escape sequences (`color`) or plain text.

    Covers |r |g |y |b |m |c |w |x (bright) and |R ... |X (normal), |!R (colour without changing
    brightness), |[R / |[r backgrounds, |h |H, |n, |u |i |s |* |^ and their resets, xterm256 |123 |[123
    |=a |[=a, truecolor |#ff0000 |[#f00, |/ newline, |- tab, |_ space, |> indent, || and {{ escapes, and
    MXP links |lc...|lt...|le (shown as their text). Colour output matches Evennia's own
    `parse_ansi(text, xterm256=True, truecolor=True)` except that line breaks are "\\n".
    Apply it to text already passed through `for_terminal`: then the only escapes are its colours.
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
            active = "" if code == RESET else active + code
    return out


def strip_sgr(text):
    """Text without the colour sequences `markup` produced (to measure its width)."""
    return _SGR_RE.sub("", text)


# ---------------------------------------------------------------- describing a record


def style(record):
    """The legend's name for a record: "in", "out", "event" or "loss"."""
    kind = record.get("kind", "io")
    if kind == "io":
        return "in" if record.get("direction") == "RCV" else "out"
    return "loss" if kind == "loss" else "event"


def fields(record, wide=False, skip=()):
    """(name, value) of a record's details: lifecycle details (also those kept in `data`) first, in
    `DETAIL_ORDER`, then any other field by name. `wide` adds the envelope (host, pid, session, seq...).
    Empty values are left out."""
    kind = record.get("kind", "io")
    merged = dict(record)
    data = record.get("data")
    if kind != "io" and type(data) is dict:
        del merged["data"]
        for name, value in data.items():  # lifecycle details kept in the data dict
            merged.setdefault(name, value)
    hidden = set(skip) | {"text", "kind", "direction", "time", "data"} | (set() if wide else set(ENVELOPE))
    names = [n for n in DETAIL_ORDER if n in merged] + sorted(n for n in merged if n not in DETAIL_ORDER)
    return [(n, merged[n]) for n in names if n not in hidden and merged[n] not in (None, "", [], {})]


def _value(value):
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str).decode()


def _io_text(record):
    text = record.get("text")
    if text in (None, ""):
        data = record.get("data")
        return "[oob] " + _value(data) if data else ""
    text = text if type(text) is str else _value(text)
    return text


def describe(record, wide=False, skip=(), with_kind=True):
    """The human description of any record, as plain (not yet inert) text.

    io: what was typed (as typed) or shown (colour markup removed), or `[oob] {...}` for data without
    text. loss: how many records were lost when, and why. Any other kind: the kind and every detail
    field (`tried_account=... created_account=... target=... mode=... reason=...`). `wide` adds every
    remaining field (host, pid, session, seq, bytes...); `skip` leaves out fields shown elsewhere (the
    table's account/character/room columns); `with_kind=False` leaves out the kind where a column shows
    it. Pass the result through `for_terminal` or `for_game`.
    """
    kind = record.get("kind", "io")
    if kind == "io":
        text = _io_text(record)
        if record.get("direction") != "RCV":
            text = markup(text, color=False)
        elif record.get("origin") == "server":
            text += " (sent by the server)"  # Evennia's own input to a new connection, not typed
        extra = fields(record, wide, skip) if wide else []
        if wide and record.get("data") and record.get("text"):
            extra.append(("data", record["data"]))
        return " ".join([text] + [f"{k}={_value(v)}" for k, v in extra]) if extra else text
    details = fields(record, wide, skip)
    if kind == "loss":
        head = (f"{record.get('lost', '?')} record(s) lost between {record.get('first_time', '?')} and "
                f"{record.get('last_time', '?')}" + (f" ({record['cause']})" if record.get("cause") else ""))
        details = [(k, v) for k, v in details if k not in ("lost", "first_time", "last_time", "cause")]
    else:
        head = str(kind) if with_kind else ""
    return " ".join(([head] if head else []) + [f"{k}={_value(v)}" for k, v in details])


def short_time(value):
    """`2026-11-27T07:40:12.123456Z` -> `2026-11-27 07:40:12`."""
    return f"{value[:10]} {value[11:19]}" if isinstance(value, str) and len(value) >= 19 else str(value or "")


def game_line(record, with_date=True):
    """One record as one inert line for the in-game listing: time, legend marker, description."""
    when = record.get("time") or record.get("last_time") or ""
    stamp = short_time(when) if with_date else str(when)[11:19]
    marker = MARKERS[style(record)].strip()
    return f"|w{for_game(stamp)}|n {marker} {for_game(describe(record), one_line=True)}"


SESSION_HEADER = ("START", "END", "DURATION", "CONN", "ACCOUNT", "CHARACTER", "IP", "PROTOCOL", "END REASON",
                  "RECORDS")


def session_row(session):
    """One connection (a `trail.Session`) as the cells of `SESSION_HEADER` (plain, not yet inert)."""
    return (short_time(session.start), short_time(session.end) if session.ended else "(open)",
            session.duration_text(), session.conn, ", ".join(session.accounts) or "-",
            ", ".join(session.characters) or "-", session.ip or "-", session.protocol or "-",
            (session.end_reason or "-") if session.ended else "(no disconnect yet)", str(session.records))


def table(rows, inert):
    """Rows of cells as aligned lines, every cell made inert by `inert` (one line); nothing is cut."""
    cells = [[inert(str(cell), one_line=True) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))] if cells else []
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in cells]
