"""
The one place that reads and validates the `AUDIT_*` settings.

Every setting is read from `django.conf.settings` when the configuration is built, and the built
`AuditConfig` is cached until `reset()` (the service calls it when Django reports a change to an
`AUDIT_*` setting, so `override_settings` works in tests). A bad value raises `AuditConfigError`
naming the setting and the value; the service turns that into one clear error in the server log
when the server starts (see `auditing.service`).

Settings (all optional except `SERVER_SESSION_CLASS`, which switches auditing on):

    AUDIT_CALLBACK = "auditing.outputs.to_file"
        Dotted path (or callable) receiving one event dict per record.
    AUDIT_IN = False
        Record client -> game input.
    AUDIT_OUT = False
        Record game -> client output.
    AUDIT_ALLOW_SPARSE = False
        Keep keys whose values are None/""/[]/{} (0 and False are always kept).
    AUDIT_MASKS = []
        Extra masks, `[{"label": r"regex with (?P<secret>...)"}, ...]`, added to the built-in ones.
        Compiled with RE2 (linear-time matching): backreferences and lookaround are refused; a
        mask that cannot be used is an error, never skipped. Evennia 6's own default entries (equal
        by value to those in its `settings_default.py`) are skipped: ours cover them. The form that
        works on Evennia 5 and 6 alike:
            AUDIT_MASKS = list(globals().get("AUDIT_MASKS", [])) + [{"label": r"..."}]
    AUDIT_PROMPT_MASKS = []
        Extra password-prompt patterns, `[{"label": r"regex"}, ...]`: output matching one masks the
        next input line of that session whole (see `auditing.scrub`).
    AUDIT_QUEUE_SIZE = 100000
        Events held in memory between the game thread and the writer before new ones are counted lost.
    AUDIT_FLUSH_INTERVAL = 0.25
        Seconds between writer flushes; a hard crash loses at most this much.
    AUDIT_STOP_TIMEOUT = 10.0
        Seconds `evennia stop`/`reload`/`reboot` waits for the output to take what is queued (plus up
        to 6 s for a write or callback call already running then, and about 2 s per 100,000 events
        left to build for the spill file). What is left is written to a spill
        file `audit-spill-*.jsonl` in AUDIT_LOG_DIR that the next start delivers first, or, if that
        cannot be written, stated lost in a loss record (see `auditing.spill`).
    AUDIT_LOG_DIR = settings.LOG_DIR
        Directory of the file sink's `audit_YYYY-MM-DD.log` files.
    AUDIT_FILE_MAX_BYTES = 0
        Also rotate a day's file when it reaches this size (0: rotate by UTC day only).
    AUDIT_COMMAND_LOCK = "cmd:perm(Admin) or perm(Developer)"
        Who may use the in-game `audit` command (`auditing.commands.CmdAudit`).
    AUDIT_SYSLOG = {}
        Syslog sink options: `address` (None: local syslog socket `/dev/log`; a path; or
        `("host", port)`), `transport` ("unix" for a path; "tcp" (default) or "udp" for
        `(host, port)`: UDP cannot report a record lost on the way, see `auditing.syslog`),
        `facility` ("user", "local0", ...), `app_name` ("evennia-audit").

    # ---- tamper evidence and retention (auditing.chain, auditing.retention)
    AUDIT_CHAIN = True
        Add `chain_seq` and `chain` (a BLAKE2b hash chain) to every record of the built-in outputs.
    AUDIT_SEAL_INTERVAL = 60
        Seconds between `seal` records (a MAC of the chain head under a key that then evolves).
    AUDIT_SEAL_KEY_FILE = GAME_DIR/server/audit_seal.key
        The evolving seal key (`evennia-audit keygen` creates it; keep it outside AUDIT_LOG_DIR).
        No file: records are chained but not sealed.
    AUDIT_CAPTURE = "all"
        What is recorded for everyone: "all" (input and output, as AUDIT_IN/AUDIT_OUT say), "input"
        (only what players type) or "lifecycle" (only connect/login/logout/... records).
    AUDIT_FLAGGED = []
        Account names always recorded in full, whatever AUDIT_CAPTURE says (staff can also flag an
        account in game: `audit/flag NAME`, kept on the account).
    AUDIT_EXCLUDE_OUTPUT = []
        Output types never recorded (e.g. ["prompt"] for a prompt sent every second), except for
        flagged accounts.
    AUDIT_WATCH_NOTIFY = False
        Tell a player when staff start or stop watching them live (`audit/watch`).
    AUDIT_RETENTION_DAYS = 0
        Delete the files of days older than this many days (0: keep everything).
    AUDIT_COMPRESS_AFTER_DAYS = 0
        Gzip the files of days older than this many days (0: never).

    # ---- where the built-in outputs' writer runs (auditing.procdelivery, auditing.writerproc)
    AUDIT_WRITER = "process"
        "process": `to_file`/`to_syslog` build, scrub, serialise and write in a child process
        (`python -m auditing.writerproc`), so that work never holds the game's interpreter lock.
        "thread": they do it on a writer thread of the server process (one process fewer). The game
        thread's part is the same. Custom callbacks always run on the writer thread (they get live
        objects).
"""

