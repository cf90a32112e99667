
# ---- appended by tools/run-tests: the game the `auditing` test suite runs in ----
SERVER_SESSION_CLASS = "auditing.server.AuditedServerSession"
AUDIT_IN = True
AUDIT_OUT = True
