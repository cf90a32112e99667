"""
Busy-room round trips, auditing off vs on, two real games side by side (a benchmark, not a test).

    .venv/py311/bin/python bench/busy_room.py [--players 20] [--rounds 10] [--commands 400]
                                              [--max-seconds 300] [--profile 0] [--out FILE]

What a player feels when the room is busy. Two Evennia games are created in a temporary directory
(`auditing.testing.game.GameServer`: loopback only, free ports, throttles off), one with
`SERVER_SESSION_CLASS = "auditing.server.AuditedServerSession"` and AUDIT_IN/AUDIT_OUT True writing to
the file sink (every other AUDIT_* setting at its default), one with Evennia's own session class.
In each, `--players` telnet players (`auditing.testing.clients.TelnetClient`) create an account and
log in; they all stand in Limbo, so every `say` is shown to all of them: 1 RCV + `--players` SND
events per command.

A round: every player runs a closed loop, all at once: send `say <tag>`, wait until its own echo of
that tag arrives, send the next, until the round's `--commands` are done (spread evenly over the
players). The round trip is timed from just before the send to the arrival of the echo, at the
client. Rounds alternate between the games (off/on, then on/off, ...) so that the noise of a shared
machine hits both; one warm-up round per game is not counted. Reported per game: p50 and p99 of the
round trips, the median over rounds and all samples pooled; the on/off ratios; commands/s and
events/s (the events the audited game records: commands x (1 + players) per second of round).
Then the audited game's trail is read back: every `say` of every round must be there once as RCV
and `--players` times as SND.

`--profile N` (needs `pip install py-spy`): N more seconds of "on" rounds with py-spy sampling the
audited server process (`--gil`: only the thread holding the interpreter lock is sampled); the
report adds the share per thread and the functions with the most samples, whole process and
auditing's own.

Setup details that do not touch what is timed: the games use Django's MD5 password hasher (20
account creations and logins per game in seconds instead of a minute), and the second game's
database is a copy of the first's, migrated once (before either started). Both games are stopped by pid at the end, always
(also on an error or Ctrl-C), and the temporary directory is removed (`--keep` keeps it).
"""

import argparse
import collections
import json
import os
import re
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import bench as bench_script  # noqa: E402  (bench/bench.py: the report header)

from auditing.testing.clients import TelnetClient  # noqa: E402
from auditing.testing.game import GameServer  # noqa: E402
from auditing.testing.game import _pid_alive as pid_alive  # noqa: E402

PASSWORD = "Busy-room-pw-2718"
FAST_SETUP = 'PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]'
TAG_MARK = "zq"  # every said tag starts with it: the trail check finds them by it
ROUND_TIMEOUT = 120.0  # s: a round that has not ended by then is reported as cut short


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] busy-room: {message}", file=sys.stderr, flush=True)


# ==================================================================== the two games


class Room:
    """One game and its logged-in players (raw sockets, after a TelnetClient did the login)."""

    def __init__(self, label, game):
        self.label = label
        self.game = game
        self.clients = []
        self.rounds = []  # one dict per counted round
        self.said = []  # every tag whose echo came back (warm-up included), for the trail check

    def pids(self):
        return sorted(set(self.game.pids().values()) | set(self.game._started_pids))

    def server_pid(self):
        return self.game.pids().get("server")


def make_games(root):
    """Create both games; the second gets a copy of the first's migrated database."""
    off = GameServer(root, "room_off", session_class=None, audit=False, settings_extra=FAST_SETUP,
                     timeout=180)
    on = GameServer(root, "room_on", settings_extra=FAST_SETUP, timeout=180)
    t0 = time.monotonic()
    off.create()
    on.create()
    off.migrate(timeout=300)
    # Already migrated: `evennia migrate` again on it would only loop asking for a superuser.
    shutil.copy2(os.path.join(off.server_dir, "evennia.db3"), os.path.join(on.server_dir, "evennia.db3"))
    log(f"games created and migrated in {time.monotonic() - t0:.0f} s")
    return Room("off", off), Room("on", on)


