"""
The file sink: strict JSON Lines, one file per UTC day, mode 0600.

`FileSink(directory)` appends each record as one line to `audit_YYYY-MM-DD.log` (the day of the
event, UTC). With `max_bytes`, a day's file that would grow past it is first renamed to
`audit_YYYY-MM-DD.N.log` (N = 1, 2, ...) and a new `audit_YYYY-MM-DD.log` is created: rename and
create, so a shipper tailing the file by name (Filebeat, Vector, rsyslog imfile) follows it without
duplicating or losing a line. Within a day the order is `.1`, `.2`, ..., then the unnumbered file.

Writes are batched: the writer thread hands a whole batch over, it becomes one `os.write` per file.
If the file was removed or replaced under us (logrotate, an admin), it is reopened before writing, and
a removed directory is created again.

Every line of every file parses:
- On an OS error (disk full, read-only) `SinkError` says how many whole records reached the file; the
  pipeline retries the rest. A record cut off by the error is removed at once (the file is truncated
  to its last complete line), or before the next write if even that failed.
- At start (`take_losses`, called by the pipeline) the newest files are checked for a record cut by a
  crash (kill -9, power loss) and truncated to their last complete line; each cut record is reported
  as one lost record, with its size, for the pipeline's loss record. A file opened later is checked
  the same way.

What it refuses:
- A symlink planted where a trail file goes is never followed (`O_NOFOLLOW`): it is renamed aside to
  `audit_DAY.refused-symlink.log`, counted (`stats()["refused_symlinks"]`) and logged.
- A file of another format under our name (the contrib's `<time> [-] {json}` lines) is never appended
  to: its first line is checked when it is opened; if that is not a JSON object, the file is renamed
  to `audit_DAY.contrib.log` (`.contrib.N.log` if taken), which is logged once, and a new file started.
"""

import errno
import os
import time
from stat import S_ISREG

import orjson

from . import sinkbase
from .sinkbase import Sink, SinkError
from .trail import FILE_RE

_HEAD = 65536  # bytes read to judge a file's format (its first line)
_RECENT = 2  # newest trail files checked at start for a record cut by a crash

FILE_MODE = 0o600
DIR_MODE = 0o700


def day_of(timestamp):
    """The UTC day, `YYYY-MM-DD`, of an epoch timestamp."""
    return time.strftime("%Y-%m-%d", time.gmtime(timestamp))


