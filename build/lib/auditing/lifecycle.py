"""
Lifecycle records: what happened to a connection besides its input and output.

Records, in the same stream as the I/O records and told apart by `kind`:

    connect         a client connected (ip, protocol)
    login           an account logged in on the connection
    login_fail      a login was refused: `tried_account` (the name typed), never the password
    logout          the account left the connection (quit, or the connection dropped)
    disconnect      the connection closed; `reason` when Evennia gives one
    puppet/unpuppet the connection took or released control of a character (`character`)
    account_created a new account (`account`), from the connection that created it
    audit_view      staff used the in-game `audit` command (`mode`, `target`)

A `disconnect` also ends connections the previous server process left open: `reason` says whether
they closed during a reload or the server crashed (see `auditing.registry`); after a crash, a
connection the portal kept gets a new id and its `connect` names the old one in `resumed_from`.

Sources: the session's own hooks (`at_sync`, `at_login`, `at_disconnect`) and Evennia's signals
(`SIGNAL_ACCOUNT_POST_LOGIN_FAIL`, `SIGNAL_OBJECT_POST_PUPPET`/`UNPUPPET`,
`SIGNAL_ACCOUNT_POST_CREATE`). A `connect NAME ...` line that leaves the connection logged out also
gives a `login_fail` (Evennia sends no signal when NAME is not an account).

The service (`auditing.service`) writes them; this module holds the parsing they need.
"""


def tried_name(line):
    """The account name of a `connect NAME PASSWORD` line, as Evennia's command parses it.

    None when the line is no login attempt: not `connect`, or a lone argument (Evennia answers
    with its usage text, and a lone word may be a password typed without a name).
    """
    from .scrub import _CONNECT, _split_command

    _start, word, args_start = _split_command(line)
    if word not in _CONNECT:
        return None
    args = line[args_start:]
    parts = [part.strip() for part in args.split('"') if part.strip()]
    if len(parts) == 1:
        parts = parts[0].split(None, 1)
    return parts[0] if len(parts) == 2 else None
