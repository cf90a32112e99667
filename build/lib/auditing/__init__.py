"""
auditing - the I/O audit trail for Evennia.

Switch it on in your game's `server/conf/settings.py`:

    SERVER_SESSION_CLASS = "auditing.server.AuditedServerSession"
    AUDIT_IN = True
    AUDIT_OUT = True

See README.md for every setting, the event format and the sinks.
"""

__version__ = "0.1.0"
FORMAT_VERSION = 1
