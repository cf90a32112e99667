"""
Events: captured on the game thread, built into dicts on the writer thread.

`capture()` is the only part that runs in Evennia's reactor thread, so it does only what cannot wait:
it takes the time, the connection's id and sequence number and references to the account, puppet and
room *as they are now*, and a shallow snapshot of the keyword arguments (Evennia mutates the inner
dicts after we see them). Everything else (names, text flattening, scrubbing, the dict itself) is
`build()`'s work on the writer thread.

The dict keeps every key of Evennia's contrib so callbacks written for it keep working, and adds
`v` (format version), `kind`, `conn` (connection id) and `seq` (per-connection sequence number).
"""

import datetime
import marshal
import time

import orjson

from . import FORMAT_VERSION
from .api import SECRET_OPTION, secret_node_label
from .scrub import MASK
from .secrets import connection_key

RCV = "RCV"  # client -> game
SND = "SND"  # game -> client

_UTC = datetime.timezone.utc
_EMPTY_TYPES = (str, list, dict, tuple)  # falsy values of these types are "empty"
# What Evennia's session handler feeds a new connection as input (settings.CMD_LOGINSTART).
LOGIN_START = "__unloggedin_look_command"
# Several strings in one `text` become lines (the contrib used "|", which collides with colour codes).
TEXT_JOIN = "\n"

# ---------------------------------------------------------------- game thread


def _snapshot(kwargs):
    """Copy what Evennia may mutate after the call: the top dict and each command's kwargs dict."""
    copied = {}
    for key, value in kwargs.items():
        if type(value) in (tuple, list) and len(value) == 2 and type(value[1]) is dict:
            value = (value[0], dict(value[1]))
        copied[key] = value
    return copied


def frozen(kwargs):
    """`kwargs` as `marshal` bytes (the writer process's taps): a deep copy in one C call, and one
    object the garbage collector never scans. A flood queues a hundred thousand events; their dict
    copies made each full collection of the game's heap slower (3-4 µs per event). Values marshal
    refuses (game objects in OOB kwargs) keep `_snapshot`'s copy."""
    try:
        return _marshal_dumps(kwargs)
    except ValueError:
        return _snapshot(kwargs)


_marshal_dumps = marshal.dumps


def thawed(captured):
    """A captured tuple whose kwargs are plain again (`frozen` undone)."""
    if type(captured[-1]) is bytes:
        return captured[:-1] + (marshal.loads(captured[-1]),)
    return captured


def capture(session, direction, kwargs, kind="io", now=time.time, who=None, snapshot=_snapshot):
    """Everything `build()` needs that could change before the writer gets to it. Game thread.

    Args:
        session (ServerSession): the connection.
        direction (str): RCV or SND (None for lifecycle records).
        kwargs (dict): the arguments of `data_in`/`data_out`, or a lifecycle record's fields.
        kind (str): "io", or a lifecycle kind ("login", ...).
        now (callable): the clock.
        who (tuple): (account, puppet) to record instead of the session's current ones.
        snapshot (callable): how kwargs are copied (`_snapshot`, or `frozen` for the writer process).
    """
    conn = session.audit_conn  # given by the service before the first capture
    if who is not None:
        account, puppet = who
        room = puppet.location if puppet is not None else None
    elif session.logged_in:
        account = session.account
        puppet = session.puppet
        room = puppet.location if puppet is not None else None
    else:
        account = puppet = room = None
    copied = snapshot(kwargs)
    if direction == SND and _may_matter(kwargs.get("text"), account is not None):
        try:
            asking = _asking(session, account, puppet)
        except Exception:  # an object half deleted: the record matters more than who asked
            asking = None
        if asking:
            if type(copied) is bytes:
                copied = _snapshot(kwargs)
            copied[ASKING] = asking
    # Numbered last: whatever raised above leaves no gap in the sequence.
    seq = session.audit_seq = session.audit_seq + 1
    return (now(), kind, direction, session, conn, seq, account, puppet, room, copied)


# What the game thread saw about who is asking for the next input (see `_asking`); a private key
# of the captured kwargs, taken out by `Builder.build` before anything is recorded.
ASKING = "\x00asking"
ASKING_ONLY = "asking"  # game code waits for an answer; its wording decides if that is secret


def _may_matter(text, logged_in):
    """Can who is asking change how this output is scrubbed? Keeps `_asking`'s lookups (a few µs)
    off the common output: only menu text (a secret node's question) and, after login, untyped
    text that ends like a question (see `event._may_be_prompt`) need them."""
    options = None
    if type(text) in (tuple, list) and len(text) == 2 and type(text[1]) is dict:
        text, options = text
    kind = options.get("type") if options else None
    if kind == "menu":
        return True
    if kind is not None or not logged_in or type(text) is not str:
        return False
    tail = text[-40:]
    return ":" in tail or "?" in tail or ">" in tail


