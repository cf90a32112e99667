"""
The file sink: strict JSON Lines, one file per UTC day, mode 0600.

`FileSink(directory)` appends each record as one line to `audit_YYYY-MM-DD.log` (the day of the
event, UTC). With `max_bytes`, a day's file that would grow past it is first renamed to
`audit_YYYY-MM-DD.N.log` (N = 1, 2, ...) and a new `audit_YYYY-MM-DD.log` is created: rename and
create, so a shipper tailing the file by name (Filebeat, Vector, rsyslog imfile) follows it without
duplicating or losing a line. Within a day the order is `.1`, `.2`, ..., then the unnumbered file.

Writes are batched: the writer thread hands a whole batch over, it becomes one `os.write` per file.
If the file was removed or replaced under us (logrotate, an admin), it is reopened before writing, and
a removed directory is created again. On an OS error (disk full, read-only) `SinkError` says how
many whole records reached the file; the rest are retried by the pipeline. A record cut off by the
error is ended with a newline before the next write, so it stands alone as one malformed line that
`evennia-audit` reports, and the record is then written whole.
"""

import errno
import os
import time

from .sinkbase import Sink, SinkError

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
    """

    def __init__(self, directory, max_bytes=0, clock=time.time):
        self.directory = os.fspath(directory)
        self.max_bytes = max_bytes
        self.clock = clock
        self._fd = None
        self._day = None
        self._size = 0
        self._identity = None  # (st_dev, st_ino) of the open file
        self._cut_record = False  # the last write stopped inside a record

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
        if self._cut_record:
            os.write(self._fd, b"\n")
            self._size += 1
            self._cut_record = False
        view = memoryview(blob)
        written = 0
        try:
            while written < len(blob):
                written += os.write(self._fd, view[written:])
        except OSError as error:
            # Count whole records that made it; remember a record was cut in the middle.
            done = blob.count(b"\n", 0, written)
            self._cut_record = written > 0 and not blob[:written].endswith(b"\n")
            self._size += written
            error.records_done = done
            raise
        self._size += written

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
        # O_RDWR: _ends_with_newline reads the last byte back (pread fails on a write-only fd).
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        os.fchmod(fd, FILE_MODE)  # an existing file keeps a looser mode otherwise
        stat = os.fstat(fd)
        self._fd, self._day, self._size = fd, day, stat.st_size
        self._identity = (stat.st_dev, stat.st_ino)
        if stat.st_size and not self._cut_record:
            self._cut_record = not self._ends_with_newline(fd, stat.st_size)

    @staticmethod
    def _ends_with_newline(fd, size):
        try:
            return os.pread(fd, 1, size - 1) == b"\n"
        except OSError:
            return True

    def _still_ours(self, path):
        try:
            stat = os.stat(path)
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self._identity

    def _rotate(self, day):
        index = 1
        while os.path.exists(self.path_for(day, index)):
            index += 1
        self._close_fd()
        os.rename(self.path_for(day), self.path_for(day, index))
        self._open(day)

    def _close_fd(self):
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = None
        self._identity = None

    def flush(self):
        """Records go to the OS with each `write`; nothing is held in user space."""

    def close(self):
        self._close_fd()
