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
from .errors import (
    ConfigurationError as ConfigurationError,
    IllegalTransition as IllegalTransition,
    ReconfigurationError as ReconfigurationError,
    SchemaError as SchemaError,
)
from .states import (
    AccessLevel as AccessLevel,
    AlarmCondition as AlarmCondition,
    State as State,
)
from .fsm import (
    BoundStateMachine as BoundStateMachine,
    StateChange as StateChange,
    StateMachine as StateMachine,
    Transition as Transition,
)
from .properties import (
    Float32 as Float32,
    Float64 as Float64,
    Image as Image,
    Int8 as Int8,
    Int16 as Int16,
    Int32 as Int32,
    Int64 as Int64,
    UInt8 as UInt8,
    UInt16 as UInt16,
    UInt32 as UInt32,
    UInt64 as UInt64,
)
from .schema import (
    Configurable as Configurable,
    Node as Node,
    Property as Property,
    Schema as Schema,
    SlotSpec as SlotSpec,
    schema_of as schema_of,
    slot as slot,
)
from .signalslot import SignalSlotable
from .topology import Topology, TopologyEvent
from .hash import Hash as Hash
from .timestamp import Timestamp as Timestamp
from .errors import (
    PipelineError as PipelineError,
    PoolExhausted as PoolExhausted,
    ShmFull as ShmFull,
)

__version__ = "0.1.0"