import dataclasses
import os
import socket
from typing import Any, Callable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

try:
    import re2
except ImportError:  # pragma: no cover - declared dependency; only missing in a broken install
    re2 = None

DEFAULT_CALLBACK = "auditing.outputs.to_file"
DEFAULT_COMMAND_LOCK = "cmd:perm(Admin) or perm(Developer)"
DEFAULTS = {
    "AUDIT_CALLBACK": DEFAULT_CALLBACK,
    "AUDIT_IN": False,
    "AUDIT_OUT": False,
    "AUDIT_ALLOW_SPARSE": False,
    "AUDIT_MASKS": [],
    "AUDIT_PROMPT_MASKS": [],
    "AUDIT_QUEUE_SIZE": 100_000,
    "AUDIT_FLUSH_INTERVAL": 0.25,
    "AUDIT_STOP_TIMEOUT": 10.0,
    "AUDIT_LOG_DIR": None,
    "AUDIT_FILE_MAX_BYTES": 0,
    "AUDIT_SYSLOG": {},
    # what is recorded (auditing.capture) and the watch feed
    "AUDIT_CAPTURE": "all",
    "AUDIT_FLAGGED": [],
    "AUDIT_EXCLUDE_OUTPUT": [],
    "AUDIT_WATCH_NOTIFY": False,
    # tamper evidence and retention
    "AUDIT_CHAIN": True,
    "AUDIT_SEAL_INTERVAL": 60,
    "AUDIT_RETENTION_DAYS": 0,
    "AUDIT_COMPRESS_AFTER_DAYS": 0,
    "AUDIT_WRITER": "process",
}
WRITERS = ("thread", "process")
SYSLOG_DEFAULTS = {
    "address": None,
    "transport": None,
    "facility": "user",
    "app_name": "evennia-audit",
}
SYSLOG_TRANSPORTS = ("unix", "udp", "tcp")


class AuditConfigError(ImproperlyConfigured):
    """A setting of this module has a value it cannot use. The message names setting and value."""


