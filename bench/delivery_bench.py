"""
Delivery figures (a benchmark, not a test): what the writer costs, and what a bounded stop does.

    .venv/py311/bin/python bench/delivery_bench.py [--events 200000] [--queued 100000]

It reuses bench.py's throwaway game (Django, a room, a logged-in session of our class) and measures
on a real `Pipeline`:

1. game thread: `Pipeline.submit` per event, queue not full, and full (each submit gives up the oldest);
2. memory per queued event (tracemalloc over `--queued` captured events in the queue);
3. writer thread CPU per event through `to_file` (the writer thread's own CPU clock,
   `pthread_getcpuclockid`), and end-to-end events/s, with 0 lost checked in the files;
4. bounded stop: `--queued` events behind a callback sleeping 50 ms, `AUDIT_STOP_TIMEOUT` = 10 s: how
   long `stop()` takes, the spill file's size, and how long the next start takes to deliver it;
5. the prototype of the writer-process design (now `AUDIT_WRITER = "process"`, measured as built
   by `bench/writerproc_bench.py`): what would stay in the game's interpreter, i.e. turning captured tuples into plain tuples (the live objects' names looked up
   once per change, cached per connection) and `marshal.dumps` of a 4,096-event batch, per event.

Prints a markdown table (paste it into bench/results-*.md).
"""

import argparse
import contextlib
import gc
import os
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench  # noqa: E402  (bench.py: the game set-up)


def thread_cpu(thread):
    """CPU seconds used so far by `thread` (Linux: its own CPU clock)."""
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def make_pipeline(callback, log_dir, **settings_values):
    from django.conf import settings

    from auditing import conf
    from auditing.pipeline import Pipeline

    # The writer thread's figures (`bench/writerproc_bench.py` compares it with the writer process).
    for name, value in {"AUDIT_IN": True, "AUDIT_OUT": True, "AUDIT_CALLBACK": callback,
                        "AUDIT_LOG_DIR": log_dir, "AUDIT_WRITER": "thread", **settings_values}.items():
        setattr(settings, name, value)
    conf.reset()
    return Pipeline(conf.load())


def captures(session, count):
    from auditing.event import capture

    calls = bench.IN_CALLS
    return [capture(session, "RCV", calls[i % len(calls)]) for i in range(count)]


def submit_cost(session, work, events):
    """ns per submit with room in the queue, and with a full queue (drop-oldest)."""
    items = captures(session, events)
    pipeline = make_pipeline("auditing.outputs.to_file", work, AUDIT_QUEUE_SIZE=events)
    gc.collect()
    started = time.perf_counter_ns()
    for item in items:
        pipeline.submit(item)
    room = (time.perf_counter_ns() - started) / events
    started = time.perf_counter_ns()
    for item in items:
        pipeline.submit(item)  # the queue is full: each one gives up the oldest
    full = (time.perf_counter_ns() - started) / events
    assert pipeline.dropped == events
    pipeline.queue.clear()
    return room, full


def memory_per_event(session, count):
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    from collections import deque

    queue = deque(captures(session, count))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del queue
    return used / count


def writer_cost(session, work, events):
    """Writer CPU µs/event and end-to-end events/s through to_file; checks nothing was lost."""
    directory = tempfile.mkdtemp(dir=work)
    pipeline = make_pipeline("auditing.outputs.to_file", directory, AUDIT_QUEUE_SIZE=events)
    items = captures(session, events)
    pipeline.start()
    cpu_before = thread_cpu(pipeline._thread)
    started = time.perf_counter()
    for item in items:
        pipeline.submit(item)
    assert pipeline.flush(300)
    elapsed = time.perf_counter() - started
    cpu = thread_cpu(pipeline._thread) - cpu_before
    stats = pipeline.stats()
    pipeline.stop()
    lines = 0
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as handle:
            lines += handle.read().count(b"\n")
    return cpu / events * 1e6, events / elapsed, stats["lost"], lines


