"""
Speed of `evennia-audit search` on a big trail (not a test).

Generates a trail of --records records (default 2,000,000: about 740 MB of 370-byte records like the
writer thread makes) with the project's FileSink
(daily files, 4 days, 200 accounts, colour-marked output) in a temporary directory, then times, each in
its own process (`python -m auditing ...`):

    search --account user0042 --count        one account among 200 (byte prefilter, hit to hit)
    search --text 'dragon \\d+' --count       a rare phrase (prefilter on the regex's literal "dragon ")
    search --text '^\\w+ \\d{3}$' --count      a regex without a usable literal (every line parsed)
    search --count                           everything (every line parsed)

    sessions                                 one line per connection, the whole trail
    sessions --account user0042              the connections of one account (two prefiltered passes)

and prints elapsed time, records/s, MB/s and the peak RSS of the search process (its rusage from
os.wait4; the trail is generated in a separate process so that the parent stays small: Linux counts the
parent's size in a child's ru_maxrss when it forks). The files are in the page cache after being
written, so this measures the tool, not the disk.

Then `search --follow` latency: a follower process (`search --follow --json`, polling every 0.2 s) and
a writer appending records through FileSink (as the audit writer does, flushed per batch); the latency
is from the write returning to the follower printing the record. The game's own writer adds up to
AUDIT_FLUSH_INTERVAL (0.25 s) before the write.

Connections: every account reconnects every ~500 of its records (connect, login, puppet, ...,
logout, disconnect), so the trail holds about 4,000 connections for `sessions`.

    python bench/search_bench.py [--records N] [--dir DIR] [--keep] [--follow-samples N]
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import orjson

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from auditing.filesink import FileSink  # noqa: E402

START = 1795737600.0  # 2026-11-27T00:00:00Z
DAYS = 4
ACCOUNTS = 200
HOST = {"hostname": "game1", "application": "Evennia", "version": "5.0.1", "pid": 4242}
COMMANDS = ["look", "north", "south", "say hello there", "get sword", "inventory", "who", "pose waves",
            "examine chest", "east"]
OUTPUTS = [
    "|cThe Crossroads|n|/A dusty crossing of four roads. A |ysignpost|n leans to the east.|/|wExits:|n north, south, east",
    "You say, \"hello there\"",
    "|gYou pick up the sword.|n",
    "|wYou are carrying:|n|/ a sword|/ a |ybrass lamp|n|/ 12 |ygold coins|n",
    "|rThe goblin hits you!|n You lose 4 hit points.",
    "Nothing happens.",
]


def generate(directory, total):
    rng = random.Random(42)
    sink = FileSink(directory)
    step = DAYS * 86400.0 / total
    conns = {}
    serial = [0]
    batch, times = [], []
    written = 0
    for n in range(total):
        when = START + n * step
        account = rng.randrange(ACCOUNTS)
        conn = conns.get(account)
        whole = int(when)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((when - whole) * 1e6):06d}Z"
        base = {"v": 1, **HOST, "protocol": "telnet", "ip": f"10.0.{account // 250}.{account % 250}",
                "session": f"session#{account + 1}"}
        if conn is None or conn[1] >= 500:
            if conn is not None:  # end the old connection
                for kind in ("logout", "disconnect"):
                    conn[1] += 1
                    life = {**base, "kind": kind, "time": stamp, "conn": conn[0], "seq": conn[1]}
                    if kind == "disconnect":
                        life["reason"] = "quit"
                    else:
                        life["account"] = f"user{account:04d}#{account + 10}"
                    batch.append(orjson.dumps(life))
                    times.append(when)
            serial[0] += 1
            conn = conns[account] = [f"67470c2a1f3b-{serial[0]}", 0]
            for kind in ("connect", "login", "puppet"):
                conn[1] += 1
                life = {**base, "kind": kind, "time": stamp, "conn": conn[0], "seq": conn[1]}
                if kind != "connect":
                    life["account"] = f"user{account:04d}#{account + 10}"
                if kind == "puppet":
                    life["character"] = f"Hero{account:04d}#{account + 500}"
                batch.append(orjson.dumps(life))
                times.append(when)
        conn[1] += 1
        rcv = n % 2 == 0
        if rcv:
            text = rng.choice(COMMANDS)
            if n % 10007 == 0:
                text = f"say the dragon {n % 1000} sleeps"
        else:
            text = rng.choice(OUTPUTS)
        whole = int(when)
        event = {
            "v": 1, "kind": "io",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((when - whole) * 1e6):06d}Z",
            **HOST, "direction": "RCV" if rcv else "SND", "protocol": "telnet",
            "ip": f"10.0.{account // 250}.{account % 250}", "session": f"session#{account + 1}",
            "conn": conn[0], "seq": conn[1], "account": f"user{account:04d}#{account + 10}",
            "character": f"Hero{account:04d}#{account + 500}", "room": "The Crossroads#2",
            "text": text, "bytes": len(text),
        }
        batch.append(orjson.dumps(event))
        times.append(when)
        if len(batch) >= 5000:
            sink.write(batch, times)
            written += len(batch)
            batch, times = [], []
    if batch:
        sink.write(batch, times)
    sink.close()


def trail_size(directory):
    return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))


def timed(argv):
    """Run `python -m auditing argv` -> (seconds, peak RSS in MB, stdout)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "auditing"] + argv, stdout=subprocess.PIPE,
                               cwd=os.path.dirname(HERE))
    output = process.stdout.read()
    _pid, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 1):  # 1: nothing matched (grep's status)
        raise SystemExit(f"{argv} failed with status {process.returncode}")
    return elapsed, usage.ru_maxrss / 1024, output.decode().strip()


