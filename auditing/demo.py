"""
`make demo`: a demo game with auditing on, a scripted player, and the audit trail printed.

    python -m auditing.demo run  --dir DIR   # create DIR (an Evennia game) if needed, (re)start it, play, print
    python -m auditing.demo stop --dir DIR   # stop it

The game listens on 127.0.0.1 only (ports chosen when the game is created) and uses SQLite.
"""

import argparse
import json
import os
import secrets
import sys
import time

from . import render
from .testing.clients import TelnetClient, WebClient
from .testing.game import AUDITED_SESSION_CLASS, GameServer, GameServerError

STATE = "demo_state.json"
PLAYER = "demo_player"


def _game(directory):
    directory = os.path.abspath(directory)
    return GameServer(os.path.dirname(directory), name=os.path.basename(directory),
                      session_class=AUDITED_SESSION_CLASS)


def _password(tag):
    # awkward on purpose: shell and regex metacharacters, a backslash and non-ASCII letters
    return f"{tag}-{secrets.token_hex(3)}-pä$$^(w)rd\\x"


def _load_state(game):
    try:
        with open(os.path.join(game.game_dir, STATE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _save_state(game, state):
    path = os.path.join(game.game_dir, STATE)
    with open(path, "w") as f:
        json.dump(state, f, indent=1)
    os.chmod(path, 0o600)


def format_record(record, width=110):
    """One readable, inert line: time, legend marker and direction/kind, account/character, protocol,
    and the record's description (the same `describe` the CLI and the in-game command use)."""
    when = record.get("time", "")
    when = when[11:23] if len(when) >= 23 else when
    kind = record.get("kind", "?")
    what = render.MARKERS[render.style(record)] + (record.get("direction", "?") if kind == "io" else kind.upper())
    who = str(record.get("account") or "-")
    if record.get("character"):
        who += "/" + str(record["character"])
    text = render.describe(record, skip=("account", "character", "protocol"), with_kind=False)
    if len(text) > width:
        text = text[: width - 1] + "…"
    cells = (when, what, who, str(record.get("protocol", "")), text or "(no text)")
    return render.for_terminal(f"{cells[0]:12}  {cells[1]:17} {cells[2]:24} {cells[3]:20} {cells[4]}", one_line=True)


def _shown_path(path):
    """`path` relative to the current directory when it lies below it (what the user types), else absolute."""
    relative = os.path.relpath(path)
    return path if relative.startswith(os.pardir) else relative


def walkthrough_hint(game):
    """Where `evennia-audit` is and the walkthrough's first command, typed from the current directory
    (README.md, "Investigating an incident", runs from where `make demo` ran)."""
    bin_dir = os.path.dirname(os.path.abspath(sys.executable))  # the venv's bin/, symlinks kept
    return [
        "investigate the trail (README.md, \"Investigating an incident\"), from this directory:",
        f"  . {_shown_path(os.path.join(bin_dir, 'activate'))}    "
        f"# puts {os.path.join(bin_dir, 'evennia-audit')} on PATH",
        f"  evennia-audit sessions --dir {_shown_path(game.audit_dir)}",
    ]


def _leak_forms(secret):
    return {secret.encode(), json.dumps(secret)[1:-1].encode(),
            json.dumps(secret, ensure_ascii=False)[1:-1].encode()}


def _play_telnet(game, state, passwords):
    current = state.get(PLAYER)
    with TelnetClient("127.0.0.1", game.telnet_port) as tn:
        tn.read_until("<password>")
        if current is None:
            current = _password("first")
            passwords.append(current)
            tn.send_line(f"create {PLAYER} {current}")
            tn.read_until("[Y]/N?")
            tn.send_line("y")
            tn.read_until("was created")
            state[PLAYER] = current
            _save_state(game, state)
        else:
            passwords.append(current)
        tn.send_line(f"connect {PLAYER} {current}")
        tn.read_until(f"You become {PLAYER}")
        tn.read_available(0.3)
        tn.send_line("look")
        tn.read_until("Limbo")
        tn.send_line("say Hello from the audit demo!")
        tn.read_until("You say")
        new = _password("changed")
        passwords.append(new)
        tn.send_line(f"password {current} = {new}")
        tn.read_until("Password changed.")
        state[PLAYER] = new
        _save_state(game, state)
        tn.send_line("quit")
        tn.read_available(0.5)


def _play_websocket(game, passwords):
    user, password = game.superuser
    passwords.append(password)
    with WebClient(game.websocket_port) as web:
        web.read_until("<password>")
        web.send_line(f"connect {user} {password}")
        web.read_until(f"You become {user}")
        web.read_available(0.3)
        web.send_line("look")
        web.read_until("Limbo")
        web.send_line("say Hi from the webclient.")
        web.read_until("You say")
        web.send_line("quit")
        web.read_available(0.5)


def run(directory):
    game = _game(directory)
    t0 = time.monotonic()
    if game.is_running():
        print(f"demo: stopping the running demo game in {game.game_dir}")
        game.stop()
    if not game.exists():
        if os.path.isdir(game.game_dir) and not os.listdir(game.game_dir):
            os.rmdir(game.game_dir)
        print(f"demo: creating an Evennia game in {game.game_dir}")
        game.create()
        game.superuser = ("admin", _password("admin"))
    print("demo: migrating the database (SQLite)")
    game.migrate()
    print("demo: starting the server on 127.0.0.1 ...")
    game.start(superuser=game.superuser)
    print(f"demo: ready after {time.monotonic() - t0:.1f}s")

    # the readiness probe's own connection is in the trail too: let it land before counting
    before = len(game.wait_audit_quiet(quiet=0.5, timeout=5))
    state = _load_state(game)
    passwords = []
    print(f"demo: playing as {PLAYER} over telnet, then as {game.superuser[0]} over the websocket")
    _play_telnet(game, state, passwords)
    _play_websocket(game, passwords)
    time.sleep(1.0)  # let the audit writer flush
    records = game.wait_audit_quiet(quiet=0.5, timeout=10)[before:]

    print()
    print(f"==== audit trail of this run ({len(records)} records) ====")
    print(f"({render.LEGEND})")
    for record in records:
        print(format_record(record))
    print()
    files = game.audit_files()
    raw = game.read_audit_bytes()
    print("audit file(s):")
    for path in files:
        print(f"  {path}")
    print()
    print("play yourself:")
    print(f"  telnet 127.0.0.1 {game.telnet_port}")
    print(f"  webclient: {game.webclient_url}")
    print(f"  accounts: {PLAYER} / {state[PLAYER]}    {game.superuser[0]} / {game.superuser[1]}")
    print("  stop the server: make demo-stop")
    print()
    for line in walkthrough_hint(game):
        print(line)
    print()
    leaks = [p for p in passwords if any(form in raw for form in _leak_forms(p))]
    if not files:
        print("check: FAILED - no audit file was written")
        return 1
    if leaks:
        print(f"check: FAILED - {len(leaks)} of the {len(passwords)} passwords used appear in the "
              f"audit files: {leaks}")
        return 1
    print(f"check: none of the {len(passwords)} passwords used appear anywhere in the audit files "
          f"({len(files)} file(s), {len(raw)} bytes searched, raw and JSON-escaped)")
    return 0


def stop(directory):
    game = _game(directory)
    if not game.exists():
        print(f"demo: no demo game in {game.game_dir}")
        return 0
    was_running = game.is_running()
    game.stop()
    print("demo: stopped" if was_running else "demo: was not running")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m auditing.demo", description=__doc__.strip().splitlines()[0])
    parser.add_argument("action", choices=["run", "stop"])
    parser.add_argument("--dir", default=os.path.join(os.getcwd(), "demo"), help="the demo game directory")
    args = parser.parse_args(argv)
    try:
        return run(args.dir) if args.action == "run" else stop(args.dir)
    except (OSError, TimeoutError) as err:  # a client step failed; the server keeps running
        print(f"demo: scripted session failed: {err}", file=sys.stderr)
        print("demo: the server is still running; `make demo-stop` stops it", file=sys.stderr)
        return 1
    except GameServerError as err:
        print(f"demo: {err}", file=sys.stderr)
        if args.action == "run":
            try:
                _game(args.dir).stop()
            except GameServerError:
                pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