def _asking(session, account, puppet):
    """Is the game waiting for this connection's next line (EvMenu, `get_input`) as it sends this?

    That is what Evennia tells about who wrote an output: while a menu or `get_input` of game code
    waits, what it sends is its question. The label of the menu node's mask if its answer is secret
    (`auditing.api.secret_node`, Evennia's `menu_login` password node), else `ASKING_ONLY`.
    """
    for holder in (session, puppet, account):
        if holder is None:
            continue
        ndb = holder.ndb
        menu = getattr(ndb, "_evmenu", None)
        if menu is not None:
            tree = getattr(menu, "_menutree", None)
            node = tree.get(getattr(menu, "nodename", None)) if isinstance(tree, dict) else None
            return secret_node_label(node) or ASKING_ONLY
        if getattr(ndb, "_getinput", None) is not None:
            return ASKING_ONLY
    return None


# ---------------------------------------------------------------- writer thread


_second = [None, ""]  # the last whole second formatted, and its text


def iso_time(timestamp):
    """ISO 8601 UTC with microseconds and a Z: 2026-11-27T07:40:12.123456Z."""
    whole = int(timestamp)
    micro = int(round((timestamp - whole) * 1_000_000))
    if micro == 1_000_000:
        whole, micro = whole + 1, 0
    if _second[0] != whole:  # one strftime per second, not per event
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{micro:06d}Z"


_tokens = {}  # id(obj) -> (pk, name, "name#dbref"): names are read per event, formatted once


def token(obj):
    """`name#dbref` like the contrib; never raises (a deleted object gives its repr)."""
    if obj is None:
        return ""
    try:
        pk, name = obj.id, obj.key
        cached = _tokens.get(id(obj))
        if cached is not None and cached[0] == pk and cached[1] == name:
            return cached[2]
        formatted = f"{name}#{pk}" if pk else str(name)
        if len(_tokens) > 100_000:
            _tokens.clear()
        _tokens[id(obj)] = (pk, name, formatted)
        return formatted
    except Exception:
        return repr(obj)


def _ip(address):
    if isinstance(address, (tuple, list)):
        address = address[0] if address else ""
    return "" if address is None else str(address)


def flatten_text(value):
    """The strings carried by a `text` argument, in order (nested lists; dicts are options)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes):
        return [value.decode("utf-8", "replace")]
    if isinstance(value, dict):
        return []
    if isinstance(value, (list, tuple)):
        strings = []
        for item in value:
            strings.extend(flatten_text(item))
        return strings
    return [str(value)]


def split_text(kwargs):
    """Pop `text` from kwargs: (list of strings, the text's own option dict or None)."""
    value = kwargs.pop("text", None)
    options = None
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], dict):
        value, options = value
    return flatten_text(value), (options or None)


def _objects(captured, sparse_mode=False):
    """The live objects of an event, for callbacks (never serialised)."""
    when, _kind, _direction, session, _conn, _seq, account, puppet, room, _kwargs = captured
    objects = {
        "time": datetime.datetime.fromtimestamp(when, _UTC),
        "session": session,
        "account": account,
        "character": puppet,
        "room": room,
    }
    if sparse_mode:  # identity test: Evennia objects compare slowly (and oddly) with ==
        objects = {key: value for key, value in objects.items() if value is not None}
    return objects


def sparse(record):
    """Drop keys whose value is None or empty ("", [], {}, ()); keep 0 and False."""
    return {
        key: value
        for key, value in record.items()
        if value or (value is not None and type(value) not in _EMPTY_TYPES)
    }


