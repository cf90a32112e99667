"""
Cost of the hash chain and seals on the writer thread (a benchmark, not a test).

    .venv/py311/bin/python bench/chain_bench.py [--records 200000] [--rounds 7] [--out FILE]

Records are real-shaped `io` records (the keys the pipeline writes, 300-400 bytes of JSON). Times are the
CPU time of the writing thread (`time.thread_time_ns`; the seal's fsync wait is not CPU). Per round,
interleaved, median and min over rounds:

- chain only: `ChainingSink` over a sink that does nothing, minus that sink alone: the work the chain
  adds per record (BLAKE2b-128 of head + record, the two fields appended);
- file: the same records through a real `FileSink` in a temporary directory, with and without the chain
  (batches of 4096, as the pipeline hands them over);
- seal: one seal (MAC, key evolution, key file rewritten with fsync), which happens once a minute;
- verify: `evennia-audit verify` throughput on the chained trail just written.
"""

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import orjson

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from auditing.chain import ChainingSink, SealKey  # noqa: E402
from auditing.event import iso_time  # noqa: E402
from auditing.filesink import FileSink  # noqa: E402
from auditing.verify import verify  # noqa: E402

BATCH = 4096
START = 1_795_000_000.0


class NullSink:
    def write(self, records, times=None):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def make_records(count):
    records, times = [], []
    for number in range(count):
        when = START + number * 0.01
        records.append(orjson.dumps({
            "v": 1, "kind": "io", "time": iso_time(when), "direction": "SND" if number % 2 else "RCV",
            "conn": "67470c2a1f3b-12", "seq": number, "text": f"You say, \"hello number {number} to the room\"",
            "account": "bob#3", "character": "Bob#7", "room": "Limbo#2", "ip": "203.0.113.9",
            "protocol": "telnet", "hostname": "game-host", "application": "Evennia", "pid": 4242,
        }))
        times.append(when)
    return records, times


def push(sink, records, times):
    for start in range(0, len(records), BATCH):
        sink.write(records[start:start + BATCH], times[start:start + BATCH])
        sink.flush()


def timed(fn):
    """CPU time of this thread (the writer's work), in ns: steadier than wall time on a shared machine."""
    start = time.thread_time_ns()
    fn()
    return time.thread_time_ns() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", help="also write the markdown report here")
    args = parser.parse_args()
    records, times = make_records(args.records)
    root = tempfile.mkdtemp(prefix="chain-bench-")
    key_path = os.path.join(root, "server", "audit_seal.key")
    SealKey.create(key_path)
    results = {name: [] for name in ("null", "null+chain", "file", "file+chain", "seal")}
    verify_rate = []
    try:
        for round_number in range(args.rounds):
            results["null"].append(timed(lambda: push(NullSink(), records, times)))
            chained = ChainingSink(NullSink(), None, None, clock=lambda: START)
            results["null+chain"].append(timed(lambda: push(chained, records, times)))
            plain_dir = os.path.join(root, f"plain{round_number}")
            results["file"].append(timed(lambda: push(FileSink(plain_dir, clock=lambda: START), records, times)))
            chain_dir = os.path.join(root, f"chain{round_number}")
            sink = ChainingSink(FileSink(chain_dir, clock=lambda: START), None, key_path, 1e9,
                                trail_dir=chain_dir, clock=lambda: START)
            results["file+chain"].append(timed(lambda: push(sink, records, times)))
            results["seal"].append(timed(lambda: sink._seal_if_due(START, final=True)))
            sink.close()
            elapsed = timed(lambda: verify(chain_dir, None))
            verify_rate.append(args.records / (elapsed / 1e9))
            shutil.rmtree(plain_dir)
            shutil.rmtree(chain_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def per_record(name, minus=None):
        values = [(v - (results[minus][i] if minus else 0)) / args.records / 1000 for i, v in enumerate(results[name])]
        return f"{statistics.median(values):.3f} ({min(values):.3f})"

    size = statistics.mean(len(r) for r in records)
    growth = len(b',"chain_seq":123456,"chain":""') + 32
    lines = [
        "# Hash chain and seal cost (bench/chain_bench.py)",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"- load average at the end: {os.getloadavg()[0]:.2f}; times are CPU time of the writing thread",
        f"- Python {platform.python_version()}; {args.records:,} records of {size:.0f} bytes on average, batches of {BATCH}; "
        f"{args.rounds} rounds, 'median (min)'",
        "",
        "| what | µs per record |",
        "|---|---|",
        f"| chain work added on the writer (ChainingSink over a null sink, minus the null sink) | {per_record('null+chain', 'null')} |",
        f"| FileSink alone | {per_record('file')} |",
        f"| FileSink under ChainingSink (with seal key) | {per_record('file+chain')} |",
        f"| added by the chain on a real file | {per_record('file+chain', 'file')} |",
        "",
        f"- one seal (MAC, key evolved, key file rewritten with fsync; CPU time): "
        f"{statistics.median(results['seal']) / 1000:.0f} µs median ({min(results['seal']) / 1000:.0f} min); one per "
        "AUDIT_SEAL_INTERVAL (60 s)",
        f"- verify (chain only): {statistics.median(verify_rate):,.0f} records/s median",
        f"- each record grows by {growth} bytes (with a 6-digit chain_seq)",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(report)


if __name__ == "__main__":
    main()
