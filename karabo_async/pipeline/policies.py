"""The words a pipeline channel is configured with, the item metadata, and their validation.

Kept apart from the endpoints so the device layer can build its schema (options, defaults) from the
same literals the engine checks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from ..errors import DecodeError, PipelineError
from ..timestamp import Timestamp

DataDistribution = Literal["copy", "shared"]
"""``copy``: this input gets every item. ``shared``: each item goes to exactly one shared input."""

OnSlowness = Literal["drop", "queue_drop", "wait"]
"""What the output does for a copy input that has no credit left.

``drop``: the newest item replaces the one waiting; ``queue_drop``: up to ``max_queue_length`` items
wait and the oldest is dropped beyond that; ``wait``: the writer waits (back-pressure).
"""

NoSharedReady = Literal["drop", "queue", "wait"]
"""What the output does with an item for its shared inputs when none of them has credit."""

Transport = Literal["auto", "local", "shm", "tcp"]
"""``auto`` picks local (same process), else shm (same host), else tcp; the others force one path."""

DATA_DISTRIBUTIONS: Final = get_args(DataDistribution)
ON_SLOWNESS: Final = get_args(OnSlowness)
NO_SHARED_READY: Final = get_args(NoSharedReady)
TRANSPORTS: Final = get_args(Transport)

SHM_THRESHOLD: Final = 64 * 1024
"""Arrays from this size travel through shared memory; below it a socket copy is faster (measured)."""


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming the setting and the options."""
    if value not in choices:
        raise PipelineError(f"{what} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_positive(what: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PipelineError(f"{what} must be a positive integer; got {value!r}")
    return value


def check_channel_id(channel_id: str) -> tuple[str, str]:
    """Split ``"instanceId:channelName"``; both parts must be non-empty."""
    instance, sep, name = channel_id.rpartition(":")
    if not sep or not instance or not name:
        raise PipelineError(f"channel id must look like 'instanceId:channelName'; got {channel_id!r}")
    return instance, name


@dataclass(frozen=True, slots=True)
class ItemMeta:
    """What travels beside each item: who produced it, when, for which train.

    ``timestamp`` is seconds since the epoch or a :class:`Timestamp` (kept exact on the wire as
    ``[seconds, attoseconds]``).
    """

    source: str
    timestamp: float | Timestamp = field(default_factory=time.time)
    train_id: int = 0

    def to_wire(self) -> list[Any]:
        t = self.timestamp
        return [self.source, [t.seconds, t.fraction] if isinstance(t, Timestamp) else t, self.train_id]

    @classmethod
    def from_wire(cls, value: Any) -> ItemMeta:
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not isinstance(value[0], str)
            or not isinstance(value[1], int | float | list)
            or not isinstance(value[2], int)
        ):
            raise DecodeError(f"item metadata must be [source, timestamp, train_id]; got {value!r}")
        t = value[1]
        if isinstance(t, list):
            if len(t) != 2 or not all(isinstance(x, int) for x in t):
                raise DecodeError(f"item timestamp must be [seconds, attoseconds]; got {t!r}")
            try:
                return cls(value[0], Timestamp(t[0], t[1], value[2]), value[2])
            except (ValueError, TypeError) as exc:
                raise DecodeError(f"bad item timestamp {t!r}: {exc}") from exc
        return cls(value[0], float(t), value[2])