class Builder:
    """Turns captured tuples into finished, scrubbed event dicts.

    Args:
        config (conf.AuditConfig): host name, version etc. are taken from it once.
        scrubber (scrub.Scrubber): the masking rules.
    """

    def __init__(self, config, scrubber, with_objects=True):
        self.config = config
        self.scrubber = scrubber

        # Built-in outputs drop `objects` unread: they are only made for custom callbacks.
        self.with_objects = with_objects
        self._who = {}  # (conn, account, puppet, room) -> (the keys they determine, as JSON)
        self._who_second = None
        self.last_parts = None
        self.states = {}  # conn -> scrub.ConnectionScrubState
        from .scrub import ConnectionScrubState

        self._new_state = ConnectionScrubState

    def state(self, conn):
        state = self.states.get(conn)
        if state is None:
            if len(self.states) > 50_000:  # connections that never said goodbye
                self.states.clear()
            state = self.states[conn] = self._new_state()
        return state

    def forget(self, conn):
        self.states.pop(conn, None)

    def build(self, captured):
        """The event dict for one captured tuple (see `capture`)."""
        when, kind, direction, session, conn, seq, account, puppet, room, kwargs = captured
        if kind != "io":
            return self.build_lifecycle(captured)
        kwargs = dict(kwargs)
        asking = kwargs.pop(ASKING, None)
        strings, text_options = split_text(kwargs)
        state = self.state(conn)
        if state.key is None:
            state.key = connection_key(session)
        # Logged in *when it was typed* (the writer may run after the login that followed).
        logged_in = account is not None
        text, masked = self._scrub_text(direction, strings, kwargs, text_options, state, when,
                                        logged_in, asking)
        sparse_mode = not self.config.allow_sparse
        if kwargs:
            secrets = []
            data, data_labels = self.scrubber.data(
                kwargs,
                self.scrubber.command if direction == RCV else self.scrubber.output,
                secrets=secrets,
            )
            for label in data_labels:
                if label not in masked:
                    masked.append(label)
            for secret in secrets:  # an OOB secret the game may echo back in its reply
                state.memory.remember(secret, when)
            if sparse_mode:
                # An OOB command's name is information even with no arguments: only None goes.
                data = {key: value for key, value in data.items() if value is not None}
        else:
            data = {}
        if text_options:
            # The game's own options for the text ({"type": "say"}): secret-named keys are masked,
            # the values are not scrubbed as text (but in RCV they came from the client: they are).
            if direction == RCV:
                text_options, labels = self.scrubber.data(text_options, self.scrubber.command)
                masked.extend(label for label in labels if label not in masked)
            else:
                text_options = self.scrubber.options(text_options, masked)
            if sparse_mode:
                text_options = sparse(text_options)
            if text_options:
                data["text_options"] = text_options
        text = text.strip()
        event = self._head(captured)
        if text or not sparse_mode:
            event["text"] = text
        event["bytes"] = len(text.encode("utf-8", "surrogatepass"))  # lone surrogates: still a record
        if data or not sparse_mode:
            event["data"] = data
        if masked or not sparse_mode:
            event["masked"] = masked
        if direction == RCV and strings == [LOGIN_START]:
            event["origin"] = "server"  # Evennia feeds this to new connections; nobody typed it
        return self._finish(event, captured, sparse_mode)

    def _head(self, captured):
        """The keys that change with every record: what, when, which connection."""
        when, kind, direction, _session, conn, seq = captured[:6]
        head = {"v": FORMAT_VERSION, "kind": kind, "time": iso_time(when)}
        if direction is not None:
            head["direction"] = direction
        head["conn"] = conn
        head["seq"] = seq
        return head

    def _finish(self, head, captured, sparse_mode):
        """Add the keys that stay the same while the connection's account, character and room do.

        Those are made (and serialised) once and reused, and forgotten every second so that renames
        show. `last_parts` keeps (head, serialised rest) of this record for `serialize_parts`.
        """
        when, _kind, _direction, session, conn, _seq, account, puppet, room, _kwargs = captured
        second = int(when)
        if second != self._who_second:
            self._who.clear()
            self._who_second = second
        key = (conn, id(account), id(puppet), id(room))
        who = self._who.get(key)
        if who is None:
            who_dict = self._who_and_where(session, account, puppet, room)
            who = self._who[key] = (who_dict, orjson.dumps(who_dict)[1:])
        self.last_parts = (head, who[1])
        event = {**head, **who[0]}
        if self.with_objects:
            event["objects"] = _objects(captured, sparse_mode)
        return event

    def _who_and_where(self, session, account, puppet, room):
        config = self.config
        who = {
            "hostname": config.hostname,
            "application": config.application,
            "version": config.version,
            "pid": config.pid,
            "protocol": getattr(session, "protocol_key", ""),
            "ip": _ip(getattr(session, "address", "")),
            "session": f"session#{getattr(session, 'sessid', '')}",
            "account": token(account),
            "character": token(puppet),
            "room": token(room),
        }
        return sparse(who) if not config.allow_sparse else who

    def build_lifecycle(self, captured):
        """A lifecycle record: who, where and from which connection, plus the record's own fields."""
        kind, conn, fields = captured[1], captured[4], captured[9]
        event = self._head(captured)
        for key, value in fields.items():
            # Objects (the puppet, a created account) are recorded by name#dbref.
            event[key] = value if isinstance(value, (str, int, float, bool, type(None), dict, list)) else token(value)
        if kind == "disconnect":
            self.forget(conn)
        sparse_mode = not self.config.allow_sparse
        if sparse_mode:
            event = sparse(event)
        return self._finish(event, captured, sparse_mode)

    def export_state(self, conn, now=None):
        """What must survive `evennia reload` of this connection's scrub state: JSON-able, with no
        secret in clear (keyed digests; the key stays in the portal's memory)."""
        state = self.states.get(conn)
        return state.export(time.time() if now is None else now) if state is not None else None

    def import_state(self, conn, data, now=None):
        """Take back `export_state`'s data in the next server process."""
        self.state(conn).load(data, time.time() if now is None else now)

    def _scrub_text(self, direction, strings, kwargs, text_options, state, when, logged_in,
                    asking=None):
        scrubber = self.scrubber
        masked = []
        if direction == RCV:
            if strings and state.armed_by and strings != [self.config.idle_command]:
                # The last output asked for a password (or hid the echo): this line is the answer.
                # (The webclient's keep-alive `idle` is discarded by Evennia: it answers nothing.)
                masked.append(state.armed_by)
                state.armed_by = None
                for original in strings:  # a game may echo the answer back
                    state.remember(original, MASK, when)
                return MASK, masked
            cleaned = []
            for original in strings:
                line, label = scrubber.command(original, logged_in)
                if label:
                    masked.append(label)
                    state.remember(original, line, when, label=label)
                cleaned.append(line)
            return TEXT_JOIN.join(cleaned), masked
        kind, from_channel = _kind_of(text_options)
        speech = kind in _SPEECH_TYPES or from_channel
        cleaned = []
        for original in strings:
            if speech:
                # What a player said is recorded as said, in every direction (a secret the
                # speaker typed into `say` is in their RCV record too). Only the game's masks apply.
                line, label = scrubber.speech(original)
            else:
                line, label = scrubber.output(original, logged_in)
            if label:
                masked.append(label)
            if not speech:
                line, echo_label = state.untaint(line, when)
                if echo_label and echo_label not in masked:
                    masked.append(echo_label)
            cleaned.append(line)
        text = TEXT_JOIN.join(cleaned)
        # Armed until the next input line, whatever other output comes first.
        if asking not in (None, ASKING_ONLY) and kind == "menu":
            # The text of a menu node whose answer is secret: no wording involved. (Only the node's
            # own text: what its answer's processing sends, e.g. a login, is not a question.)
            state.armed_by = asking
        elif text_options and text_options.get(SECRET_OPTION) is True:
            state.armed_by = "secret_prompt"  # the game said so: no wording involved
        elif _echo_off(kwargs, text_options):
            state.armed_by = "echo_off"
        elif text and _may_be_prompt(kind, from_channel, logged_in, asking):
            state.armed_by = scrubber.is_password_prompt(text) or state.armed_by
        prompt = kwargs.get("prompt")  # msg(prompt=...): the telnet prompt line, set by game code
        if prompt:
            prompt_text = "\n".join(flatten_text(prompt))
            if prompt_text:
                state.armed_by = scrubber.is_password_prompt(prompt_text) or state.armed_by
        return text, masked


