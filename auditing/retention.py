"""
Retention: compress and delete old days of the file trail, as `AUDIT_COMPRESS_AFTER_DAYS` and
`AUDIT_RETENTION_DAYS` say (both 0 by default: keep everything, uncompressed).

It runs on the writer thread (never the game's), at the first write after a start and at each new
UTC day (`ChainingSink.on_new_day`). With today = D:

- files of days before D - AUDIT_COMPRESS_AFTER_DAYS are gzip'd (`audit_DAY[.N].log.gz`, 0600;
  written aside, then renamed, then the plain file removed, so a crash leaves both and the reader
  takes the plain one);
- files of days before D - AUDIT_RETENTION_DAYS are deleted.

Each action is a `retention` record in the trail itself: `{"kind": "retention", "action": "compress"
or "delete", "files": [...], "days": [...]}`; a delete also says `through_seq`, the last `chain_seq`
the deleted files held, so `evennia-audit verify` reports the missing start of the trail as removed by
retention, not as tampering. `evennia-audit` reads compressed days transparently.
"""

import datetime
import gzip
import os
import shutil

from .chain import SECRET_MODE, last_chained, record_bytes
from .trail import TrailError, list_files


class Retention:
    """The `on_new_day` hook applying the retention settings to `directory`.

    Args:
        directory (str): the file sink's directory.
        retention_days (int): delete days older than this many days (0: never).
        compress_after_days (int): gzip days older than this many days (0: never).
    """

    def __init__(self, directory, retention_days=0, compress_after_days=0):
        self.directory = directory
        self.retention_days = retention_days
        self.compress_after_days = compress_after_days

    def __bool__(self):
        return bool(self.retention_days or self.compress_after_days)

    def __call__(self, day, now):
        """Apply the rules for `day` (`YYYY-MM-DD`, today); returns the `retention` records."""
        try:
            files, _duplicates = list_files(self.directory)
        except TrailError:
            return []
        today = datetime.date.fromisoformat(day)
        records = []
        doomed = []
        if self.retention_days:
            limit = today - datetime.timedelta(days=self.retention_days)
            doomed = [f for f in files if f.day < limit]
            if doomed:
                records.append(self._delete(doomed, now))
        if self.compress_after_days:
            limit = today - datetime.timedelta(days=self.compress_after_days)
            plain = [f for f in files if f.day < limit and not f.compressed and f not in doomed]
            if plain:
                records.append(self._compress(plain, now))
        return records

    def _delete(self, files, now):
        through_seq = None
        for trail_file in reversed(files):
            through_seq, _chain, _cut, _record = last_chained(trail_file.path, trail_file.compressed)
            if through_seq is not None:
                break
        done, failed = [], []
        for trail_file in files:
            try:
                os.unlink(trail_file.path)
                done.append(trail_file)
            except OSError as error:
                failed.append(f"{trail_file.name}: {error.strerror or error}")
        return self._record("delete", done, failed, now, through_seq=through_seq)

    def _compress(self, files, now):
        done, failed = [], []
        for trail_file in files:
            try:
                gzip_file(trail_file.path)
                done.append(trail_file)
            except OSError as error:
                failed.append(f"{trail_file.name}: {error.strerror or error}")
        return self._record("compress", done, failed, now)

    @staticmethod
    def _record(action, done, failed, now, **extra):
        fields = {
            "action": action,
            "files": [f.name for f in done],
            "days": sorted({f.day.isoformat() for f in done}),
            **{key: value for key, value in extra.items() if value is not None},
        }
        if failed:
            fields["failed"] = failed
        return record_bytes("retention", now, **fields)


def gzip_file(path):
    """`path` -> `path.gz` (0600), written aside and renamed, then `path` removed."""
    target = path + ".gz"
    temporary = target + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 SECRET_MODE)
    try:
        with open(path, "rb") as source, os.fdopen(fd, "wb") as raw:
            fd = None
            with gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0) as compressed:
                shutil.copyfileobj(source, compressed, 1 << 20)
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(temporary, target)
    except BaseException:
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    os.unlink(path)
