"""Broker transports: one interface, two implementations (RabbitMQ and in-process)."""

from .base import (
    ConnectionListener,
    Handler,
    QueueSpec,
    Transport,
    create_transport,
    default_broker,
    default_domain,
)

__all__ = [
    "ConnectionListener",
    "Handler",
    "QueueSpec",
    "Transport",
    "create_transport",
    "default_broker",
    "default_domain",
]
