"""
The base of every unit test that touches Evennia: the trail in a temporary directory, always.

`evennia test auditing` runs in a user's game, with Evennia's default settings or (with
`--settings settings.py`) with the game's own, where `AUDIT_LOG_DIR` may be unset (the game's
`server/logs`). So every test overrides `AUDIT_LOG_DIR` with a temporary directory for its whole run,
builds its sessions from our session class whatever `SERVER_SESSION_CLASS` says, starts the audit
service itself (no server runs in a test) and stops it before the override ends: no test writes
outside the test database and temporary directories.
"""

import os
import shutil
import tempfile
from unittest import mock

from django.test import override_settings

from .. import service


class TempTrailMixin:
    """Mix in before an Evennia test case class: a temporary AUDIT_LOG_DIR and a started service.

    Both directions are recorded unless a test says otherwise (the game's settings may not).
    """

    start_service = True

    def setUp(self):
        from ..server import AuditedServerSession

        self.trail_dir = tempfile.mkdtemp(prefix="audit-test-")
        self.addCleanup(shutil.rmtree, self.trail_dir, True)
        override = override_settings(AUDIT_LOG_DIR=self.trail_dir, AUDIT_IN=True, AUDIT_OUT=True)
        override.enable()
        self.addCleanup(override.disable)
        # Every session Evennia's session handler builds in a test is of our class.
        patcher = mock.patch("evennia.server.sessionhandler._ServerSession", AuditedServerSession)
        patcher.start()
        self.addCleanup(patcher.stop)
        # Evennia's test fixtures log lock warnings to the game's server/logs: into ours instead.
        warnings = mock.patch("evennia.locks.lockhandler.WARNING_LOG",
                              os.path.join(self.trail_dir, "lockwarnings.log"))
        warnings.start()
        self.addCleanup(warnings.stop)
        self.addCleanup(service.stop)  # cleanups run last-in first-out: before the override ends
        if self.start_service:
            service.start()  # before the sessions are made: they get their `connect` records
        super().setUp()
