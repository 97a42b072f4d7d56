"""Services built on devices: the data logger (property history, past configurations) and the
configuration manager (named configurations), with their client functions in :mod:`.api`.

The device classes live in :mod:`.datalogger` and :mod:`.confmanager` and are imported from there
(or offered to any server through the ``karabo_async.devices`` entry points).
"""

from __future__ import annotations

from .api import (
    ApplyResult,
    PropertyHistory,
    apply_configuration,
    get_configuration_from_past,
    get_property_history,
    get_saved_configuration,
    get_schema_from_past,
    list_configurations,
    save_configuration,
)

__all__ = [
    "ApplyResult",
    "PropertyHistory",
    "apply_configuration",
    "get_configuration_from_past",
    "get_property_history",
    "get_saved_configuration",
    "get_schema_from_past",
    "list_configurations",
    "save_configuration",
]
