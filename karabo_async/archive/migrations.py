"""The archive's database schema as an ordered list of versioned migrations.

The version a database is at lives in the one-row table ``archive_version``. Opening a store applies
every migration above that version in order, in a transaction together with the version bump, so an
interrupted upgrade leaves the database at a version it really has. Statements use ``IF NOT EXISTS`` so that a
migration that is run again changes nothing. Never edit a released migration: append a new one.

Layout (both backends): ``devices`` and ``properties`` map names to small integer keys, so that the
big ``changes`` table holds only numbers and blobs; times are integer nanoseconds since the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ArchiveValueError, ArchiveVersionError

VERSION_TABLE = "archive_version"


@dataclass(frozen=True)
class Migration:
    """One step of the schema: the statements that take a database from ``version - 1`` to ``version``."""

    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "property changes, device schemas and instance events",
        sqlite=(
            "CREATE TABLE IF NOT EXISTS devices (id INTEGER PRIMARY KEY, device_id TEXT NOT NULL UNIQUE,"
            " first_t INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS properties (id INTEGER PRIMARY KEY,"
            " device INTEGER NOT NULL REFERENCES devices(id), path TEXT NOT NULL,"
            " first_t INTEGER NOT NULL, UNIQUE (device, path))",
            "CREATE TABLE IF NOT EXISTS changes (property INTEGER NOT NULL, t INTEGER NOT NULL,"
            " train_id INTEGER NOT NULL, kind INTEGER NOT NULL, num REAL, val BLOB, alarm TEXT)",
            "CREATE INDEX IF NOT EXISTS changes_property_t ON changes (property, t)",
            "CREATE TABLE IF NOT EXISTS schemas (device INTEGER NOT NULL REFERENCES devices(id),"
            " t INTEGER NOT NULL, train_id INTEGER NOT NULL, doc BLOB NOT NULL)",
            "CREATE INDEX IF NOT EXISTS schemas_device_t ON schemas (device, t)",
            "CREATE TABLE IF NOT EXISTS events (device INTEGER NOT NULL REFERENCES devices(id),"
            " t INTEGER NOT NULL, train_id INTEGER NOT NULL, kind TEXT NOT NULL, info BLOB)",
            "CREATE INDEX IF NOT EXISTS events_device_t ON events (device, t)",
        ),
        postgres=(
            "CREATE TABLE IF NOT EXISTS devices (id serial PRIMARY KEY, device_id text NOT NULL UNIQUE,"
            " first_t bigint NOT NULL)",
            "CREATE TABLE IF NOT EXISTS properties (id serial PRIMARY KEY,"
            " device integer NOT NULL REFERENCES devices(id), path text NOT NULL,"
            " first_t bigint NOT NULL, UNIQUE (device, path))",
            # No foreign key on changes.property: it would cost a lookup per row during COPY, and the
            # store only ever writes keys it has just read from ``properties``.
            "CREATE TABLE IF NOT EXISTS changes (property integer NOT NULL, t bigint NOT NULL,"
            " train_id bigint NOT NULL, kind smallint NOT NULL, num double precision, val bytea, alarm text)",
            # INCLUDE (num): the reduction finds each bucket's min/max rows from the index alone.
            "CREATE INDEX IF NOT EXISTS changes_property_t ON changes (property, t) INCLUDE (num)",
            "CREATE TABLE IF NOT EXISTS schemas (device integer NOT NULL REFERENCES devices(id),"
            " t bigint NOT NULL, train_id bigint NOT NULL, doc bytea NOT NULL)",
            "CREATE INDEX IF NOT EXISTS schemas_device_t ON schemas (device, t)",
            "CREATE TABLE IF NOT EXISTS events (device integer NOT NULL REFERENCES devices(id),"
            " t bigint NOT NULL, train_id bigint NOT NULL, kind text NOT NULL, info bytea)",
            "CREATE INDEX IF NOT EXISTS events_device_t ON events (device, t)",
        ),
    ),
    Migration(
        2,
        "named configurations saved by the configuration manager",
        sqlite=(
            "CREATE TABLE IF NOT EXISTS configurations (device_id TEXT NOT NULL, name TEXT NOT NULL,"
            " saved_t INTEGER NOT NULL, description TEXT NOT NULL, user_name TEXT NOT NULL,"
            " config BLOB NOT NULL, PRIMARY KEY (device_id, name))",
        ),
        postgres=(
            "CREATE TABLE IF NOT EXISTS configurations (device_id text NOT NULL, name text NOT NULL,"
            " saved_t bigint NOT NULL, description text NOT NULL, user_name text NOT NULL,"
            " config bytea NOT NULL, PRIMARY KEY (device_id, name))",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def pending(current: int, target: int | None = None) -> list[Migration]:
    """The migrations to apply, in order, to bring a database at ``current`` to ``target`` (or latest).

    Raises ArchiveVersionError for a database newer than this code knows, rather than write into a
    layout it does not understand.
    """
    goal = LATEST_VERSION if target is None else target
    if not 0 <= goal <= LATEST_VERSION:
        raise ArchiveValueError(f"no archive schema version {goal}: versions run from 0 to {LATEST_VERSION}")
    if current > LATEST_VERSION:
        raise ArchiveVersionError(
            f"the archive database is at schema version {current}, but this karabo_async knows versions"
            f" up to {LATEST_VERSION} only: upgrade karabo_async"
        )
    return [m for m in MIGRATIONS if current < m.version <= goal]