def start_games(rooms):
    """Start both games at once (each waits until its connection screen answers)."""
    errors = []

    def start(room):
        try:
            room.game.start()
        except BaseException as error:  # noqa: BLE001 - re-raised below, in the main thread
            errors.append(error)

    threads = [threading.Thread(target=start, args=(room,)) for room in rooms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def stop_games(rooms):
    """`evennia stop` each game, then SIGKILL any of its processes still alive, by pid."""
    for room in rooms:
        pids = room.pids()
        try:
            room.game.stop(timeout=60)
        except Exception as error:  # noqa: BLE001 - the kill below is the last word
            log(f"stopping {room.label}: {error}")
        for pid in pids:
            if is_process_of(pid, room.game.game_dir):
                try:
                    os.kill(pid, signal.SIGKILL)
                    log(f"{room.label}: pid {pid} survived the stop; killed")
                except OSError:
                    pass


def is_process_of(pid, game_dir):
    """True if `pid` is alive (not a zombie) and runs in or names `game_dir` (pids get reused)."""
    if not pid_alive(pid):
        return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().decode("utf-8", "replace")
    except OSError:
        return False
    return cwd.startswith(game_dir) or game_dir in cmdline


def log_in_players(room, players):
    """Create `players` accounts over telnet and log each in (all land in Limbo)."""
    port = room.game.telnet_port
    t0 = time.monotonic()
    for index in range(players):
        name = f"player{index:02d}"
        client = TelnetClient("127.0.0.1", port, timeout=30)
        client.read_until("<password>", timeout=30)
        client.send_line(f"create {name} {PASSWORD}")
        client.read_until("[Y]/N?", timeout=30)
        client.send_line("y")
        client.read_until("was created", timeout=30)
        client.send_line(f"connect {name} {PASSWORD}")
        client.read_until(re.compile(r"You become " + name), timeout=30)
        room.clients.append(client)
    for client in room.clients:
        client.read_available(0.2)
    log(f"{room.label}: {players} players logged in, {time.monotonic() - t0:.1f} s")


def drain(room, quiet=0.3):
    """Read and forget whatever is still arriving for the room's players."""
    socks = [client.sock for client in room.clients]
    deadline = time.monotonic() + 10
    last = time.monotonic()
    for sock in socks:
        sock.setblocking(False)
    while time.monotonic() - last < quiet and time.monotonic() < deadline:
        got = False
        for sock in socks:
            try:
                while sock.recv(65536):
                    got = True
            except BlockingIOError:
                pass
        if got:
            last = time.monotonic()
        time.sleep(0.02)


# ==================================================================== one round


def run_round(room, round_no, commands, timeout=ROUND_TIMEOUT):
    """All players in a closed loop at once; returns the round trips (s) and the round's figures."""
    clients = room.clients
    per_player = max(1, commands // len(clients))
    selector = selectors.DefaultSelector()
    state = {}
    for index, client in enumerate(clients):
        sock = client.sock
        sock.setblocking(False)
        state[sock] = {"index": index, "sent": 0, "tag": None, "t": 0, "tail": b""}
        selector.register(sock, selectors.EVENT_READ)
    rtts = []

    def send_next(sock, entry):
        entry["tag"] = f"{TAG_MARK}{room.label}{round_no:03d}p{entry['index']:02d}c{entry['sent']:04d}"
        entry["needle"] = entry["tag"].encode()
        entry["sent"] += 1
        line = f"say {entry['tag']}\r\n".encode()
        entry["t"] = time.perf_counter()
        sock.sendall(line)

    cpu_before = process_cpu(room.game.pids())
    started = time.perf_counter()
    for sock, entry in state.items():
        send_next(sock, entry)
    waiting = len(state)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock = key.fileobj
            entry = state[sock]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                raise ConnectionError(f"{room.label}: player {entry['index']} disconnected")
            if entry["tag"] is None:
                continue
            data = entry["tail"] + data
            if entry["needle"] in data:
                rtts.append(time.perf_counter() - entry["t"])
                room.said.append(entry["tag"])
                entry["tail"] = b""
                if entry["sent"] < per_player:
                    send_next(sock, entry)
                else:
                    entry["tag"] = None
                    waiting -= 1
            else:
                entry["tail"] = data[-len(entry["needle"]):]
    elapsed = time.perf_counter() - started
    cpu_after = process_cpu(room.game.pids())
    selector.close()
    for client in clients:
        client.sock.setblocking(True)
    expected = per_player * len(clients)
    return {
        "rtts": rtts,
        "commands": len(rtts),
        "expected": expected,
        "complete": len(rtts) == expected,
        "seconds": elapsed,
        "p50": percentile(rtts, 50),
        "p99": percentile(rtts, 99),
        "commands_per_s": len(rtts) / elapsed,
        "events_per_s": len(rtts) * (1 + len(clients)) / elapsed,
        "cpu_ms": {name: (cpu_after[name] - cpu_before[name]) * 1000 / max(len(rtts), 1)
                   for name in cpu_before if name in cpu_after},
    }


def process_cpu(pids):
    """{"server": s, "portal": s}: CPU seconds (user + system) each process has used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return out


def percentile(values, pct):
    """Nearest-rank percentile (the value at or below which `pct` % of the samples fall)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-pct * len(ordered) // 100))
    return ordered[int(rank) - 1]


# ==================================================================== the trail check


def check_trail(room, players):
    """Every counted `say`: once as RCV, `players` times as SND in the audited game's trail."""
    game = room.game
    game.wait_audit_quiet(quiet=1.0, timeout=60)
    rcv, snd = collections.Counter(), collections.Counter()
    other_kinds = collections.Counter()
    mark = TAG_MARK.encode()
    tag_re = re.compile(TAG_MARK + r"on\d{3}p\d{2}c\d{4}")
    for path in game.audit_files():
        with open(path, "rb") as handle:
            for line in handle:
                if mark not in line:
                    if b'"kind":"io"' not in line:
                        kind = re.search(rb'"kind":"(\w+)"', line)
                        other_kinds[kind.group(1).decode() if kind else "?"] += 1
                    continue
                record = json.loads(line)
                text = json.dumps(record.get("text", ""))
                for tag in set(tag_re.findall(text)):
                    (rcv if record.get("direction") == "RCV" else snd)[tag] += 1
    return rcv, snd, other_kinds


# ==================================================================== profiling (optional)


def profile_on(room, seconds, commands, first_round):
    """py-spy on the audited server while "on" rounds run; returns its raw stacks (or a reason)."""
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(py_spy):
        return None, "py-spy is not installed (`pip install py-spy`)"
    out = os.path.join(tempfile.mkdtemp(prefix="busy-room-prof-"), "stacks.txt")
    proc = subprocess.Popen(
        [py_spy, "record", "--pid", str(room.server_pid()), "--duration", str(int(seconds)),
         "--rate", "250", "--format", "raw", "--threads", "--gil", "--nonblocking", "--output", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(1.0)
        ends = time.monotonic() + seconds
        index = first_round
        while time.monotonic() < ends and proc.poll() is None:
            run_round(room, index, commands)
            index += 1
        proc.wait(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not os.path.exists(out):
        return None, f"py-spy wrote nothing: {proc.stderr.read().strip()[-500:]}"
    with open(out) as handle:
        stacks = handle.read()
    shutil.rmtree(os.path.dirname(out), ignore_errors=True)
    return stacks, None


def summarize_profile(stacks, top=15):
    """Share per thread; where the audited server spends its samples, and which are auditing's own.

    A sample is auditing's when its deepest `auditing/` frame is not the session's `data_in`/`data_out`
    handing over to Evennia (`super()`): that is the game's own work, whatever class runs it.
    """
    own, audit_own, audit_incl = collections.Counter(), collections.Counter(), collections.Counter()
    threads, audit_threads = collections.Counter(), collections.Counter()
    total = 0
    for line in stacks.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        count = int(count)
        frames = stack.split(";")
        thread = "?"
        while frames and frames[0].startswith(("thread", "process")):
            head = frames.pop(0)
            if head.startswith("thread"):
                thread = head.rsplit("): ", 1)[-1]  # `thread (0x7f..) (tid): Name` -> Name
        threads[thread] += count
        total += count
        if not frames:
            continue
        names = [short(frame) for frame in frames]
        own[names[-1]] += count
        audit_at = [i for i, frame in enumerate(frames) if "auditing/" in frame]
        if not audit_at:
            continue
        deepest = audit_at[-1]
        if names[deepest].startswith("AuditedServerSession.data_") and deepest + 1 < len(frames):
            continue  # Evennia's own data_in/data_out under our session class
        audit_threads[thread] += count
        audit_own[names[-1]] += count
        for name in {names[i] for i in audit_at}:
            audit_incl[name] += count
    return {"total": total, "threads": threads, "own": own.most_common(top),
            "audit_threads": audit_threads, "audit_own": audit_own.most_common(top),
            "audit_incl": audit_incl.most_common(top)}


def short(frame):
    """`func (path/to/module.py:12)` -> `func (module.py)`: one row per function, not per line."""
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    func, path = match.groups()
    parts = path.split("/")
    where = "/".join(parts[-2:]) if "auditing" in parts else parts[-1]
    return f"{func} ({where})"


# ==================================================================== report


def header():
    """bench.py's lines (machine, versions, commit, date), plus the load the machine had."""
    try:
        load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        load = "?"
    lines = bench_script.header()
    lines[0] += f"; load average at the end {load} (other work shares this machine; both games alike)"
    return lines


def ms(value):
    return f"{value * 1000:.1f}"


def report(args, rooms, trail, profile, elapsed, cut_short):
    off, on = rooms
    out = []
    p = out.append
    p("# Busy room: round trips with auditing off and on (bench/busy_room.py)")
    p("")
    out.extend(header())
    players = len(on.clients)
    p(f"- {players} telnet players in one room (Limbo); every `say` is shown to all {players}: "
      f"1 RCV + {players} SND events per command")
    p(f"- closed loop: each player sends `say <tag>` and waits for its own echo before the next; all "
      f"{players} at once; {on.rounds[0]['expected'] if on.rounds else '?'} commands per round; "
      f"{len(on.rounds)} counted rounds per game, alternating off/on, on/off, ... (+1 warm-up round each)")
    p("- off: Evennia's ServerSession; on: auditing.server.AuditedServerSession, AUDIT_IN = AUDIT_OUT = "
      "True, file sink, every other AUDIT_* setting at its default")
    p("- round trip: client-side, from just before the send to the arrival of the echo (loopback telnet)")
    if cut_short:
        p(f"- stopped early: {cut_short}")
    p("")
    figures = {}
    for room in rooms:
        rs = room.rounds
        pooled = [rtt for r in rs for rtt in r["rtts"]]
        figures[room.label] = {
            "p50": statistics.median(r["p50"] for r in rs),
            "p99": statistics.median(r["p99"] for r in rs),
            "p50_all": percentile(pooled, 50),
            "p99_all": percentile(pooled, 99),
            "max": max(pooled),
            "cps": statistics.median(r["commands_per_s"] for r in rs),
            "eps": statistics.median(r["events_per_s"] for r in rs),
            "server_cpu": statistics.median(r["cpu_ms"].get("server", float("nan")) for r in rs),
            "portal_cpu": statistics.median(r["cpu_ms"].get("portal", float("nan")) for r in rs),
            "samples": len(pooled),
        }
    f_off, f_on = figures["off"], figures["on"]
    ratio50 = f_on["p50"] / f_off["p50"]
    ratio99 = f_on["p99"] / f_off["p99"]
    worse = sum(1 for a, b in zip(off.rounds, on.rounds) if b["p99"] > a["p99"])
    p("| | auditing off | auditing on | on / off |")
    p("|---|---|---|---|")
    p(f"| p50 round trip, ms (median over rounds) | {ms(f_off['p50'])} | {ms(f_on['p50'])} | "
      f"{ratio50:.3f} ({(ratio50 - 1) * 100:+.1f} %) |")
    p(f"| p99 round trip, ms (median over rounds) | {ms(f_off['p99'])} | {ms(f_on['p99'])} | "
      f"{ratio99:.3f} ({(ratio99 - 1) * 100:+.1f} %) |")
    for key, label in (("p50_all", "p50"), ("p99_all", "p99"), ("max", "max")):
        p(f"| {label} round trip, ms (all {f_on['samples']:,} samples pooled) | {ms(f_off[key])} | "
          f"{ms(f_on[key])} | {f_on[key] / f_off[key]:.3f} |")
    p(f"| commands/s (median over rounds) | {f_off['cps']:,.0f} | {f_on['cps']:,.0f} | "
      f"{f_on['cps'] / f_off['cps']:.3f} |")
    for key, label in (("server_cpu", "Server"), ("portal_cpu", "Portal")):
        p(f"| {label} process CPU per command, ms (median over rounds) | {f_off[key]:.2f} | "
          f"{f_on[key]:.2f} | {f_on[key] / f_off[key]:.3f} |")
    p(f"| events/s (commands x {1 + players}; recorded only when on) | ({f_off['eps']:,.0f}) | "
      f"{f_on['eps']:,.0f} | |")
    p(f"| rounds whose p99 is worse with auditing on (paired by round) | | {worse} of "
      f"{min(len(off.rounds), len(on.rounds))} | |")
    verdict = "met" if ratio99 <= 1.05 else "NOT met"
    p(f"| target (issue 10): p99 on within 5 % of off | | | **{verdict}** ({(ratio99 - 1) * 100:+.1f} %) |")
    p("")
    p("Per round, in the order run (round trips in ms):")
    p("")
    p("| round | off p50 / p99 | on p50 / p99 | off / on cmd/s | off / on Server CPU ms/cmd |")
    p("|---|---|---|---|---|")
    for index, (a, b) in enumerate(zip(off.rounds, on.rounds), 1):
        p(f"| {index} {'off→on' if a['order'] == 0 else 'on→off'} | {ms(a['p50'])} / {ms(a['p99'])} | "
          f"{ms(b['p50'])} / {ms(b['p99'])} | {a['commands_per_s']:,.0f} / {b['commands_per_s']:,.0f} | "
          f"{a['cpu_ms'].get('server', float('nan')):.2f} / {b['cpu_ms'].get('server', float('nan')):.2f} |")
    p("")
    if trail is not None:
        rcv, snd, others, said = trail
        missing_rcv = sum(1 for tag in said if rcv[tag] != 1)
        wrong_snd = sum(1 for tag in said if snd[tag] != players)
        p(f"Trail check (audited game): {len(said):,} `say` commands sent; recorded as RCV exactly once: "
          f"{len(said) - missing_rcv:,}; with exactly {players} SND records: {len(said) - wrong_snd:,}; "
          f"io records for them: {sum(rcv.values()) + sum(snd.values()):,} (expected "
          f"{len(said) * (1 + players):,}). Other records: "
          f"{', '.join(f'{k} {v}' for k, v in sorted(others.items())) or 'none'}.")
        p("")
    if profile:
        summary, reason, seconds = profile
        p(f"## Where the audited server's interpreter time goes (py-spy --gil, {seconds:g} s of \"on\" "
          f"rounds, 250 Hz: each sample is the thread holding the GIL, if any)")
        p("")
        if reason:
            p(f"Not profiled: {reason}")
        else:
            total = summary["total"] or 1
            audit = summary["audit_threads"]
            p("Shares are of the samples in which a thread of the audited server held the GIL. \"Auditing's\" = the "
              "deepest `auditing/` frame is auditing's own work (not `super().data_in/data_out`, which is "
              "Evennia's).")
            p("")
            p("| thread | share of samples | of which auditing's |")
            p("|---|---|---|")
            for name, count in summary["threads"].most_common():
                p(f"| {name} | {count / total * 100:.1f} % | {audit[name] / total * 100:.1f} % |")
            p(f"| all | 100 % | {sum(audit.values()) / total * 100:.1f} % |")
            p("")
            for title, rows in (
                ("function (own time, whole process)", summary["own"]),
                ("function (own time, in auditing's samples)", summary["audit_own"]),
                ("auditing function (inclusive: it and what it calls)", summary["audit_incl"]),
            ):
                p(f"| {title} | share |")
                p("|---|---|")
                for name, count in rows:
                    p(f"| `{name}` | {count / total * 100:.1f} % |")
                p("")
    p(f"Total run time {elapsed:.0f} s (setup included).")
    return "\n".join(out) + "\n"


# ==================================================================== main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    parser.add_argument("--players", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10, help="counted rounds per game")
    parser.add_argument("--commands", type=int, default=400, help="commands per round (all players)")
    parser.add_argument("--max-seconds", type=float, default=300,
                        help="stop starting new rounds after this long (setup included)")
    parser.add_argument("--profile", type=float, default=0, help="seconds of py-spy on the audited server")
    parser.add_argument("--out", help="write the table here too (default: bench/results-busy-room-pyXY.md)")
    parser.add_argument("--keep", action="store_true", help="keep the games' temporary directory")
    args = parser.parse_args()

    started = time.monotonic()
    out_path = args.out or os.path.join(
        HERE, f"results-busy-room-py{sys.version_info[0]}{sys.version_info[1]}.md")
    root = tempfile.mkdtemp(prefix="busy-room-")
    rooms = []
    # SIGTERM / SIGHUP end the run like Ctrl-C, so the games are always stopped.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    cut_short = ""
    trail = profile = None
    try:
        log(f"games in {root}")
        rooms = list(make_games(root))
        start_games(rooms)
        off, on = rooms
        log(f"started: off pids {off.pids()}, on pids {on.pids()}")
        for room in rooms:
            log_in_players(room, args.players)
        for room in rooms:  # warm-up, not counted
            drain(room)
            run_round(room, 0, min(args.commands, 4 * args.players))
        for index in range(1, args.rounds + 1):
            if time.monotonic() - started > args.max_seconds:
                cut_short = f"--max-seconds {args.max_seconds:g} reached after {index - 1} rounds"
                break
            order = 0 if index % 2 else 1
            for room in (rooms if order == 0 else rooms[::-1]):
                drain(room, quiet=0.1)
                result = run_round(room, index, args.commands)
                result["order"] = order
                if not result["complete"]:
                    cut_short = (f"round {index} on {room.label}: {result['commands']} of "
                                 f"{result['expected']} commands within {ROUND_TIMEOUT:g} s")
                room.rounds.append(result)
            log(f"round {index}: off p50/p99 {ms(off.rounds[-1]['p50'])}/{ms(off.rounds[-1]['p99'])} ms, "
                f"on {ms(on.rounds[-1]['p50'])}/{ms(on.rounds[-1]['p99'])} ms")
            if cut_short:
                break
        rcv, snd, others = check_trail(on, args.players)
        trail = (rcv, snd, others, list(on.said))
        if args.profile:
            log(f"profiling the audited server for {args.profile:g} s")
            stacks, reason = profile_on(on, args.profile, args.commands, 900)
            profile = (summarize_profile(stacks) if stacks else None, reason, args.profile)
    except KeyboardInterrupt:
        cut_short = cut_short or "interrupted"
        log("interrupted: stopping the games")
    finally:
        for room in rooms:
            for client in room.clients:
                client.close()
        stop_games(rooms)
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if not rooms or not rooms[0].rounds or not rooms[1].rounds:
        log("no complete round: nothing to report")
        return 1
    text = report(args, rooms, trail, profile, time.monotonic() - started, cut_short)
    print(text)
    if cut_short == "interrupted":  # a partial run does not replace the results of a whole one
        return 130
    with open(out_path, "w", encoding="utf-8") as handle:
        handle.write(text)
    log(f"written to {os.path.relpath(out_path, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
