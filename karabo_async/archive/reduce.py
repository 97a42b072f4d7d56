"""Reducing a long history to a plottable number of points, the part both backends share.

The range from the first to the last change is cut into ``max_points // 4`` equal time buckets; the
database keeps, per bucket, the rows holding the first, smallest, largest and last value (min and max
exist for numbers only, so other values keep first and last). A plot of the result shows every spike
and every step that the full data shows, which averaging would hide. The SQL lives in the backends;
this module holds the arithmetic and the merging of their rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

POINTS_PER_BUCKET: Final = 4
"""A bucket keeps at most its first, min, max and last rows."""

# (t_ns, train_id, kind, num, val) as read back from ``changes``.
StoredPoint = tuple[int, int, int, float | None, bytes | None]


def bucket_width(first: int, last: int, max_points: int) -> int:
    """Bucket width in ns so that ``(t - first) // width`` runs over ``max_points // 4`` buckets at most."""
    buckets = max(1, max_points // POINTS_PER_BUCKET)
    return (last - first) // buckets + 1


def merge_bucket_rows(rows: Iterable[Any]) -> tuple[list[StoredPoint], int]:
    """Rows ``(bucket, bucket count, row id, t, train id, kind, num, val)`` from a reduction query,
    up to four per bucket: each row once (a first row may also be the min) in time order, and the
    number of changes the buckets stand for."""
    points: dict[Any, StoredPoint] = {}
    counts: dict[int, int] = {}
    for bucket, count, row_id, t, tid, kind, num, val in rows:
        counts[bucket] = count
        points.setdefault(row_id, (t, tid, kind, num, val))
    return sorted(points.values(), key=lambda p: p[0]), sum(counts.values())
