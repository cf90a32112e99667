"""
The game's way to say "the next input line is secret", with no pattern to match.

A prompt sent through one of these masks the connection's next input line whole in the trail,
whatever its wording and language, with `masked: ["secret_prompt"]`:

    from auditing.api import secret_prompt, get_secret_input, secret_node

    secret_prompt(caller, "Enter your vault PIN:")            # a plain message
    caller.msg(text=("Vault PIN:", {"audit_secret": True}))  # the same, by hand (any msg())
    get_secret_input(caller, "New PIN:", callback)           # Evennia's get_input

    @secret_node                                             # an EvMenu node
    def node_pin(caller, raw_string, **kwargs):
        return "Enter your PIN:", {"key": "_default", "goto": _check_pin}

All of them go through Evennia's normal `msg()` -> `data_out` path, so the mark is seen in order
with the input that answers it. `audit_secret` is a text option: clients ignore it (telnet drops
unknown text options; the webclient receives it in the text command's options) and it needs no
inputfunc or OOB handler. Without auditing installed these helpers just send the text.
"""

SECRET_OPTION = "audit_secret"

# EvMenu nodes that ask for a secret, as (module, function name): Evennia's own menus are listed
# here; `@secret_node` adds a game's nodes by identity.
BUILTIN_SECRET_NODES = frozenset(
    {("evennia.contrib.base_systems.menu_login.menu_login", "node_enter_password")}
)
_secret_nodes = set()


def secret_text(text, **options):
    """The `text` value of a message whose answer is secret: `(text, {"audit_secret": True, ...})`."""
    return (text, {**options, SECRET_OPTION: True})


def secret_prompt(target, text, **kwargs):
    """Send `text` to `target` (a session, account or object) and mask the answer in the trail.

    Keyword Args:
        options (dict): extra text options (e.g. `{"type": "prompt"}`).
        others: passed to `target.msg` (`session=...`).
    """
    options = kwargs.pop("options", None) or {}
    target.msg(text=secret_text(text, **options), **kwargs)


def get_secret_input(caller, prompt, callback, session=None, *args, **kwargs):
    """Evennia's `get_input`, with the answer masked in the trail."""
    from evennia.utils.evmenu import get_input

    return get_input(caller, secret_text(prompt), callback, session, *args, **kwargs)


def secret_node(node):
    """Decorator for an EvMenu node function: the answer to this node is masked in the trail."""
    _secret_nodes.add(node)
    return node


def secret_node_label(node):
    """The label that masks the answer to this EvMenu node, or None if it is not secret:
    "secret_prompt" for a game's `@secret_node`, "password_prompt" for Evennia's own."""
    try:
        if node in _secret_nodes:
            return "secret_prompt"
    except TypeError:  # not hashable: not a node function
        return None
    key = (getattr(node, "__module__", None), getattr(node, "__name__", None))
    return "password_prompt" if key in BUILTIN_SECRET_NODES else None
