"""
The memory of one connection's secrets: what it typed that was masked, found again in its output.

A game may echo a password through a command we have no rule for ("Your new password is ..."), so
every secret a connection's input lost to masking is remembered, *each argument separately*
(`password old = new` remembers `old` and `new`; quotes are dropped), least recently used first out,
and masked wherever it reappears in that connection's output for `TTL` seconds.

Finding them is linear in the output's length: the remembered secrets are one RE2 alternation
(a DFA: no backtracking, whatever the secrets contain), rebuilt only when the set changes.

Across `evennia reload` the secrets must survive without being written to disk. `export()` gives a
JSON-able list with no secret in clear: for each secret, its length, 24 bits of a keyed rolling
fingerprint and a keyed BLAKE2 digest. The key is per connection and lives in `session.server_data`, which Evennia
keeps in the *portal's* memory across a reload and hands back to the new server process; it is never
written anywhere. Without the key, the state file is useless for guessing a password offline.
After a reload, `mask()` finds the fingerprinted secrets with a rolling hash per distinct length
(linear per length; at most `MAX_SECRETS` lengths), confirms each hit with the digest, and the secret
is back in clear memory as soon as the player types it again.
"""

import collections
import hashlib
import hmac
import os

try:
    import re2
except ImportError:  # pragma: no cover - a declared dependency
    re2 = None
import re

MASK = "********"
MIN_LENGTH = 4  # shorter "secrets" would mask ordinary letters in the output
MAX_SECRETS = 32  # per connection, least recently used first out
TTL = 900.0  # seconds a secret is looked for in its connection's output
KEY_FIELD = "audit_secret_key"  # in session.server_data: kept by the portal across a reload

_PRIME = (1 << 61) - 1  # Mersenne prime: the rolling fingerprint is a polynomial modulo it
# Only this many low bits of a fingerprint are kept: enough to skip almost every window, too few to
# test a guessed password against (even knowing the polynomial's roots); the digest decides.
_BUCKET = (1 << 24) - 1


def connection_key(session):
    """The per-connection key (bytes), created on first use in the session's `server_data`.

    Evennia syncs `server_data` to the portal before a reload and back to the new server, so the
    key outlives the server process without touching the disk.
    """
    data = getattr(session, "server_data", None)
    if not isinstance(data, dict):
        data = session.server_data = {}
    key = data.get(KEY_FIELD)
    if not isinstance(key, str) or len(key) != 64:
        key = data[KEY_FIELD] = os.urandom(32).hex()
    return bytes.fromhex(key)


def arguments_of(secret):
    """Every part of a masked span worth remembering on its own: the whole, each side of its
    first and last `=` (Evennia splits `password old = new` at the first; a password may contain
    one), each without surrounding quotes."""
    parts = {secret}
    if "=" in secret:
        parts.update(secret.split("=", 1))
        parts.update(secret.rsplit("=", 1))
    cleaned = set()
    for part in parts:
        part = part.strip()
        cleaned.add(part)
        if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'":
            cleaned.add(part[1:-1].strip())
    return [part for part in cleaned if len(part) >= MIN_LENGTH]


