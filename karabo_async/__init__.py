"""karabo-async: an asyncio control system for large scientific facilities, over RabbitMQ.

Everything a device, macro or client author needs is importable from here; the submodules are the
framework's own business.
"""

from __future__ import annotations

from .errors import (
    BrokerUnavailable,
    DecodeError,
    EncodeError,
    InstanceIdInUse,
    InvalidInstanceId,
    KaraboError,
    NoSuchInstance,
    NoSuchSlot,
    RemoteError,
    RequestTimeout,
)

# --- public exports (add yours below, one import per line group) ---
from .errors import ConfigurationError, IllegalTransition, ReconfigurationError, SchemaError
from .states import AccessLevel, AlarmCondition, State
from .fsm import BoundStateMachine, StateChange, StateMachine, Transition
from .properties import Float32, Float64, Image, Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64
from .schema import Configurable, Node, Property, Schema, SlotSpec, schema_of, slot
from .signalslot import SignalSlotable
from .topology import Topology, TopologyEvent
from .hash import Hash as Hash
from .timestamp import Timestamp as Timestamp

__version__ = "0.1.0"
