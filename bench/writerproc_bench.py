"""
The writer in a thread vs in a child process (`AUDIT_WRITER`), side by side in one run.

    .venv/py311/bin/python bench/writerproc_bench.py [--events 200000] [--rounds 3]

Reuses bench.py's throwaway game (Django, a room, a logged-in session of our class). For each mode,
alternating rounds, on a real `Pipeline` writing through `to_file` to a temporary directory:

1. end to end: a flood of `--events` input events (`capture` + `submit` on this thread, as fast as
   it goes, kwargs copied as the service's taps copy them for that writer: `event.frozen` for the
   writer process) until every one is in the file (`flush`): events/s, with lost and lines checked;
2. game thread in the flood: the wall time this thread spent per event on `capture` + `submit`
   while the writer (thread mode) or the feeder (process mode) works beside it, and the same loop
   with no writer running (the floor);
3. CPU per event in the game's process (all its threads) and, in process mode, in the child: the
   work under the game's interpreter lock, whatever the machine's load does to wall-clock rates;
4. the child's memory: its peak resident set (VmHWM) at the end of a round;
5. memory per queued event: tracemalloc over the captured tuples in the deque (the game-side queue),
   and in process mode the marshal'd batch kept until acknowledged.

Prints a markdown table (paste it into bench/results-writerproc-*.md).
"""

import argparse
import contextlib
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench  # noqa: E402  (bench.py: the game set-up)


def make_pipeline(log_dir, writer, events):
    from django.conf import settings

    from auditing import conf
    from auditing.pipeline import Pipeline

    values = {"AUDIT_IN": True, "AUDIT_OUT": True, "AUDIT_CALLBACK": "auditing.outputs.to_file",
              "AUDIT_LOG_DIR": log_dir, "AUDIT_QUEUE_SIZE": events, "AUDIT_WRITER": writer,
              "AUDIT_SEAL_KEY_FILE": os.path.join(log_dir, "no-seal.key")}
    for name, value in values.items():
        setattr(settings, name, value)
    conf.reset()
    return Pipeline(conf.load())


def snapshot_for(writer):
    """How the service's taps copy kwargs for this writer (`event.frozen` for the writer process)."""
    from auditing.event import _snapshot, frozen

    return frozen if writer == "process" else _snapshot


def flood(session, submit, events, snapshot):
    """capture + submit `events` times on this thread, as the service's tap does; seconds spent."""
    from auditing.event import capture

    calls = bench.IN_CALLS
    count = len(calls)
    started = time.perf_counter()
    for i in range(events):
        submit(capture(session, "RCV", calls[i % count], snapshot=snapshot))
    return time.perf_counter() - started


def count_lines(directory):
    lines = 0
    for name in os.listdir(directory):
        if name.startswith("audit_") and name.endswith(".log"):
            with open(os.path.join(directory, name), "rb") as handle:
                lines += handle.read().count(b"\n")
    return lines


def one_round(session, work, writer, events):
    directory = tempfile.mkdtemp(dir=work)
    pipeline = make_pipeline(directory, writer, events)
    pipeline.start()
    if writer == "process":  # the child is started by the feeder's first wake: not part of the flood
        deadline = time.monotonic() + 30
        while not pipeline._child_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
    gc.collect()
    child = pipeline._child if writer == "process" else None
    child_before = child_cpu(child)
    cpu_before = time.process_time()
    started = time.perf_counter()
    game_seconds = flood(session, pipeline.submit, events, snapshot_for(writer))
    assert pipeline.flush(600), pipeline.stats()
    elapsed = time.perf_counter() - started
    game_process_cpu = time.process_time() - cpu_before
    child_seconds = child_cpu(child) - child_before
    child_peak_mb = child_peak_rss_mb(child)
    stats = pipeline.stats()
    pipeline.stop()
    lines = count_lines(directory)
    return {"rate": events / elapsed, "game_us": game_seconds / events * 1e6,
            "game_process_cpu_us": game_process_cpu / events * 1e6,
            "child_cpu_us": child_seconds / events * 1e6, "lost": stats["lost"], "lines": lines,
            "child_peak_mb": child_peak_mb}