def _base(key):
    """The rolling hash's base, derived from the key (so fingerprints mean nothing without it)."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, person=b"audit-rk").digest(), "big") % _PRIME


def _fingerprint(text, base):
    value = 0
    for char in text:
        value = (value * base + ord(char)) % _PRIME
    return value


def _digest(text, key):
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), key=key, digest_size=16).hexdigest()


class SecretMemory:
    """The secrets of one connection (clear, in memory) and fingerprints carried over a reload."""

    __slots__ = ("clear", "hashed", "_pattern")

    def __init__(self):
        self.clear = collections.OrderedDict()  # secret -> expires_at, least recently used first
        self.hashed = {}  # length -> {fingerprint bucket: [(digest, expires_at), ...]}
        self._pattern = None  # compiled alternation of `clear`, None when stale

    def __bool__(self):
        return bool(self.clear or self.hashed)

    def remember(self, secret, now):
        """Remember a secret (and each of its arguments) for `TTL` seconds."""
        for part in arguments_of(secret):
            self.clear.pop(part, None)
            self.clear[part] = now + TTL
            self._pattern = None
        while len(self.clear) > MAX_SECRETS:
            self.clear.popitem(last=False)

    def _expire(self, now):
        stale = [secret for secret, expires_at in self.clear.items() if expires_at < now]
        for secret in stale:
            del self.clear[secret]
            self._pattern = None
        for length in list(self.hashed):
            entries = self.hashed[length]
            for bucket in list(entries):
                entries[bucket] = [entry for entry in entries[bucket] if entry[1] >= now]
                if not entries[bucket]:
                    del entries[bucket]
            if not entries:
                del self.hashed[length]

    def mask(self, text, now, key=None):
        """`text` with every remembered secret replaced by MASK; (text, True if any was)."""
        if not self:
            return text, False
        self._expire(now)
        found = False
        if self.clear:
            masked = self._mask_clear(text)
            found = masked != text
            text = masked
        if self.hashed and key is not None:
            text, hit = self._mask_hashed(text, key, now)
            found = found or hit
        return text, found

    def _mask_clear(self, text):
        # Longest first: at one position the longer secret wins (RE2 is leftmost-first).
        ordered = sorted(self.clear, key=len, reverse=True)
        if self._pattern is None:
            try:
                self._pattern = _compile("|".join(_escape(secret) for secret in ordered))
            except Exception:  # a secret RE2 cannot take (a lone surrogate): plain replacing
                self._pattern = False
        if self._pattern:
            try:
                return self._pattern.sub(MASK, text)
            except UnicodeEncodeError:  # the output has a lone surrogate: plain replacing
                pass
        for secret in ordered:  # at most MAX_SECRETS passes, each linear
            text = text.replace(secret, MASK)
        return text

    def _mask_hashed(self, text, key, now):
        """Find carried-over secrets by rolling fingerprint, confirmed by their keyed digest."""
        base = _base(key)
        spans, found = [], []
        for length, entries in self.hashed.items():
            if length > len(text):
                continue
            top = pow(base, length - 1, _PRIME)
            value = _fingerprint(text[:length], base)
            for start in range(len(text) - length + 1):
                if start:
                    value = ((value - ord(text[start - 1]) * top) * base + ord(text[start + length - 1])) % _PRIME
                candidates = entries.get(value & _BUCKET)
                if candidates is not None:
                    window = text[start : start + length]
                    digest = _digest(window, key)
                    if any(hmac.compare_digest(entry[0], digest) for entry in candidates):
                        spans.append((start, start + length))
                        found.append(window)
        for window in found:  # back in clear memory: found directly next time
            self.remember(window, now)
        if not spans:
            return text, False
        pieces, position = [], 0
        for start, end in sorted(spans):
            if end <= position:
                continue
            pieces.append(text[position : max(start, position)])
            pieces.append(MASK)
            position = end
        pieces.append(text[position:])
        return "".join(pieces), True

    def export(self, key, now):
        """A JSON-able list with no secret in clear: [length, fingerprint, digest, seconds left]."""
        self._expire(now)
        base = _base(key)
        exported = [
            [len(secret), _fingerprint(secret, base) & _BUCKET, _digest(secret, key), round(expires_at - now, 1)]
            for secret, expires_at in self.clear.items()
        ]
        for length, entries in self.hashed.items():
            for bucket, candidates in entries.items():
                for digest, expires_at in candidates:
                    exported.append([length, bucket, digest, round(expires_at - now, 1)])
        return exported[-MAX_SECRETS:]

    def load(self, exported, now):
        """Take back what `export()` gave (malformed entries are skipped)."""
        for entry in exported or ():
            try:
                length, fingerprint, digest, seconds_left = entry
                length, fingerprint, seconds_left = int(length), int(fingerprint), float(seconds_left)
                if length < MIN_LENGTH or seconds_left <= 0 or not isinstance(digest, str):
                    continue
            except (TypeError, ValueError):
                continue
            bucket = fingerprint & _BUCKET
            self.hashed.setdefault(length, {}).setdefault(bucket, []).append(
                (digest, now + min(seconds_left, TTL))
            )


def _escape(secret):
    return re2.escape(secret) if re2 is not None else re.escape(secret)


def _compile(pattern):
    if re2 is not None:
        options = re2.Options()
        options.max_mem = 64 << 20  # 32 secrets of up to a few thousand characters
        options.log_errors = False  # RE2 would print the pattern (the secrets) to stderr
        return re2.compile(pattern, options)
    return re.compile(pattern)  # pragma: no cover - literal alternation: bounded per position
