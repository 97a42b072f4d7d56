"""Storage of the data logger and configuration manager: property history, schemas, instance events
and named configurations, in SQLite (embedded default) or PostgreSQL.

>>> store = await open_store("sqlite:///var/lib/karabo/archive.db")   # doctest: +SKIP
>>> await store.write_changes([Change("motor/1", "position", 1.5, Timestamp.now())])   # doctest: +SKIP
>>> history = await store.property_history("motor/1", "position", since="2024-05-01T00:00")   # doctest: +SKIP
"""

from __future__ import annotations

from .migrations import LATEST_VERSION
from .reduce import POINTS_PER_BUCKET
from .store import (
    ArchiveStore,
    Change,
    ConfigurationAt,
    ConfigurationInfo,
    Event,
    History,
    SavedConfiguration,
    open_store,
    redact_url,
)
from .values import LARGE_VALUE_BYTES, ArrayRef
from .writer import BufferedWriter, WriterState

__all__ = [
    "LARGE_VALUE_BYTES",
    "LATEST_VERSION",
    "POINTS_PER_BUCKET",
    "ArchiveStore",
    "ArrayRef",
    "BufferedWriter",
    "Change",
    "ConfigurationAt",
    "ConfigurationInfo",
    "Event",
    "History",
    "SavedConfiguration",
    "WriterState",
    "open_store",
    "redact_url",
]
