"""
Scrubbing: no password or other secret reaches a sink, in any field, in any direction.

Input lines are recognised the way Evennia's command parser recognises them (an optional `@&/+`
prefix, the command word, its arguments), so only the commands that carry a password are touched and
`say connect bob hunter2` stays as typed. Output is scrubbed by the exact shapes of Evennia's messages
that echo a password, anchored at both ends, so ordinary speech that merely contains those words is
left alone. A secret's span is replaced by the fixed `MASK`, whatever its length.

Worst case: every rule is a bounded number of `str.find`/`startswith` calls or one RE2 match, all
linear in the line's length; there is no backtracking regex anywhere on this path (measured in
`bench/bench.py`: a crafted 6,000-character line scrubs in microseconds).

Per-connection state (`ConnectionScrubState`) adds two defences that need history:
- memory: every secret argument masked in a connection's input is also masked wherever it reappears
  in that connection's output for a while, also across a reload (`auditing.secrets`);
- prompt arming: output that asks for a secret (or turns the client's echo off, or is marked by the
  game with `auditing.api`) masks the next input line of that connection whole. Whether an output
  may arm by its wording is decided from who sent it (`auditing.event`), never from its text.

Speech (say, pose, whisper, channels) is never masked by the built-in rules, in any direction.
"""

import re

from .api import SECRET_OPTION
from .secrets import MASK, MIN_LENGTH, SecretMemory

# OOB data: one rule for names whose value is a secret, at any depth (see `is_secret_key`). A name
# is cut into words (case, `-`, `_`, digits and camelCase all separate words) and is secret when
# one word is in SECRET_WORDS or the joined name contains one of SECRET_PARTS.
SECRET_WORDS = frozenset(
    "pass password passwd passphrase passcode pwd pw pin otp totp hotp mfa 2fa secret secrets "
    "token tokens cookie cookies credential credentials creds auth authorization bearer jwt "
    "sessid apikey".split()
)
SECRET_PARTS = (
    "password", "passwd", "passphrase", "secret", "token", "credential", "cookie", "authoriz",
    "apikey", "privatekey", "sessionkey", "sessionid", "accesskey", "signingkey",
)
# Squashed names: `userpin`, `newotp`, `xpwd`.
SECRET_ENDINGS = ("pin", "pincode", "otp", "pwd")
# Top-level OOB commands whose name says they carry credentials: all their arguments are masked.
SECRET_COMMANDS = frozenset(
    "connect create login logon signin signup register authenticate userpassword".split()
)
# Evennia strips one of these before matching a command (settings.CMD_IGNORE_PREFIXES).
_IGNORE_PREFIXES = "@&/+"
_CONNECT = ("connect", "conn", "con", "co")
_CREATE = ("create", "cre", "cr")
_TYPO_MAX_DISTANCE = 2
# Evennia's own "close": the cosine similarity of letter counts its command handler uses (cutoff
# 0.7) to suggest a command for a mistyped one (`evennia.utils.utils.string_similarity`).
_TYPO_SIMILARITY = 0.7

# Output that asks for a secret: the next input line of that connection is masked whole. Matched
# on the last sentence of the last line, colour codes removed, ending in `:`, `?` or `>`. Wording
# collected from login screens and menus of real games ("Enter the password you'd like to use:",
# "Choose a password for 'Bob' (8+ characters):", "PIN code?", "2FA code>", "Mot de passe :").
# Who wrote it is decided elsewhere (`auditing.event`): output a player wrote never arms.
_SECRET_WORDS_RE = (
    r"\b(pass ?words?|passwd|pass ?phrases?|pass ?codes?|pwd|pin|pin ?codes?|pin ?numbers?"
    r"|secrets?|secret (key|word|phrase|answer|code)|api[ _-]?keys?|(access|auth|api|session|bearer)[ _-]?tokens?"
    r"|tokens?|one[ -]time (code|password|pin)|otp|2fa|mfa|totp"
    r"|(verification|security|authenticat(or|ion)|recovery|backup|login|sign[ -]?in) codes?"
    r"|passwort|kennwort|contrase[ñn]a|mot de passe|senha|parola d'ordine|wachtwoord|salasana|пароль)\b"
    r"|密码|密碼|パスワード|비밀번호|暗証番号"
)
BUILTIN_PROMPTS = (("password_prompt", re.compile(_SECRET_WORDS_RE, re.I)),)
_PROMPT_TAIL = 1000  # a prompt is the end of what was sent; keeps the cost flat
# Evennia colour/markup codes and ANSI sequences: removed before the prompt grammar looks.
_MARKUP = re.compile(
    r"\|(\[?#[0-9a-fA-F]{6}|\[?[0-5]{3}|\[?=[a-z]|\[?[a-zA-Z]|[*^_/\-<>])|\x1b\[[0-9;?]*[ -/]*[@-~]"
)
_SENTENCE_END = re.compile(r"[.!](\s|$)")


