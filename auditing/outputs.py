"""
Outputs: where audit events go. `AUDIT_CALLBACK` names one of these, or your own function.

- `to_file` (the default): JSON Lines, one file per UTC day, `audit_YYYY-MM-DD.log` in
  `AUDIT_LOG_DIR` (default: the game's `server/logs`), mode 0600. See `auditing.filesink`.
- `to_syslog`: one JSON record per syslog message (RFC 5424), to the local syslog or to a remote
  rsyslog/syslog-ng over UDP or TCP, as `AUDIT_SYSLOG` says. See `auditing.syslog`.

As the pipeline's output, both add a hash chain and seals to every record (`auditing.chain`,
`AUDIT_CHAIN`), and the file output applies the retention rules (`auditing.retention`).

Both are also plain callables taking one event dict, like the contrib's functions, for code that calls
them directly. A custom callback is any callable taking one dict:

    def to_my_store(event):
        event.pop("objects", None)    # live Evennia objects: read them, don't store them
        my_store.append(event)

It runs on the audit writer thread (never the game's), in order, one event at a time.
"""

import os
import threading

from . import conf
from .filesink import FileSink
from .pipeline import serialize


class BuiltinOutput:
    """A built-in sink as the pipeline sees it (`make_sink`) and as a one-dict callable.

    Args:
        name (str): for messages.
        factory (callable): `factory(config)` returns a `sinkbase.Sink`.
    """

    def __init__(self, name, factory):
        self.__name__ = self.__qualname__ = name
        self.__module__ = __name__
        self.factory = factory
        self._direct = None
        self._lock = threading.Lock()

    def make_sink(self, config):
        """A new sink for the pipeline's writer thread, chained and sealed (`auditing.chain`).

        Only the pipeline's sink is chained: it is the one stream of the trail. Direct calls
        (`__call__`) write plain records.
        """
        return _with_trail_guards(self.factory(config), config, self.__name__)

    def __call__(self, event):
        """Write one event now (direct use, outside the pipeline)."""
        event = dict(event)
        objects = event.pop("objects", None) or {}
        when = objects.get("time")
        with self._lock:
            if self._direct is None:
                self._direct = self.factory(conf.get())
            times = [when.timestamp()] if when is not None else None
            self._direct.write([serialize(event)], times)
            self._direct.flush()

    def __repr__(self):
        return f"auditing.outputs.{self.__name__}"


def _with_trail_guards(sink, config, name):
    """Wrap a built-in sink in `ChainingSink` (hash chain, seals; retention for the file sink)."""
    from .chain import STATE_NAME, ChainingSink
    from .retention import Retention

    trail_dir = getattr(sink, "directory", None)
    retention = Retention(trail_dir, config.retention_days, config.compress_after_days) if trail_dir else None
    if not config.chain and not retention:
        return sink
    # A file trail holds its own head; a syslog output keeps it in a state file in AUDIT_LOG_DIR.
    state_path = None if trail_dir or not config.chain else os.path.join(config.log_dir, STATE_NAME.format(name))
    return ChainingSink(
        sink,
        state_path=state_path,
        key_path=config.seal_key_file if config.chain else None,
        seal_interval=config.seal_interval,
        chain=config.chain,
        trail_dir=trail_dir,
        on_new_day=retention or None,
    )


def _file_sink(config):
    return FileSink(config.log_dir, max_bytes=config.file_max_bytes)


def _syslog_sink(config):
    from .syslog import syslog_sink

    return syslog_sink(**config.syslog)


to_file = BuiltinOutput("to_file", _file_sink)
to_syslog = BuiltinOutput("to_syslog", _syslog_sink)

__all__ = ["to_file", "to_syslog", "FileSink", "BuiltinOutput"]