def child_peak_rss_mb(child):
    """Peak resident memory of the child so far, MB (Linux /proc VmHWM)."""
    if child is None:
        return 0.0
    with open(f"/proc/{child.pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child_cpu(child):
    """CPU seconds (user + system) the child process used so far (Linux /proc)."""
    if child is None:
        return 0.0
    with open(f"/proc/{child.pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def floor_us(session, events, writer):
    """capture + submit with nothing draining the queue (no writer, no feeder)."""
    import collections

    queue = collections.deque()
    gc.collect()
    return flood(session, queue.append, events, snapshot_for(writer)) / events * 1e6


def memory(session, count, writer):
    """bytes per queued captured tuple (as this writer's taps queue it); bytes per event of the
    process mode's kept batches."""
    from auditing.event import capture
    from auditing.procdelivery import Feeder

    calls = bench.IN_CALLS
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    import collections

    snapshot = snapshot_for(writer)
    queue = collections.deque(capture(session, "RCV", calls[i % len(calls)], snapshot=snapshot)
                              for i in range(count))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    items = list(queue)
    feeder = Feeder()
    blob_bytes = sum(len(feeder.batch(n, None, items[start:start + 4096]))
                     for n, start in enumerate(range(0, count, 4096)))
    return used / count, blob_bytes / count


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--game", help="game directory root (default: bench.py's, reused)")
    args = parser.parse_args()
    with contextlib.redirect_stdout(sys.stderr):
        game = bench.game_dir(args.game)
        bench.setup_django(game)
        bench.migrate()
    from auditing.server import AuditedServerSession

    bench.patch_session_handler()
    _room, accounts = bench.get_or_create_world(["writerproc"])
    account, char = accounts["writerproc"]
    session = bench.make_session(AuditedServerSession, 11, account, char)
    if session.audit_conn is None:
        session.audit_conn, session.audit_seq = "bench-conn", 0
    work = tempfile.mkdtemp(prefix="ab-writerproc-")
    results = {"thread": [], "process": []}
    try:
        floors = {writer: [floor_us(session, args.events, writer) for _ in range(args.rounds)]
                  for writer in ("thread", "process")}
        for _ in range(args.rounds):  # alternating: both modes see the same machine load
            for writer in ("thread", "process"):
                results[writer].append(one_round(session, work, writer, args.events))
                sys.stderr.write(f"[writerproc] {writer}: {results[writer][-1]}\n")
        memory_count = min(args.events, 100_000)
        queued = {writer: memory(session, memory_count, writer) for writer in ("thread", "process")}
        kept = queued["process"][1]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(writer, key):
        return statistics.median(r[key] for r in results[writer])

    print(f"| writer figure (Python {sys.version.split()[0]}, {args.events:,} events, "
          f"median of {args.rounds} alternating rounds) | thread | process | target |")
    print("|---|---|---|---|")
    print(f"| end to end through to_file | {med('thread', 'rate'):,.0f} events/s | "
          f"{med('process', 'rate'):,.0f} events/s | ≥ 150,000 events/s, 0 lost |")
    for writer in ("thread", "process"):
        lost = sum(r["lost"] for r in results[writer])
        lines = [r["lines"] for r in results[writer]]
        assert all(n >= args.events for n in lines), (writer, lines)
        print(f"| {writer}: lost over all rounds; lines per round | {lost} lost; {lines} | | |")
    print(f"| game thread in the flood (`capture` + `submit`) | {med('thread', 'game_us'):.2f} µs/event | "
          f"{med('process', 'game_us'):.2f} µs/event | ≤ 2 µs |")
    print(f"| CPU in the game's process (all its threads: game + writer or feeder) | "
          f"{med('thread', 'game_process_cpu_us'):.2f} µs/event | "
          f"{med('process', 'game_process_cpu_us'):.2f} µs/event | |")
    print(f"| CPU in the writer process | | {med('process', 'child_cpu_us'):.2f} µs/event | |")
    print(f"| writer process peak memory (VmHWM) | | {med('process', 'child_peak_mb'):.0f} MB | |")
    print(f"| same loop, nothing draining (floor) | {statistics.median(floors['thread']):.2f} µs/event | "
          f"{statistics.median(floors['process']):.2f} µs/event | |")
    print(f"| memory per queued event (captured tuple in the deque) | {queued['thread'][0]:.0f} bytes | "
          f"{queued['process'][0]:.0f} bytes | ≤ 512 bytes |")
    print(f"| process mode: marshal'd batch kept until acknowledged | | {kept:.0f} bytes/event | |")


if __name__ == "__main__":
    main()