def prompt_question(text):
    """The question a message ends with (its last sentence, markup removed), or "" if it does not
    end like a question (`:`, `?`, `>`)."""
    tail = _MARKUP.sub("", text[-_PROMPT_TAIL:]).rstrip()
    if not tail or tail[-1] not in ":?>":
        return ""
    lines = tail.splitlines()
    last = lines[-1].strip()
    if len(last) <= 3 and len(lines) > 1:  # "Enter your password." then ">" on a line of its own
        last = lines[-2].strip().rstrip(".!") + " " + last
    ends = [match.end() for match in _SENTENCE_END.finditer(last, 0, max(len(last) - 1, 0))]
    return last[ends[-1]:] if ends else last


def osa_distance(a, b, limit=_TYPO_MAX_DISTANCE):
    """Optimal string alignment distance (edits incl. transpositions), `limit + 1` if above limit."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2 = None
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = ca != cb
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


def _is_typo_of(word, name, min_length):
    """Is `word` a mistyped `name`? Close the way Evennia's suggestions are (letter-count cosine
    similarity >= 0.7, any letter may be the wrong one: `vonnect`, `oassword`), and at most two
    edits away (so an anagram such as `swords` is not `password`)."""
    if len(word) < min_length or osa_distance(word, name) > _TYPO_MAX_DISTANCE:
        return False
    from evennia.utils.utils import string_similarity  # lazy: scrub is imported before Django

    return string_similarity(word, name) >= _TYPO_SIMILARITY


_LEADING_SPACE = re.compile(r"\s*")
_WORD = re.compile(r'[^\s"]*')  # a command word, or an unquoted name: up to a space or a quote
_NUMBERED = re.compile(r"(.+?)-\d+$")


def strip_mxp(text):
    """Evennia's `strip_mxp` (`|lc cmd |lt text |le` -> text, `|lu url |lt text |le` -> url),
    with `find` instead of its backtracking regexes, so it stays linear."""
    pieces, position = [], 0
    while True:
        starts = [at for at in (text.find("|lc", position), text.find("|lu", position)) if at >= 0]
        if not starts:
            break
        start = min(starts)
        middle = text.find("|lt", start + 3)
        end = text.find("|le", middle + 3) if middle >= 0 else -1
        if end < 0:
            break
        pieces.append(text[position:start])
        pieces.append(text[middle + 3 : end] if text[start + 2] == "c" else text[start + 3 : middle])
        position = end + 3
    pieces.append(text[position:])
    return "".join(pieces)


def _split_command(line):
    """Return (prefix_end, word, args_start) the way Evennia's parser sees a command line.

    The word is cut at 32 characters: no command it is compared with is longer.
    """
    start = _LEADING_SPACE.match(line).end()
    while start < len(line) and line[start] in _IGNORE_PREFIXES:  # Evennia strips them all
        start += 1
    end = _WORD.match(line, start).end()
    word = line[start : min(end, start + 32)].lower()
    numbered = _NUMBERED.match(word)  # `connect-2 ...`: Evennia's pick among same-named commands
    return start, numbered.group(1) if numbered else word, end


def _mask_name_and_secret(line, args_start, label):
    """`connect NAME SECRET` / `create NAME SECRET`: keep the account name, mask the rest.

    Mirrors CmdUnconnectedConnect's parsing: a quoted name ends at its closing quote, an unquoted
    one at the first space or quote. A lone argument may be a password typed without a name, so it
    is masked too (except the guest login).
    """
    rest = line[args_start:]
    stripped = rest.lstrip()
    if not stripped:
        return line, None
    offset = args_start + len(rest) - len(stripped)
    if stripped[0] == '"':
        close = stripped.find('"', 1)
        name_end = len(stripped) if close < 0 else close + 1
    else:
        name_end = _WORD.match(stripped).end()
    secret = stripped[name_end:].strip()
    if secret:
        return line[: offset + name_end] + " " + MASK, label
    if stripped.strip().lower() == "guest":
        return line, None
    return line[:offset] + MASK, label


def _mask_after(line, start, label):
    """Mask everything after `start` (if there is anything)."""
    if not line[start:].strip():
        return line, None
    return line[:start].rstrip() + " " + MASK, label


def _mask_userpassword(line, args_start, label):
    """`userpassword ACCOUNT = SECRET`: keep the account, mask the new password."""
    equals = line.find("=", args_start)
    if equals >= 0:
        return _mask_after(line, equals + 1, label)
    return _mask_name_and_secret(line, args_start, label)


class Scrubber:
    """Stateless scrubbing rules: Evennia's built-in ones plus the game's `AUDIT_MASKS`.

    Args:
        user_masks (tuple): `conf.UserMask` entries (RE2-compiled, with a `secret` group).
        prompt_masks (tuple): `conf.UserMask` entries that recognise password prompts.
    """

    def __init__(self, user_masks=(), prompt_masks=()):
        self.user_masks = tuple(user_masks)
        self.user_prompts = tuple((m.label, m.regex) for m in prompt_masks)

    # ---------------------------------------------------------------- input

    def command(self, line, logged_in=True):
        """Scrub one input line. Returns (text, label or None)."""
        if "|l" in line:
            # Evennia strips MXP link markup from input before it parses the command.
            stripped = strip_mxp(line)
            if stripped != line:
                masked, label = self.command(stripped, logged_in)
                if label:
                    return masked, label
        if "\n" in line or "\r" in line:
            return self._multiline(line, logged_in)
        start, word, args_start = _split_command(line)
        if word:
            masked, label = self._builtin_command(line, start, word, args_start, logged_in)
            if label:
                return masked, label
        return self._user_masks(line)

    def _builtin_command(self, line, start, word, args_start, logged_in):
        # password/userpassword have no arg_regex in Evennia: `passwordX` runs `password X`.
        if word.startswith("userpassword"):
            return _mask_userpassword(line, start + len("userpassword"), "userpassword")
        if word.startswith(("password", "passwd")):
            key_length = len("password") if word.startswith("password") else len("passwd")
            return _mask_after(line, start + key_length, "password")
        if word in _CONNECT:
            return _mask_name_and_secret(line, args_start, "connect")
        if word in _CREATE and not logged_in:
            # Logged in, `create`/`@create` is the builder command: object names, not passwords.
            return _mask_name_and_secret(line, args_start, "create")
        if not logged_in and len(word) <= 16:
            # Typos of the login commands still carry a password ("conect bob hunter2"); only
            # before login, when no speech command exists that this could hide.
            if _is_typo_of(word, "connect", 5):
                return _mask_name_and_secret(line, args_start, "connect")
            if _is_typo_of(word, "create", 5):
                return _mask_name_and_secret(line, args_start, "create")
        if len(word) <= 16 and _is_typo_of(word, "password", 6):
            return _mask_after(line, args_start, "password")
        if 10 <= len(word) <= 16 and _is_typo_of(word, "userpassword", 10):
            return _mask_userpassword(line, args_start, "userpassword")
        return line, None

    def _user_masks(self, text):
        for mask in self.user_masks:
            match = mask.regex.match(text)
            if match is not None:
                begin, end = match.span(mask.secret_group)
                if begin >= 0 and end > begin:
                    return text[:begin] + MASK + text[end:], mask.label
        return text, None

    def _multiline(self, text, logged_in):
        """Input with line breaks (the webclient can send them).

        Evennia runs such a text as one command: the first line's command word decides, and a
        password command takes everything after it as its arguments (masked to the end). Later
        lines are that command's arguments (`say hi\npassword x` is speech), so they are left
        alone: masking them would let a player hide speech from the trail.
        """
        start, word, args_start = _split_command(text)
        if word:
            masked, label = self._builtin_command(text, start, word, args_start, logged_in)
            if label:
                return masked, label
        return self._user_masks(text)

    # ---------------------------------------------------------------- output

    def output(self, text, logged_in=True):
        """Scrub one output message (Evennia's echoes of a password). Returns (text, label or None)."""
        if "'" in text:  # every built-in echo rule quotes the secret or the command line
            for rule in _OUTPUT_RULES:
                text, label = rule(self, text, logged_in)
                if label:
                    return text, label
        return self._user_masks(text)

    def speech(self, text):
        """Scrub what a player said (say, pose, channel): only the game's own masks apply."""
        return self._user_masks(text)

    def is_password_prompt(self, text):
        """The label of the prompt rule this output matches, or None."""
        question = prompt_question(text)
        if question:
            for label, regex in BUILTIN_PROMPTS:
                if regex.search(question):
                    return label
        tail = text[-_PROMPT_TAIL:]
        for label, regex in self.user_prompts:
            if regex.search(tail):
                return label
        return None

    # ---------------------------------------------------------------- data

    def options(self, options, labels):
        """The game's own options of an output text (`{"type": "say"}`): values under secret-named
        keys are masked, at any depth; the values are not scrubbed as text."""
        if not any(is_secret_key(key) for key in options) and all(
            type(value) in _SCALARS for value in options.values()
        ):
            return options  # the common case, without a copy
        cleaned, found = self.data(options, _unchanged)
        labels.extend(label for label in found if label not in labels)
        return cleaned

    def data(self, value, scrub_text, depth=0, secrets=None):
        """Scrub OOB command arguments and options: secret-named keys, and every string."""
        labels = []
        found = []  # values masked for their key's name: the caller may watch for their echo

        def walk(item, level):
            if isinstance(item, str):
                text, label = scrub_text(item)
                if label:
                    labels.append(label)
                return text
            if level > 16:
                return MASK  # pathological nesting: nothing this deep is worth the risk
            if isinstance(item, dict):
                cleaned = {}
                for key, val in item.items():
                    secret = is_secret_key(key) or (level == depth and is_secret_command(key))
                    if secret and val not in (None, "", [], {}):
                        labels.append("secret_key")
                        found.extend(strings_of(val))
                        cleaned[key] = MASK
                    else:
                        cleaned[key] = walk(val, level + 1)
                return cleaned
            if isinstance(item, (list, tuple)):
                return [walk(sub, level + 1) for sub in item]
            if isinstance(item, bytes):
                return walk(item.decode("utf-8", "replace"), level + 1)
            return item

        cleaned = walk(value, depth)
        if secrets is not None:
            secrets.extend(found)
        return cleaned, labels


_SCALARS = (str, int, float, bool, type(None))


def _unchanged(text):
    return text, None


def strings_of(value):
    """The strings in a value (nested lists, tuples and dict values)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in strings_of(item)]
    return [str(value)] if value is not None else []


_CAMEL = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+[a-z]*")
_secret_keys = {}


def _words_of(name):
    return [word.lower() for word in _CAMEL.findall(name)]


def is_secret_key(key):
    """Does this OOB/option name say its value is a secret? The one rule, for any depth:
    `pwd`, `userPIN`, `session-key`, `Authorization`, `private_key`, `credentials`, `otp` ...
    (memoised: names repeat)."""
    known = _secret_keys.get(key)
    if known is None:
        known = False
        if isinstance(key, str) and key != SECRET_OPTION:
            words = _words_of(key)
            joined = "".join(words)
            known = (
                any(word in SECRET_WORDS for word in words)
                or any(part in joined for part in SECRET_PARTS)
                or joined.endswith(SECRET_ENDINGS)
            )
        if len(_secret_keys) < 10_000:
            _secret_keys[key] = known
    return known


_secret_commands = {}


def is_secret_command(name):
    """Is this top-level OOB command one that carries credentials (`connect`, `login`, ...)?
    (memoised like `is_secret_key`: every output line's options pass here)"""
    known = _secret_commands.get(name)
    if known is None:
        known = isinstance(name, str) and (
            "".join(_words_of(name)) in SECRET_COMMANDS or is_secret_key(name)
        )
        if len(_secret_commands) < 10_000:
            _secret_commands[name] = known
    return known


def _between_markers(text, head, middle, tail_marks):
    """Span of the secret in `head ... middle SECRET tail` where text starts with head and ends with
    one of tail_marks (after trailing whitespace). None if the shape does not match."""
    if not text.startswith(head) and head:
        return None
    stripped = text.rstrip()
    at = text.find(middle, len(head))
    if at < 0:
        return None
    start = at + len(middle)
    for tail in tail_marks:
        if stripped.endswith(tail) and len(stripped) - len(tail) >= start:
            return start, len(stripped) - len(tail)
    return None


def _replace(text, span, label):
    return text[: span[0]] + MASK + text[span[1]:], label


def _create_confirmation(scrubber, text, logged_in):
    # CmdUnconnectedCreate: "You want to create an account 'NAME' with password 'PW'.\nIs this ...?"
    # and email_login's: "... account 'NAME' with email 'EMAIL' and password 'PW'.\nIs this ...?"
    if not text.startswith("You want to create an account '"):
        return text, None
    first_line, newline, rest = text.partition("\n")
    for middle in ("' with password '", "' and password '"):
        span = _between_markers(first_line, "", middle, ("'.",))
        if span is not None:
            masked, label = _replace(first_line, span, "create")
            return masked + newline + rest, label
    return text, None


def _echo_rule(marker, label):
    """A rule for a whole message `PREFIX<marker>SECRET'.` (Evennia's userpassword replies)."""

    def rule(scrubber, text, logged_in):
        if marker not in text:
            return text, None
        span = _between_markers(text, "", marker, ("'.",))
        return _replace(text, span, label) if span else (text, None)

    return rule


# CmdNewPassword, to the admin: "NAME - new password set to 'PW'."
_new_password_set = _echo_rule(" - new password set to '", "userpassword")
# CmdNewPassword, to the account: "ADMIN has changed your password to 'PW'."
_password_changed_by = _echo_rule(" has changed your password to '", "userpassword")


_NOT_AVAILABLE = (("Command '", "' is not available"), ("Command \\'", "\\' is not available"))


def _not_available(scrubber, text, logged_in):
    # The command handler echoes an unknown command line back: "Command 'LINE' is not available."
    for head, tail in _NOT_AVAILABLE:
        start = text.find(head)
        if start < 0:
            continue
        inner_start = start + len(head)
        inner_end = text.rfind(tail, inner_start)  # the line itself may contain the tail
        if inner_end < 0:
            continue
        inner = text[inner_start:inner_end]
        masked, label = scrubber.command(inner.replace("\\", ""), logged_in)
        if label:
            return text[:inner_start] + masked + text[inner_end:], label
    return text, None


_OUTPUT_RULES = (_create_confirmation, _new_password_set, _password_changed_by, _not_available)


class ConnectionScrubState:
    """What the writer remembers about one connection to scrub its next records."""

    __slots__ = ("memory", "armed_by", "key")

    def __init__(self):
        self.memory = SecretMemory()  # the secrets this connection typed (see `auditing.secrets`)
        self.armed_by = None  # label of the prompt rule that will mask the next input line
        self.key = None  # the connection's key for carrying secrets over a reload (bytes)

    def remember(self, original, masked_text, now, min_length=MIN_LENGTH, label=None):
        """Remember the secret(s) an input line lost to masking, for output checks."""
        # The secret is what the mask replaced: recover it by aligning original and masked text.
        head = masked_text.find(MASK)
        if head < 0:
            return
        # (The rules may drop spaces before the mask: compare without them.)
        prefix = masked_text[:head].rstrip()
        if not original.startswith(prefix) and "|l" in original:
            original = strip_mxp(original)  # it was masked as Evennia parses it: links removed
        tail_length = len(masked_text) - head - len(MASK)
        secret = original[len(prefix) : len(original) - tail_length].strip()
        if len(secret) < min_length:
            return
        self.memory.remember(secret, now)
        if label == "create":
            # email_login's `create NAME EMAIL PASSWORD`: the password alone, and each argument,
            # may be echoed ("'PASSWORD' is not a valid e-mail address.").
            words = secret.split()
            if len(words) > 1:
                self.memory.remember(secret[len(words[0]):].strip(), now)
            if len(words) <= 3:
                for word in words:
                    self.memory.remember(word, now)

    def untaint(self, text, now):
        """Mask remembered secrets of this connection wherever they reappear in output."""
        text, found = self.memory.mask(text, now, self.key)
        return text, "echo" if found else None

    def export(self, now):
        """JSON-able, no secret in clear (see `auditing.secrets`)."""
        secrets = self.memory.export(self.key, now) if self.key is not None else []
        return {"armed_by": self.armed_by, "secrets": secrets}

    def load(self, data, now):
        """Take back what `export` gave before a reload."""
        if not isinstance(data, dict):
            return
        armed_by = data.get("armed_by")
        if isinstance(armed_by, str):
            self.armed_by = armed_by
        self.memory.load(data.get("secrets"), now)
