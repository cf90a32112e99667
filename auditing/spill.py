"""
The spill file: what a bounded stop could not deliver, kept for the next start.

At shutdown the pipeline gives its output `AUDIT_STOP_TIMEOUT` seconds. The records it still holds
then (queued, waiting for a retry, or in the writer's hands) are written, serialised, to
`audit-spill-<UTC time>-<pid>-<n>.jsonl` in `AUDIT_LOG_DIR`: one JSON document per line, mode 0600.
The file is written under a temporary name opened with `O_CREAT|O_EXCL|O_NOFOLLOW` (a symlink or file
planted there is refused, never followed or truncated), synced, then renamed into place, so a spill
file is either whole or absent. The next start delivers these files first, oldest first, and removes
each once its records were delivered or counted lost.

The names match neither the trail's `audit_YYYY-MM-DD*.log` nor each other, so neither the CLI nor a
log shipper reads a spill file as part of the trail.
"""

import itertools
import os
import re
import time

import orjson

from .losses import epoch_of

SPILL_RE = re.compile(r"audit-spill-\d{8}T\d{6}-\d+-\d+\.jsonl\Z")
FILE_MODE = 0o600
_counter = itertools.count(1)


def write(directory, records):
    """Write `records` (bytes, one JSON document each) to a new spill file; return its path.

    Raises:
        OSError: the directory is not writable, the disk is full, or a name was taken by a planted
            file or symlink. Nothing is left behind under the final name then.
    """
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    name = f"audit-spill-{stamp}-{os.getpid()}-{next(_counter)}.jsonl"
    path = os.path.join(directory, name)
    temporary = os.path.join(directory, f".{name}.tmp")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, FILE_MODE)
    try:
        data = memoryview(b"".join(record + b"\n" for record in records))
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temporary)
        raise
    os.close(fd)
    os.rename(temporary, path)
    return path


def find(directory):
    """The spill files in `directory`, oldest first (their names sort by time)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [os.path.join(directory, name) for name in sorted(names) if SPILL_RE.match(name)]


def read(path):
    """The records of a spill file as `(epoch time, bytes, lost)` and the number of unreadable lines.

    `lost` is the count a loss record states (0 for any other record): the pipeline keeps that count if
    the record cannot be delivered again.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
    items, unreadable = [], 0
    now = time.time()
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            unreadable += 1
            continue
        if not isinstance(record, dict):
            unreadable += 1
            continue
        lost = record.get("lost", 0) if record.get("kind") == "loss" else 0
        items.append((epoch_of(record.get("time"), now), line, lost if isinstance(lost, int) else 0))
    return items, unreadable
