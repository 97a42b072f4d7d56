"""Outputs of this process by ``instance:channel``, so an input here gets items handed over as objects.

Also the two small interfaces the in-process path needs, so output and input modules need not
import each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ..errors import PipelineError
from .policies import DataDistribution, ItemMeta, OnSlowness


class LocalReceiver(Protocol):
    """The input side of an in-process connection; the output calls these."""

    def deliver(self, data: Mapping[str, Any], meta: ItemMeta) -> None: ...

    def deliver_eos(self) -> None: ...

    def output_closed(self) -> None: ...


class LocalSubscription(Protocol):
    """The output side of an in-process connection; the input calls these."""

    def grant(self, credits: int) -> None: ...

    def detach(self) -> None: ...


class LocalOutput(Protocol):
    def attach_local(
        self,
        input_id: str,
        distribution: DataDistribution,
        on_slowness: OnSlowness,
        max_queue_length: int,
        receiver: LocalReceiver,
    ) -> LocalSubscription: ...


_outputs: dict[str, LocalOutput] = {}


def register(channel_id: str, output: LocalOutput) -> None:
    if channel_id in _outputs and _outputs[channel_id] is not output:
        raise PipelineError(f"an output {channel_id!r} is already running in this process")
    _outputs[channel_id] = output


def unregister(channel_id: str, output: LocalOutput) -> None:
    if _outputs.get(channel_id) is output:
        del _outputs[channel_id]


def lookup(channel_id: str) -> LocalOutput | None:
    return _outputs.get(channel_id)
