"""A latency histogram in plain Python: a few counters updated where something is timed (the
log's writes and fsyncs, snapshots), read when metrics are scraped. No lock: an update is a few
list increments under the GIL, and a scrape that lands between two of them is off by one call
for one scrape."""

from __future__ import annotations

from bisect import bisect_left

# Seconds: 10 µs to 10 s (a write to the page cache, an fsync, a snapshot of gigabytes).
SECONDS_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
                   5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Timings:
    """Counts of observed durations per bucket (``bounds``, then +Inf), their sum and
    number."""

    def __init__(self, bounds: tuple[float, ...] = SECONDS_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """(upper bound, calls at or below it) per bucket, +Inf last: a Prometheus
        histogram's buckets."""
        out, total = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), list(self.counts), strict=True):
            total += n
            out.append((bound, float(total)))
        return out
