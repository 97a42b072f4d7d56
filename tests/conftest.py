"""Fixtures for the whole suite, in sections; add yours in a section of its own below."""

from __future__ import annotations

import asyncio
import os
import threading
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
def domain(request: pytest.FixtureRequest) -> Iterator[str]:
    """A domain name of this test's own, so that tests sharing a broker never see each other's traffic.

    Its exchanges are deleted afterwards, so that the shared broker does not collect them run after run.
    """
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    url = os.environ.get("KARABO_BROKER", local_node.DEFAULT_URL)
    if url.startswith("amqp") and broker_answers(url, timeout=0.5):
        threading.Thread(target=asyncio.run, args=(_delete_exchanges(url, name),)).start()


async def _delete_exchanges(url: str, domain: str) -> None:
    import aio_pika

    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception:
        return
    async with connection:
        for kind in ("slots", "signals", "broadcast", "replies", "heartbeats", "returns"):
            channel = await connection.channel()
            try:
                await channel.exchange_delete(f"{domain}.{kind}")
            except Exception as exc:  # already gone: nothing to clean
                log.debug("exchange not deleted", exchange=f"{domain}.{kind}", reason=str(exc))


@pytest.fixture
async def tcp_proxy(broker_url: str) -> AsyncIterator[TcpProxy]:
    """A started TcpProxy to ``broker_url``; connect to ``tcp_proxy.url(broker_url)``, then cut it."""
    async with TcpProxy.to_url(broker_url) as proxy:
        yield proxy