@dataclasses.dataclass(frozen=True)
class UserMask:
    """One compiled `{label: regex}` entry from a settings list."""

    label: str
    pattern: str
    regex: Any  # an re2 compiled pattern
    secret_group: int  # index of the `secret` group (0 for prompt masks: the whole line)


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """Validated, immutable view of the `AUDIT_*` settings."""

    callback: Callable[[dict], Any]
    callback_path: str
    audit_in: bool
    audit_out: bool
    allow_sparse: bool
    masks: tuple  # of UserMask
    prompt_masks: tuple  # of UserMask
    queue_size: int
    flush_interval: float
    log_dir: str
    file_max_bytes: int
    syslog: dict
    idle_command: str  # Evennia's IDLE_COMMAND: the webclient keep-alive, never an answer
    # Looked up once, not per event.
    hostname: str
    application: str
    version: str
    pid: int
    stop_timeout: float = 10.0
    # ---- tamper evidence and retention (see chain_settings)
    chain: bool = True
    seal_interval: float = 60.0
    seal_key_file: Any = None
    retention_days: int = 0
    compress_after_days: int = 0
    # ---- what is recorded (see capture_settings)
    capture: str = "all"
    flagged: frozenset = frozenset()  # lower-case account names
    exclude_output: frozenset = frozenset()
    watch_notify: bool = False
    writer: str = "process"  # AUDIT_WRITER


def command_lock():
    """`AUDIT_COMMAND_LOCK`: who may use the in-game `audit` command (an Evennia lock string)."""
    value = getattr(settings, "AUDIT_COMMAND_LOCK", DEFAULT_COMMAND_LOCK)
    if not isinstance(value, str) or not value.startswith("cmd:"):
        raise AuditConfigError(f"AUDIT_COMMAND_LOCK = {value!r}: must be a lock string 'cmd:...'")
    return value


def _setting(name):
    return getattr(settings, name, DEFAULTS[name])


def _fail(name, value, problem):
    raise AuditConfigError(f"{name} = {value!r}: {problem}")


def _bool(name):
    value = _setting(name)
    if not isinstance(value, bool):
        _fail(name, value, "must be True or False")
    return value


def _number(name, kind, minimum):
    value = _setting(name)
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
        kind_name = "number" if isinstance(kind, tuple) else kind.__name__
        _fail(name, value, f"must be a {kind_name} >= {minimum}")
    return value


def resolve_callback(value, name="AUDIT_CALLBACK"):
    """Import a dotted path (or accept a callable) and check it can be called with one dict."""
    if callable(value):
        return value, f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', value)}"
    if not isinstance(value, str) or "." not in value:
        _fail(name, value, "must be a dotted path like 'mygame.server.audit.send' or a callable")
    module_path, _, attr = value.rpartition(".")
    import importlib

    try:
        module = importlib.import_module(module_path)
    except Exception as err:  # ImportError, or the module raising while it loads
        _fail(name, value, f"cannot import module {module_path!r} ({type(err).__name__}: {err})")
    try:
        target = getattr(module, attr)
    except AttributeError:
        _fail(name, value, f"module {module_path!r} has no attribute {attr!r}")
    if not callable(target):
        _fail(name, value, f"{value} is a {type(target).__name__}, not a callable")
    return target, value


_pristine_defaults = None


