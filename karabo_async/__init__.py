"""karabo-async: an asyncio control system for large scientific facilities, over RabbitMQ.

Everything a device, macro or client author needs is importable from here; the submodules are the
framework's own business.
"""

from __future__ import annotations

# --- public exports (add yours below, one import per line group) ---
from .channels import ChannelMeta as ChannelMeta
from .channels import InputChannel as InputChannel
from .channels import OutputChannel as OutputChannel
from .client import Client as Client
from .client import connect as connect
from .client import connect_device as connect_device
from .client import disconnect_device as disconnect_device
from .client import execute as execute
from .client import get_class_schema as get_class_schema
from .client import get_classes as get_classes
from .client import get_configuration as get_configuration
from .client import get_device as get_device
from .client import get_devices as get_devices
from .client import get_schema as get_schema
from .client import get_servers as get_servers
from .client import get_topology as get_topology
from .client import instantiate as instantiate
from .client import lock as lock
from .client import run as run
from .client import set_no_wait as set_no_wait
from .client import set_wait as set_wait
from .client import shutdown as shutdown
from .client import wait_until as wait_until
from .client import wait_until_new as wait_until_new
from .device import Device as Device
from .device import NodeView as NodeView
from .device import TrainClock as TrainClock
from .errors import ArchiveError as ArchiveError
from .errors import ArchiveTypeError as ArchiveTypeError
from .errors import ArchiveUnavailable as ArchiveUnavailable
from .errors import ArchiveValueError as ArchiveValueError
from .errors import BeforeDeviceExisted as BeforeDeviceExisted
from .errors import (
    BrokerUnavailable as BrokerUnavailable,
)
from .errors import (
    ConfigurationError as ConfigurationError,
)
from .errors import ConfigurationExists as ConfigurationExists
from .errors import (
    DecodeError as DecodeError,
)
from .errors import (
    DeviceGone as DeviceGone,
)
from .errors import (
    DeviceInitializationError as DeviceInitializationError,
)
from .errors import (
    DeviceLocked as DeviceLocked,
)
from .errors import (
    EncodeError as EncodeError,
)
from .errors import (
    IllegalTransition as IllegalTransition,
)
from .errors import (
    InstanceIdInUse as InstanceIdInUse,
)
from .errors import (
    InvalidInstanceId as InvalidInstanceId,
)
from .errors import InvalidTimeRange as InvalidTimeRange
from .errors import (
    KaraboError as KaraboError,
)
from .errors import (
    NoSuchInstance as NoSuchInstance,
)
from .errors import (
    NoSuchSlot as NoSuchSlot,
)
from .errors import (
    PipelineError as PipelineError,
)
from .errors import (
    PoolExhausted as PoolExhausted,
)
from .errors import (
    ReconfigurationError as ReconfigurationError,
)
from .errors import (
    RemoteError as RemoteError,
)
from .errors import (
    RequestTimeout as RequestTimeout,
)
from .errors import (
    SchemaError as SchemaError,
)
from .errors import ServiceNotFound as ServiceNotFound
from .errors import (
    ShmFull as ShmFull,
)
from .errors import (
    SlotRefused as SlotRefused,
)
from .errors import UnknownConfiguration as UnknownConfiguration
from .errors import UnknownDevice as UnknownDevice
from .errors import UnknownProperty as UnknownProperty
from .fsm import (
    BoundStateMachine as BoundStateMachine,
)
from .fsm import (
    StateChange as StateChange,
)
from .fsm import (
    StateMachine as StateMachine,
)
from .fsm import (
    Transition as Transition,
)
from .hash import Hash as Hash
from .macro import Macro as Macro
from .macro import MacroServer as MacroServer
from .properties import (
    Float32 as Float32,
)
from .properties import (
    Float64 as Float64,
)
from .properties import (
    Image as Image,
)
from .properties import (
    Int8 as Int8,
)
from .properties import (
    Int16 as Int16,
)
from .properties import (
    Int32 as Int32,
)
from .properties import (
    Int64 as Int64,
)
from .properties import (
    UInt8 as UInt8,
)
from .properties import (
    UInt16 as UInt16,
)
from .properties import (
    UInt32 as UInt32,
)
from .properties import (
    UInt64 as UInt64,
)
from .proxy import NodeProxy as NodeProxy
from .proxy import Proxy as Proxy
from .schema import (
    Configurable as Configurable,
)
from .schema import (
    Node as Node,
)
from .schema import (
    Property as Property,
)
from .schema import (
    Schema as Schema,
)
from .schema import (
    SlotSpec as SlotSpec,
)
from .schema import (
    schema_of as schema_of,
)
from .schema import (
    slot as slot,
)
from .server import DeviceServer as DeviceServer
from .server import UnknownClass as UnknownClass
from .services.api import ApplyResult as ApplyResult
from .services.api import PropertyHistory as PropertyHistory
from .services.api import apply_configuration as apply_configuration
from .services.api import get_configuration_from_past as get_configuration_from_past
from .services.api import get_property_history as get_property_history
from .services.api import get_saved_configuration as get_saved_configuration
from .services.api import get_schema_from_past as get_schema_from_past
from .services.api import list_configurations as list_configurations
from .services.api import save_configuration as save_configuration
from .signalslot import SignalSlotable as SignalSlotable
from .states import (
    AccessLevel as AccessLevel,
)
from .states import (
    AlarmCondition as AlarmCondition,
)
from .states import (
    State as State,
)
from .timestamp import Timestamp as Timestamp
from .topology import Topology as Topology
from .topology import TopologyEvent as TopologyEvent
from .values import KaraboValue as KaraboValue
from .values import unwrap as unwrap

__version__ = "0.1.0"
