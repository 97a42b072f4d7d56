"""Fixtures for the whole suite, in sections; add yours in a section of its own below."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from broker_support import LocalRabbitNode, TcpProxy, broker_answers, local_node

log = structlog.get_logger(__name__)

# ==================================================================================================
# Broker: a RabbitMQ for the suite, a private node for tests that restart it, isolated domains.
# ==================================================================================================


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """URL of a RabbitMQ that answers: KARABO_BROKER, else the default local one, else a private node.

    Tests share this broker, so they must not stop or reconfigure it; each uses its own ``domain``.
    """
    url = os.environ.get("KARABO_BROKER", local_node.DEFAULT_URL)
    if broker_answers(url):
        yield url
        return
    log.warning("no broker answers; starting a private node for this session", url=url)
    node = LocalRabbitNode()
    node.start()
    try:
        yield node.url
    finally:
        node.cleanup()


@pytest.fixture(scope="session")
def private_broker() -> Iterator[LocalRabbitNode]:
    """A RabbitMQ node of this session's own, for tests that stop, restart or reconfigure a broker.

    Started on first use (it costs several seconds) and shared by such tests; a test that stops it
    must start it again before it ends. Offers ``url``, ``restart()``, ``stop_app()``,
    ``start_app()`` and ``ctl(...)``.
    """
    node = LocalRabbitNode()
    node.start()
    try:
        yield node
    finally:
        node.cleanup()


@pytest.fixture
def domain() -> str:
    """A domain name of this test's own, so that tests sharing a broker never see each other's traffic."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def tcp_proxy(broker_url: str) -> AsyncIterator[TcpProxy]:
    """A started TcpProxy to ``broker_url``; connect to ``tcp_proxy.url(broker_url)``, then cut it."""
    async with TcpProxy.to_url(broker_url) as proxy:
        yield proxy
