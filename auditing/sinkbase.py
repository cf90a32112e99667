"""
What the writer thread expects of a built-in sink.

A sink turns serialised records (one JSON document each, as `bytes`, no trailing newline) into
durable output. The pipeline calls `write(records)` with a batch, in order, from its writer thread
only, then `flush()`. A sink that cannot deliver raises `SinkError`, saying how many records from the
start of the batch it did deliver; the pipeline keeps the rest, retries them, and counts what it has to
give up as lost (see `auditing.pipeline`). `close()` is called once, at shutdown. A sink may also
offer `take_losses()`, `stats()` and `limits` (see `Sink`).
"""


def report(level, message):
    """One line in Evennia's server log ("err", "warn" or "info"); stderr outside a server."""
    from . import hooks

    hooks.log(level, message)


class SinkError(Exception):
    """A sink could not deliver a batch.

    Args:
        cause (str): What went wrong, for the one log line the pipeline writes about it.
        delivered (int): Records from the start of the batch that did reach the sink.
        rejected (int): Records right after those that the sink can never take (too large for a
            datagram, say): the pipeline counts them lost instead of retrying them forever.
    """

    def __init__(self, cause, delivered=0, rejected=0):
        super().__init__(cause)
        self.cause = cause
        self.delivered = delivered
        self.rejected = rejected


class Sink:
    """Base class of built-in sinks (documentation of the interface; subclassing is optional)."""

    def write(self, records):
        """Deliver `records` (list of bytes) in order, or raise `SinkError`."""
        raise NotImplementedError

    def flush(self):
        """Push buffered records to the OS / the network."""

    def close(self):
        """Flush and release files or sockets."""
        self.flush()

    # Optional (the pipeline uses them when present; a wrapping sink should pass them on):
    #   take_losses() -> [(count, first_time, last_time, cause)]: records the sink found lost on its
    #       own (the file sink: a record cut by a crash), called by the writer thread at start.
    #   stats() -> dict: the sink's own counters, shown in `Pipeline.stats()["output_stats"]`.
    #   limits (str): what "delivered" cannot promise for this output, in `stats()["output_limits"]`.
