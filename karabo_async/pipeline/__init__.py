"""Point-to-point data pipelines: output and input channels, in process, over shared memory, over TCP.

The device layer wraps :class:`OutputEndpoint` and :class:`InputEndpoint`; see docs/pipelines.md.
"""

from __future__ import annotations

from ..errors import PipelineError, PoolExhausted, ShmFull
from .input import InputEndpoint
from .monitor import cleanup_session, monitor_main
from .output import OutputEndpoint
from .policies import DataDistribution, ItemMeta, NoSharedReady, OnSlowness, Transport

__all__ = [
    "DataDistribution",
    "InputEndpoint",
    "ItemMeta",
    "NoSharedReady",
    "OnSlowness",
    "OutputEndpoint",
    "PipelineError",
    "PoolExhausted",
    "ShmFull",
    "Transport",
    "cleanup_session",
    "monitor_main",
]
