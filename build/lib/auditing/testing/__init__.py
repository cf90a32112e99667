"""Test and demo helpers: a real Evennia game on 127.0.0.1 (`game.GameServer`) and clients (`clients`).

Suites that start servers (a game, rsyslogd) or mount file systems are opt-in in a user's game:
`evennia test auditing` skips them unless `AUDITING_TEST_SERVERS=1` is set (`make test` sets it).
"""

import os
import unittest

SERVERS_ENV = "AUDITING_TEST_SERVERS"


def servers_enabled():
    """True when suites that start real servers may run (`make test`, CI)."""
    return os.environ.get(SERVERS_ENV) == "1"


def requires_servers(test_item):
    """Skip a test (class) that starts a game server, rsyslogd or mounts a file system, unless opted in."""
    return unittest.skipUnless(
        servers_enabled(), f"starts real servers: set {SERVERS_ENV}=1 to run (make test does)"
    )(test_item)
