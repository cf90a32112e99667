"""Checks the end-to-end tests share: where a secret could hide in a trail."""

import json


def leak_forms(secret):
    """Ways a secret can appear in JSON Lines bytes: raw UTF-8 and JSON-escaped (both flavours),
    also for the secret without surrounding spaces (as Evennia or a client may strip it)."""
    forms = {
        secret.encode("utf-8"),
        json.dumps(secret)[1:-1].encode("ascii"),
        json.dumps(secret, ensure_ascii=False)[1:-1].encode("utf-8"),
    }
    if secret.strip() != secret:
        forms |= leak_forms(secret.strip())
    return forms


def strings_in(value):
    """Every string inside a decoded record (keys and values, recursively)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings_in(item)


def plain(text):
    """Record text without Evennia colour markup."""
    from evennia.utils.ansi import strip_ansi

    return strip_ansi(text or "")