class FileSink(Sink):
    """Append records to daily JSON Lines files.

    Args:
        directory (str): Where the `audit_YYYY-MM-DD.log` files go (created if missing).
        max_bytes (int): Also rotate a day's file before it passes this size; 0 disables.
        clock (callable): Returns epoch seconds; used for records given without a time.
        report (callable): `report(level, message)` for the lines it logs (moved files, symlinks).
    """

    limits = (
        "file: a record counts as delivered once written to the OS (not fsynced): a process crash "
        "loses nothing written, a power loss may lose the last seconds"
    )

    def __init__(self, directory, max_bytes=0, clock=time.time, report=None):
        self.directory = os.fspath(directory)
        self.max_bytes = max_bytes
        self.clock = clock
        self.report = report or (lambda level, message: sinkbase.report(level, message))
        self.refused_symlinks = 0
        self.moved_aside = 0
        self._fd = None
        self._day = None
        self._size = 0
        self._identity = None  # (st_dev, st_ino) of the open file
        self._repair_to = None  # size to truncate the open file to before the next write
        self._losses = []  # (count, first, last, cause) found on our own, for the pipeline
        self._checked_recent = False

    def path_for(self, day, index=None):
        """`audit_DAY.log`, or the N-th size-rotated `audit_DAY.N.log`."""
        name = f"audit_{day}.log" if index is None else f"audit_{day}.{index}.log"
        return os.path.join(self.directory, name)

    def write(self, records, times=None):
        """Append `records` (bytes, one JSON document each), bucketed by `times` (epoch seconds)."""
        if not records:
            return
        if times is None:
            days = [day_of(self.clock())] * len(records)
        else:
            days = [day_of(when) for when in times]
        delivered = 0
        start = 0
        for end in range(1, len(records) + 1):
            if end == len(records) or days[end] != days[start]:
                try:
                    self._write_day(days[start], records[start:end])
                except SinkError as error:
                    raise SinkError(error.cause, delivered + error.delivered) from None
                delivered += end - start
                start = end

    def take_losses(self):
        """Records lost before they could be delivered, found by the sink: `(count, first, last, cause)`.

        The first call also repairs the newest trail files, which a crash may have left with a cut
        last record.
        """
        if not self._checked_recent:
            self._checked_recent = True
            self._repair_recent()
        losses, self._losses = self._losses, []
        return losses

    def stats(self):
        """What the sink refused or moved (for `Pipeline.stats()`)."""
        return {"refused_symlinks": self.refused_symlinks, "moved_aside": self.moved_aside}

    # -- writing ----------------------------------------------------------------------------------

    def _write_day(self, day, records):
        try:
            self._open(day)
            if self.max_bytes:
                self._write_rotating(day, records)
            else:
                self._append(b"\n".join(records) + b"\n")
        except OSError as error:
            raise SinkError(
                f"cannot write {self.path_for(day)}: {error.strerror or error}",
                getattr(error, "records_done", 0),
            ) from None

    def _write_rotating(self, day, records):
        done = 0
        chunk = []
        chunk_size = 0
        try:
            for record in records:
                size = len(record) + 1
                if self._size + chunk_size + size > self.max_bytes and (chunk or self._size):
                    if chunk:
                        self._append(b"\n".join(chunk) + b"\n")
                        done += len(chunk)
                        chunk, chunk_size = [], 0
                    self._rotate(day)
                chunk.append(record)
                chunk_size += size
            if chunk:
                self._append(b"\n".join(chunk) + b"\n")
        except OSError as error:
            error.records_done = done + getattr(error, "records_done", 0)
            raise

    def _append(self, blob):
        if self._repair_to is not None:
            # A record cut by the last failed write is still at the end: remove it first.
            os.ftruncate(self._fd, self._repair_to)
            self._size, self._repair_to = self._repair_to, None
        view = memoryview(blob)
        written = 0
        try:
            while written < len(blob):
                written += os.write(self._fd, view[written:])
        except OSError as error:
            # Whole records that made it count as delivered; a cut one is truncated away.
            whole = blob.rfind(b"\n", 0, written) + 1
            error.records_done = blob.count(b"\n", 0, whole)
            self._size += written
            if written > whole:
                good = self._size - (written - whole)
                try:
                    os.ftruncate(self._fd, good)
                    self._size = good
                except OSError:
                    self._repair_to = good
            raise
        self._size += written

    # -- opening ----------------------------------------------------------------------------------

    def _open(self, day):
        path = self.path_for(day)
        if self._fd is not None and day == self._day and self._still_ours(path):
            return
        self._close_fd()
        try:
            os.makedirs(self.directory, mode=DIR_MODE, exist_ok=True)
        except FileExistsError:
            raise NotADirectoryError(
                errno.ENOTDIR, f"{self.directory} exists and is not a directory"
            ) from None
        fd = self._open_refusing_links(path)
        try:
            stat = os.fstat(fd)
            if stat.st_size and self._foreign(fd):
                os.close(fd)
                self._convert_aside(path)
                fd = self._open_refusing_links(path)
                stat = os.fstat(fd)
            os.fchmod(fd, FILE_MODE)  # an existing file keeps a looser mode otherwise
            size = self._repair_tail(fd, stat.st_size, path) if stat.st_size else 0
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._day, self._size = fd, day, size
        self._identity = (stat.st_dev, stat.st_ino)

    def _open_refusing_links(self, path):
        """Open `path` for appending; a symlink there is renamed aside, never followed."""
        # Read access too: the format and the last line are checked on the same descriptor.
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            return os.open(path, flags, FILE_MODE)
        except OSError as error:
            if error.errno != errno.ELOOP or not os.path.islink(path):
                raise
        self.refused_symlinks += 1
        self._move_aside(path, "refused-symlink", f"is a symlink to {os.readlink(path)!r}")
        return os.open(path, flags, FILE_MODE)

    def _move_aside(self, path, label, why):
        """Rename `path` to `<name>.<label>.log` (or `.<label>.N.log`) and say so in the log."""
        stem = path[: -len(".log")]
        target, index = f"{stem}.{label}.log", 1
        while os.path.lexists(target):
            target, index = f"{stem}.{label}.{index}.log", index + 1
        os.rename(path, target)
        self.moved_aside += 1
        self.report("warn", f"audit file {path} {why}: moved to {target}; a new file is started")

    def _convert_aside(self, path):
        """A file in another format (the old contrib's `<ts> [-] {json}` lines) becomes JSON Lines
        beside ours: `audit_DAY.contrib.log`, each record marked `"legacy": true` with its time made
        canonical (`trail.decode_line`), so every line of every file parses and `evennia-audit`
        finds the old records; a line that is neither is kept whole as `{"legacy": true, "kind":
        "error", "raw": ...}`. Written under a temporary name, then the original is removed."""
        from .trail import decode_line

        stem = path[: -len(".log")]
        target, index = f"{stem}.contrib.log", 1
        while os.path.lexists(target):
            target, index = f"{stem}.contrib.{index}.log", index + 1
        temporary = f"{target}.{os.getpid()}.tmp"
        source = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(source, "rb") as handle:
            lines = handle.read().splitlines()
        records = []
        for line in lines:
            record, problem = decode_line(line)
            if record is None and problem is None:
                continue  # a blank line
            if record is None:
                record = {"legacy": True, "kind": "error", "error": problem,
                          "raw": line.decode("utf-8", "replace")}
            records.append(orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS) + b"\n")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"".join(records))
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(temporary, target)
        os.unlink(path)
        self.moved_aside += 1
        self.report("warn", f"audit file {path} held the old contrib's format: its {len(records)} "
                            f"records are now JSON Lines in {target} (marked legacy); a new file is started")

    @staticmethod
    def _foreign(fd):
        """True when the file's first line is not a JSON object (another program's format)."""
        head = os.pread(fd, _HEAD, 0)
        line, newline, _rest = head.partition(b"\n")
        if not line.startswith(b"{"):
            return True
        if not newline:
            return False  # one long or cut record of ours: the tail repair handles it
        try:
            return not isinstance(orjson.loads(line), dict)
        except orjson.JSONDecodeError:
            return True

    def _repair_tail(self, fd, size, path):
        """Truncate a cut last record away (counted as one lost record); return the new size."""
        if os.pread(fd, 1, size - 1) == b"\n":
            return size
        good = _after_last_newline(fd, size)
        os.ftruncate(fd, good)
        mtime = os.fstat(fd).st_mtime
        self._losses.append(
            (1, mtime, mtime, f"a record cut off by a crash ({size - good} bytes at the end of "
             f"{os.path.basename(path)}) was removed")
        )
        return good

    def _repair_recent(self):
        """At start: repair the newest trail files (the ones a crashed process was writing)."""
        try:
            names = [name for name in os.listdir(self.directory) if FILE_RE.match(name)]
        except OSError:
            return
        found = []
        for name in names:
            try:
                stat = os.lstat(os.path.join(self.directory, name))
            except OSError:
                continue
            if not name.endswith(".gz") and S_ISREG(stat.st_mode) and stat.st_size:
                found.append((stat.st_mtime, name))
        for _mtime, name in sorted(found)[-_RECENT:]:
            path = os.path.join(self.directory, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                self._repair_tail(fd, os.fstat(fd).st_size, path)
            except OSError as error:
                self.report("err", f"cannot repair the end of {path}: {error}")
            finally:
                os.close(fd)

    def _still_ours(self, path):
        try:
            stat = os.stat(path)
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self._identity

    def _rotate(self, day):
        index = 1
        while os.path.lexists(self.path_for(day, index)):
            index += 1
        self._close_fd()
        os.rename(self.path_for(day), self.path_for(day, index))
        self._open(day)

    def _close_fd(self):
        if self._fd is not None:
            try:
                if self._repair_to is not None:
                    os.ftruncate(self._fd, self._repair_to)
            except OSError:
                pass  # checked again when the file is next opened
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = None
        self._identity = None
        self._repair_to = None

    def flush(self):
        """Records go to the OS with each `write`; nothing is held in user space."""

    def close(self):
        self._close_fd()


def _after_last_newline(fd, size):
    """Offset just after the last newline of the first `size` bytes (0 if there is none)."""
    end = size
    while end > 0:
        start = max(0, end - _HEAD)
        chunk = os.pread(fd, end - start, start)
        found = chunk.rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0