# Output types that carry what a player wrote (Evennia's `at_say` types, `msg_type` of poses and
# whispers; channel messages carry `from_channel`): never masked, never a prompt.
_SPEECH_TYPES = frozenset({"say", "pose", "whisper", "emote", "ooc", "page", "tell", "channel"})
# Output types of game code that may ask a question: EvMenu ("menu"), prompt lines.
_ASKING_TYPES = ("menu", "prompt", "input")


def _kind_of(text_options):
    if not isinstance(text_options, dict):
        return None, False
    return text_options.get("type"), "from_channel" in text_options


def _may_be_prompt(kind, from_channel, logged_in, asking):
    """May this output arm the prompt mask by its wording? Decided from what Evennia tells about
    it, never from its text: only game code can be its author.

    - before login nobody but the game can send to a connection (no page, no channel, no say);
    - after login, untyped output may be a page's echo or another player's words, so only output
      sent while a menu or `get_input` of the game waits for this connection, or typed as a menu /
      prompt, may arm; a typed player message (say, pose, channel) never does.
    """
    if from_channel or (kind is not None and kind not in _ASKING_TYPES):
        return False
    return not logged_in or kind is not None or asking is not None


def _echo_off(kwargs, text_options):
    """Evennia hides what a player types with `echo=False` (telnet WILL ECHO / webclient)."""
    options = kwargs.get("options")
    for source in (text_options, options if isinstance(options, dict) else None):
        if source and source.get("echo") is False:
            return True
    echo = kwargs.get("echo")
    if echo is not None:
        args = echo[0] if isinstance(echo, (tuple, list)) and echo else echo
        if args is False or (isinstance(args, (list, tuple)) and args and args[0] is False):
            return True
    return False