def follow_latency(samples):
    """Median and worst time from a FileSink write to `search --follow` printing it."""
    directory = tempfile.mkdtemp(prefix="audit-follow-")
    sink = FileSink(directory)
    try:
        sink.write([orjson.dumps({"v": 1, "kind": "connect", "time": "2026-11-27T00:00:00.000000Z"})])
        sink.flush()
        process = subprocess.Popen([sys.executable, "-m", "auditing", "search", "--dir", directory, "--follow",
                                    "--json", "--kind", "io", "--limit", str(samples)],
                                   stdout=subprocess.PIPE, cwd=os.path.dirname(HERE))
        time.sleep(1.5)  # let it start and take its first look
        latencies = []
        rng = random.Random(7)
        for n in range(samples):
            now = time.time()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
            sink.write([orjson.dumps({"v": 1, "kind": "io", "time": stamp, "direction": "RCV", "text": f"n{n}"})])
            sink.flush()
            written = time.perf_counter()
            line = process.stdout.readline()
            latencies.append(time.perf_counter() - written)
            assert orjson.loads(line)["text"] == f"n{n}", line
            time.sleep(rng.uniform(0.05, 0.4))  # writes fall anywhere in the poll cycle
        process.wait(timeout=10)
        latencies.sort()
        print(f"search --follow latency over {samples} records (poll 0.2 s): median "
              f"{latencies[len(latencies) // 2] * 1000:.0f} ms, worst {latencies[-1] * 1000:.0f} ms")
    finally:
        sink.close()
        shutil.rmtree(directory, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--dir", help="use (or fill, if empty) this directory instead of a temporary one")
    parser.add_argument("--keep", action="store_true", help="keep the generated trail")
    parser.add_argument("--follow-samples", type=int, default=30, help="records timed through --follow")
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate_only:
        generate(args.dir, args.records)
        return
    directory = args.dir or tempfile.mkdtemp(prefix="audit-bench-")
    os.makedirs(directory, exist_ok=True)
    try:
        if not any(name.startswith("audit_") for name in os.listdir(directory)):
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--generate-only", "--dir", directory,
                            "--records", str(args.records)], check=True)
            print(f"generated {args.records:,} records in {time.perf_counter() - started:.1f} s")
        size = trail_size(directory)
        print(f"trail: {directory}: {len(os.listdir(directory))} files, {size / 1e6:,.0f} MB")
        cases = [
            ("--account user0042 --count", ["--account", "user0042", "--count"]),
            ("--text 'dragon \\d+' --count", ["--text", r"dragon \d+", "--count"]),
            ("--text '^\\w+ \\d{3}$' --count", ["--text", r"^\w+ \d{3}$", "--count"]),
            ("--count (everything)", ["--count"]),
        ]
        print(f"{'search':<32} {'matches':>9} {'seconds':>8} {'records/s':>12} {'MB/s':>7} {'peak RSS':>9}")
        for label, argv in cases:
            elapsed, rss, output = timed(["search", "--dir", directory] + argv)
            print(f"{label:<32} {output:>9} {elapsed:>8.2f} {args.records / elapsed:>12,.0f} "
                  f"{size / 1e6 / elapsed:>7,.0f} {rss:>7.0f} MB")
        for label, argv in (("sessions", []), ("sessions --account user0042", ["--account", "user0042"])):
            elapsed, rss, output = timed(["sessions", "--dir", directory, "--json"] + argv)
            lines = len(output.splitlines())
            print(f"{label:<32} {lines:>9} {elapsed:>8.2f} {args.records / elapsed:>12,.0f} "
                  f"{size / 1e6 / elapsed:>7,.0f} {rss:>7.0f} MB")
        follow_latency(args.follow_samples)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
