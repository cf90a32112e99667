"""
Loss accounting: what was given up, when it is stated in the trail, and what the log says about it.

Two clocks run side by side:

- **Loss records.** Every event given up is counted at once (`add`). The count waits for the next loss
  record, which the pipeline writes as soon as the output works: the first one at the first loss,
  then at most one every `RECORD_EVERY` seconds while the trouble lasts (so a sustained overload or
  a callback failing 30 % of its calls gives one record a second, not one per event). A loss record
  that cannot be delivered gives its count back (`restore`): the count is stated by a later record,
  never dropped with it.
- **Episodes** (for the server log). A run of trouble with no gap longer than `EPISODE_QUIET` seconds
  is one episode. The log gets one line when a kind of trouble first shows in an episode (queue full,
  output failing, callback raising), one when a failing output works again, and one when the episode
  ends, with the number of events it lost. So a flapping output or a failing callback costs a few
  lines, whatever the number of failures.
"""

import datetime

from . import FORMAT_VERSION
from .event import iso_time

RECORD_EVERY = 1.0  # seconds between loss records while trouble lasts
EPISODE_QUIET = 5.0  # seconds without trouble that end an episode


def epoch_of(iso_time, default):
    """Epoch seconds of a record's time (`2026-11-27T07:40:12.123456Z`), or `default`."""
    try:
        return datetime.datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()
    except (AttributeError, TypeError, ValueError):
        return default


class LossTracker:
    """Counts events given up, and decides when to state them and what to log.

    What waits to be stated is kept as segments `[count, first_time, last_time, cause]`, one per
    cause in a row, so a loss record covers one stretch of time with one cause (a restored loss
    record stays its own segment, with its own times and cause).

    Args:
        report (callable): `report(level, message)` writes one line to the server log.
    """

    MAX_SEGMENTS = 16  # beyond that the two oldest are merged (a storm of alternating causes)

    def __init__(self, report):
        self.report = report
        self.segments = []  # not yet stated in a delivered loss record, oldest first
        self.failing = False  # the output refuses records (they wait for a retry)
        self.cause = None  # why the output is failing now
        self.total_lost = 0  # events given up since start (each counted once)
        self.stated = 0  # events stated lost by loss records that were delivered
        self.records = 0  # loss records delivered
        self._last_record = None
        self._episode = None  # {"lost", "kinds", "first", "last_trouble", "failed_at"}

    @property
    def lost(self):
        """Events given up and not yet stated in a delivered loss record."""
        return sum(segment[0] for segment in self.segments)

    # -- counting ---------------------------------------------------------------------------------

    def add(self, count, first_time, last_time, cause):
        """`count` events were given up, covering `first_time`..`last_time` (epoch seconds)."""
        if count <= 0:
            return
        self.total_lost += count
        if self._episode is not None:
            self._episode["lost"] += count
        last = self.segments[-1] if self.segments else None
        if last is not None and last[3] == cause:
            last[0] += count
            last[1], last[2] = min(last[1], first_time), max(last[2], last_time)
        else:
            self._keep([count, first_time, last_time, cause], at_end=True)

    def restore(self, record, now):
        """A loss record that could not be delivered gives its count back, to be stated again."""
        count = record.get("lost", 0)
        if not isinstance(count, int) or count <= 0:
            return
        first = epoch_of(record.get("first_time"), now)
        last = epoch_of(record.get("last_time"), now)
        self._keep([count, first, last, record.get("cause")], at_end=False)

    def _keep(self, segment, at_end):
        if at_end:
            self.segments.append(segment)
        else:
            self.segments.insert(0, segment)
        if len(self.segments) > self.MAX_SEGMENTS:
            older, newer = self.segments[0], self.segments.pop(1)
            older[0] += newer[0]
            older[1], older[2] = min(older[1], newer[1]), max(older[2], newer[2])

    def stated_by(self, count):
        """A loss record stating `count` events was delivered."""
        self.stated += count
        self.records += 1

    # -- loss records -----------------------------------------------------------------------------

    def due(self, now):
        """True when loss records should go out now."""
        if not self.segments or self.failing:
            return False
        return self._last_record is None or now - self._last_record >= RECORD_EVERY

    def take_records(self, config, now):
        """The loss records for everything not yet stated (one per segment), oldest first."""
        segments, self.segments = self.segments, []
        if segments:
            self._last_record = now
        return [
            {
                "v": FORMAT_VERSION,
                "kind": "loss",
                "time": iso_time(now),
                "hostname": config.hostname,
                "application": config.application,
                "pid": config.pid,
                "lost": count,
                "first_time": iso_time(first),
                "last_time": iso_time(last),
                "cause": cause,
            }
            for count, first, last, cause in segments
        ]
    # -- episodes (the server log) ----------------------------------------------------------------

    def trouble(self, kind, now, message, level="err"):
        """Something went wrong (`kind`: "queue", "output", "callback", ...): log it once per episode."""
        episode = self._episode
        if episode is None:
            episode = self._episode = {"lost": 0, "kinds": [], "first": now, "failed_at": None}
        episode["last_trouble"] = now
        if kind not in episode["kinds"]:
            episode["kinds"].append(kind)
            self.report(level, message)

    def output_failed(self, now, message):
        """The output refused a write: records wait for a retry."""
        if not self.failing:
            self.failing = True
            self.trouble("output", now, message)
            if self._episode["failed_at"] is None:
                self._episode["failed_at"] = now
        else:
            self._episode["last_trouble"] = now

    def output_works(self, now, output):
        """A write succeeded: say so once per episode, with how long the output was down."""
        if not self.failing:
            return
        self.failing = False
        episode = self._episode
        episode["last_trouble"] = now
        if episode["failed_at"] is not None and "recovered" not in episode["kinds"]:
            episode["kinds"].append("recovered")
            self.report("info", f"audit output {output} works again after {now - episode['failed_at']:.1f} s")

    def end_episode(self, now, force=False):
        """Close the episode after `EPISODE_QUIET` s without trouble (or now, at shutdown)."""
        episode = self._episode
        if episode is None or (self.failing and not force):
            return
        if not force and (now - episode["last_trouble"] < EPISODE_QUIET or self.segments):
            return
        self._episode = None
        if episode["lost"]:
            unstated = f"; {self.lost} not yet stated" if self.lost else ""
            self.report(
                "warn",
                f"audit trouble over ({', '.join(k for k in episode['kinds'] if k != 'recovered')}, "
                f"{iso_time(episode['first'])} to {iso_time(episode['last_trouble'])}): "
                f"{episode['lost']} events lost, stated in loss records in the trail{unstated}",
            )