def compact_cost(session, events):
    """µs/event to turn captures into plain tuples and marshal them in batches (design prototype)."""
    import marshal

    items = captures(session, events)
    who_cache = {}

    def who(item):
        _when, _kind, _direction, sess, conn, _seq, account, puppet, room, _kwargs = item
        key = (id(sess), id(account), id(puppet), id(room))
        cached = who_cache.get(conn)
        if cached is None or cached[0] != key:
            names = (
                getattr(account, "key", None), getattr(account, "id", None),
                getattr(puppet, "key", None), getattr(puppet, "id", None),
                getattr(room, "key", None), getattr(room, "id", None),
                getattr(sess, "protocol_key", ""), str(getattr(sess, "address", "")),
                getattr(sess, "sessid", None),
            )
            cached = who_cache[conn] = (key, len(who_cache), names)
            return cached[1], names  # sent once per change
        return cached[1], None

    gc.collect()
    started = time.perf_counter_ns()
    size = 0
    for start in range(0, events, 4096):
        batch = []
        for item in items[start:start + 4096]:
            who_id, names = who(item)
            batch.append((item[0], item[1], item[2], item[4], item[5], who_id, names, item[9]))
        size += len(marshal.dumps(batch))
    return (time.perf_counter_ns() - started) / events / 1000, size / events


def bounded_stop(session, work, queued):
    """stop() with `queued` events behind a 50 ms callback; then the next start's delivery of the spill."""
    from auditing import spill

    directory = tempfile.mkdtemp(dir=work)

    def slow(event):
        time.sleep(0.05)

    pipeline = make_pipeline(slow, directory, AUDIT_STOP_TIMEOUT=10.0, AUDIT_QUEUE_SIZE=queued)
    pipeline.start()
    for item in captures(session, queued):
        pipeline.submit(item)
    time.sleep(0.5)
    started = time.monotonic()
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        pipeline.stop()
    stop_took = time.monotonic() - started
    (path,) = spill.find(directory)
    size = os.path.getsize(path)
    delivered = []
    after = make_pipeline(delivered.append, directory)
    started = time.monotonic()
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        after.flush()
    next_took = time.monotonic() - started
    after.stop()
    total = pipeline.stats()["delivered"] + len(delivered)
    return stop_took, pipeline.spilled, size, next_took, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--game", help="game directory root (default: bench.py's, reused)")
    args = parser.parse_args()
    with contextlib.redirect_stdout(sys.stderr):
        game = bench.game_dir(args.game)
        bench.setup_django(game)
        bench.migrate()
    from auditing import service
    from auditing.server import AuditedServerSession

    service._current = bench.idle_service()
    bench.patch_session_handler()
    _room, accounts = bench.get_or_create_world(["delivery"])
    account, char = accounts["delivery"]
    session = bench.make_session(AuditedServerSession, 9, account, char)
    work = tempfile.mkdtemp(prefix="ab-delivery-")
    try:
        room, full = submit_cost(session, work, args.events)
        per_event = memory_per_event(session, args.queued)
        cpu, rate, lost, lines = writer_cost(session, work, args.events)
        stop_took, spilled, size, next_took, total = bounded_stop(session, work, args.queued)
        compact_us, compact_bytes = compact_cost(session, args.events)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"| delivery figure (Python {sys.version.split()[0]}) | value |")
    print("|---|---|")
    print(f"| game thread: `submit`, queue with room | {room:.0f} ns/event |")
    print(f"| game thread: `submit`, queue full (gives up the oldest) | {full:.0f} ns/event |")
    print(f"| memory per queued event (captured tuple) | {per_event:.0f} bytes |")
    print(f"| writer thread CPU through to_file ({args.events:,} events) | {cpu:.2f} µs/event |")
    print(f"| end to end through to_file | {rate:,.0f} events/s, {lost} lost, {lines:,} lines |")
    print(f"| `stop()` with {args.queued:,} queued behind a 50 ms callback, "
          f"AUDIT_STOP_TIMEOUT=10 | {stop_took:.1f} s; {spilled:,} records spilled ({size / 1e6:.1f} MB) |")
    print(f"| next start: spill delivered to the callback | {next_took:.1f} s; "
          f"{total:,} of {args.queued:,} delivered in all |")
    print(f"| design prototype: plain tuple + marshal per event (what would stay in-process) | "
          f"{compact_us:.2f} µs/event, {compact_bytes:.0f} bytes/event |")


if __name__ == "__main__":
    main()