def _evennia_default_masks():
    """Evennia 6's own `AUDIT_MASKS` defaults, as shipped (Evennia 5 has none); ours supersede them.

    Read from the source of `evennia.settings_default`, not from the imported module: a game's
    `AUDIT_MASKS += [...]` (after `from evennia.settings_default import *`) extends that module's
    list object in place, so the imported value holds the game's masks too.
    """
    global _pristine_defaults
    if _pristine_defaults is None:
        _pristine_defaults = []
        try:
            import ast
            import importlib.util

            spec = importlib.util.find_spec("evennia.settings_default")
            with open(spec.origin, encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
            for node in tree.body:
                if (
                    isinstance(node, ast.Assign)
                    and any(getattr(target, "id", None) == "AUDIT_MASKS" for target in node.targets)
                ):
                    _pristine_defaults = list(ast.literal_eval(node.value))
        except Exception:  # no Evennia source to read: nothing is skipped, nothing is lost
            _pristine_defaults = []
    return _pristine_defaults


def compile_masks(name, entries, need_secret):
    """Compile a `[{label: regex}, ...]` setting with RE2.

    RE2 matches in time linear in the input, so no mask a game adds can stall the writer the way the
    contrib's backtracking regexes could (a crafted 6,000-character line took over a minute there).
    """
    if entries is None:
        return ()
    if not isinstance(entries, (list, tuple)):
        _fail(name, entries, "must be a list of {label: regex} dicts")
    if re2 is None:
        _fail(name, entries, "needs the google-re2 package (pip install google-re2)")
    skip = _evennia_default_masks() if name == "AUDIT_MASKS" else []
    compiled = []
    for index, entry in enumerate(entries):
        if entry in skip:
            continue
        where = f"{name}[{index}]"
        if not isinstance(entry, dict) or not entry:
            _fail(where, entry, "must be a dict {label: regex}")
        for label, pattern in entry.items():
            if not isinstance(label, str) or not isinstance(pattern, str):
                _fail(where, entry, "label and regex must both be strings")
            try:
                regex = re2.compile("(?i)" + pattern)
            except Exception as err:
                _fail(
                    where,
                    entry,
                    f"invalid regex for RE2 ({err}); RE2 has no backreferences or lookaround",
                )
            group = regex.groupindex.get("secret")
            if need_secret and group is None:
                _fail(where, entry, "the regex needs a named group (?P<secret>...) around the secret")
            compiled.append(UserMask(label, pattern, regex, group or 0))
    return tuple(compiled)


def _syslog_options():
    value = _setting("AUDIT_SYSLOG")
    if not isinstance(value, dict):
        _fail("AUDIT_SYSLOG", value, "must be a dict")
    unknown = set(value) - set(SYSLOG_DEFAULTS)
    if unknown:
        _fail("AUDIT_SYSLOG", value, f"unknown keys {sorted(unknown)}; known: {sorted(SYSLOG_DEFAULTS)}")
    options = {**SYSLOG_DEFAULTS, **value}
    address = options["address"]
    transport = options["transport"]
    if address is None or isinstance(address, str):
        transport = transport or "unix"
        if transport != "unix":
            _fail("AUDIT_SYSLOG", value, "a socket path (or None for /dev/log) needs transport 'unix'")
    elif (
        isinstance(address, (tuple, list))
        and len(address) == 2
        and isinstance(address[0], str)
        and isinstance(address[1], int)
    ):
        transport = transport or "tcp"  # UDP loses records without a word; say "udp" to accept it
        if transport not in ("udp", "tcp"):
            _fail("AUDIT_SYSLOG", value, "a (host, port) address needs transport 'udp' or 'tcp'")
        address = (address[0], address[1])
    else:
        _fail("AUDIT_SYSLOG", value, "address must be None, a unix socket path or (host, port)")
    from .syslog import FACILITIES

    if options["facility"] not in FACILITIES:
        _fail("AUDIT_SYSLOG", value, f"facility must be one of {sorted(FACILITIES)}")
    if not isinstance(options["app_name"], str) or not options["app_name"]:
        _fail("AUDIT_SYSLOG", value, "app_name must be a non-empty string")
    return {**options, "address": address, "transport": transport}


def _evennia_version():
    try:
        from evennia.utils.utils import get_evennia_version

        return get_evennia_version("short")
    except Exception:
        return "unknown"


def load():
    """Read and validate every `AUDIT_*` setting. Raises `AuditConfigError` on the first bad one."""
    callback, callback_path = resolve_callback(_setting("AUDIT_CALLBACK"))
    log_dir = _setting("AUDIT_LOG_DIR") or getattr(settings, "LOG_DIR", None) or "."
    if not isinstance(log_dir, (str, os.PathLike)):
        _fail("AUDIT_LOG_DIR", log_dir, "must be a directory path")
    return AuditConfig(
        callback=callback,
        callback_path=callback_path,
        audit_in=_bool("AUDIT_IN"),
        audit_out=_bool("AUDIT_OUT"),
        allow_sparse=_bool("AUDIT_ALLOW_SPARSE"),
        masks=compile_masks("AUDIT_MASKS", _setting("AUDIT_MASKS"), need_secret=True),
        prompt_masks=compile_masks(
            "AUDIT_PROMPT_MASKS", _setting("AUDIT_PROMPT_MASKS"), need_secret=False
        ),
        queue_size=_number("AUDIT_QUEUE_SIZE", int, 1),
        flush_interval=float(_number("AUDIT_FLUSH_INTERVAL", (int, float), 0.001)),
        stop_timeout=float(_number("AUDIT_STOP_TIMEOUT", (int, float), 0)),
        log_dir=os.fspath(log_dir),
        file_max_bytes=_number("AUDIT_FILE_MAX_BYTES", int, 0),
        syslog=_syslog_options(),
        idle_command=str(getattr(settings, "IDLE_COMMAND", "idle")),
        hostname=socket.gethostname(),
        application=str(getattr(settings, "SERVERNAME", "Evennia")),
        version=_evennia_version(),
        pid=os.getpid(),
        **chain_settings(),
        **capture_settings(),
        writer=_writer(),
    )


def _writer():
    value = _setting("AUDIT_WRITER")
    if value not in WRITERS:
        _fail("AUDIT_WRITER", value, f"must be one of {', '.join(map(repr, WRITERS))}")
    return value


# ---------------------------------------------------------------- what is recorded


def _names(name):
    value = _setting(name)
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(
        isinstance(item, str) and item for item in value
    ):
        _fail(name, value, "must be a list of non-empty strings")
    return value


def capture_settings():
    """AUDIT_CAPTURE, AUDIT_FLAGGED, AUDIT_EXCLUDE_OUTPUT, AUDIT_WATCH_NOTIFY (see auditing.capture)."""
    from .capture import LEVELS

    level = _setting("AUDIT_CAPTURE")
    if level not in LEVELS:
        _fail("AUDIT_CAPTURE", level, f"must be one of {', '.join(map(repr, LEVELS))}")
    return {
        "capture": level,
        "flagged": frozenset(name.lower() for name in _names("AUDIT_FLAGGED")),
        "exclude_output": frozenset(_names("AUDIT_EXCLUDE_OUTPUT")),
        "watch_notify": _bool("AUDIT_WATCH_NOTIFY"),
    }


# ---------------------------------------------------------------- tamper evidence and retention


def default_seal_key_file():
    """GAME_DIR/server/audit_seal.key: beside the game's code, outside the log directory."""
    game_dir = getattr(settings, "GAME_DIR", None) or os.getcwd()
    return os.path.join(game_dir, "server", "audit_seal.key")


def chain_settings():
    """AUDIT_CHAIN, AUDIT_SEAL_INTERVAL, AUDIT_SEAL_KEY_FILE, AUDIT_RETENTION_DAYS, AUDIT_COMPRESS_AFTER_DAYS."""
    key_file = getattr(settings, "AUDIT_SEAL_KEY_FILE", None) or default_seal_key_file()
    if not isinstance(key_file, (str, os.PathLike)):
        _fail("AUDIT_SEAL_KEY_FILE", key_file, "must be a file path")
    return {
        "chain": _bool("AUDIT_CHAIN"),
        "seal_interval": float(_number("AUDIT_SEAL_INTERVAL", (int, float), 0.01)),
        "seal_key_file": os.fspath(key_file),
        "retention_days": _number("AUDIT_RETENTION_DAYS", int, 0),
        "compress_after_days": _number("AUDIT_COMPRESS_AFTER_DAYS", int, 0),
    }


_cached = None


def get():
    """The current `AuditConfig`, built on first use and after any `AUDIT_*` setting changes."""
    global _cached
    if _cached is None:
        _cached = load()
    return _cached


def reset(**_ignored):
    """Forget the cached configuration (the service calls it when Django reports a settings change)."""
    global _cached
    _cached = None
