"""The broker tooling: private RabbitMQ nodes, the deployment definitions, `ensure`, the TCP proxy."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator

import aio_pika
import pytest
from broker_support import (
    LOCAL_NODE_SCRIPT,
    REPO_ROOT,
    LocalRabbitNode,
    TcpProxy,
    broker_answers,
    close_watch,
    local_node,
    wait_for,
    with_port,
)


async def round_trip(url: str, queue_name: str, body: bytes) -> bytes:
    """Declare ``queue_name``, publish ``body`` to it and get it back, on a fresh connection."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, auto_delete=True)
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue_name)
        message = await queue.get(timeout=5, fail=True)
        assert message is not None
        await message.ack()
        return message.body


# --- readiness probe -------------------------------------------------------------------------------


def test_broker_answers_is_true_for_the_suite_broker(broker_url: str) -> None:
    assert broker_answers(broker_url)


def test_broker_answers_is_false_where_nothing_listens() -> None:
    assert not broker_answers(f"amqp://guest:guest@127.0.0.1:{local_node.free_port()}/", timeout=1)


def test_broker_answers_is_false_for_a_listener_that_is_not_amqp() -> None:
    # A port that accepts and answers something else must not count as a broker.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer_http() -> None:
            peer, _ = server.accept()
            with peer:
                peer.recv(8)
                peer.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer_http)
        thread.start()
        assert not broker_answers(f"amqp://127.0.0.1:{port}/", timeout=2)
        thread.join(5)


def test_broker_url_must_be_amqp() -> None:
    with pytest.raises(ValueError, match="must start with amqp://"):
        broker_answers("http://127.0.0.1:15672/")


def test_with_port_keeps_credentials_and_vhost() -> None:
    url = with_port("amqp://karabo:secret@broker.example:5672/karabo?heartbeat=5", 1234)
    assert url == "amqp://karabo:secret@127.0.0.1:1234/karabo?heartbeat=5"


# --- the suite's broker ----------------------------------------------------------------------------


async def test_suite_broker_carries_a_message(broker_url: str, domain: str) -> None:
    assert await round_trip(broker_url, f"{domain}.instance.probe", b"hello") == b"hello"


def test_domains_differ_between_tests(domain: str) -> None:
    assert domain.startswith("t_") and "." not in domain


# --- a private node --------------------------------------------------------------------------------


@pytest.mark.slow
async def test_private_node_carries_a_message(private_broker: LocalRabbitNode, domain: str) -> None:
    assert private_broker.running
    assert private_broker.url.startswith("amqp://guest:guest@127.0.0.1:")
    assert await round_trip(private_broker.url, f"{domain}.instance.probe", b"private") == b"private"


@pytest.mark.slow
async def test_restart_keeps_port_and_data(private_broker: LocalRabbitNode, domain: str) -> None:
    url_before = private_broker.url
    queue_name = f"{domain}.durable"
    connection = await aio_pika.connect(url_before)
    channel = await connection.channel()
    await channel.declare_queue(queue_name, durable=True)
    await channel.default_exchange.publish(
        aio_pika.Message(b"kept", delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue_name
    )

    closed = close_watch(connection)
    await asyncio.to_thread(private_broker.restart)

    await asyncio.wait_for(closed.wait(), 10)
    assert private_broker.url == url_before
    async with await aio_pika.connect(private_broker.url) as again:
        channel = await again.channel()
        queue = await channel.declare_queue(queue_name, durable=True, passive=True)
        message = await queue.get(timeout=5, fail=True)
        assert message is not None and message.body == b"kept"
        await message.ack()
        await queue.delete()


@pytest.mark.slow
async def test_stop_app_drops_clients_and_start_app_serves_again(private_broker: LocalRabbitNode) -> None:
    connection = await aio_pika.connect(private_broker.url)
    closed = close_watch(connection)
    await asyncio.to_thread(private_broker.stop_app)
    try:
        await asyncio.wait_for(closed.wait(), 10)
        assert not broker_answers(private_broker.url, timeout=1)
    finally:
        await asyncio.to_thread(private_broker.start_app)
    assert broker_answers(private_broker.url)


@pytest.mark.slow
async def test_deployment_definitions_load_and_bound_instance_queues(
    private_broker: LocalRabbitNode, domain: str
) -> None:
    # Importing adds the karabo vhost, users and policies; guest and other tests' state stay.
    definitions = REPO_ROOT / "broker" / "definitions.json"
    await asyncio.to_thread(private_broker.ctl, "import_definitions", str(definitions))

    karabo_url = f"amqp://karabo:karabo-change-me@127.0.0.1:{private_broker.amqp_port}/karabo"
    queue_name = f"{domain}.instance.motor1"
    async with await aio_pika.connect(karabo_url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(queue_name, auto_delete=True)
        listing = await asyncio.to_thread(
            private_broker.ctl, "list_queues", "-p", "karabo", "--formatter", "json", "name", "policy"
        )
        policies = {row["name"]: row["policy"] for row in json.loads(listing)}
        assert policies[queue_name] == "karabo-instance-queues"

    # The karabo user has no business in the default vhost: the broker refuses to open it.
    with pytest.raises(aio_pika.exceptions.AMQPError, match=r"Connection\.Close"):
        await aio_pika.connect(f"amqp://karabo:karabo-change-me@127.0.0.1:{private_broker.amqp_port}/%2F")
    # The admin password is the documented default too.
    admin_url = f"amqp://admin:karabo-admin-change-me@127.0.0.1:{private_broker.amqp_port}/karabo"
    async with await aio_pika.connect(admin_url):
        pass


@pytest.mark.slow
async def test_deployment_configuration_boots_without_guest() -> None:
    # The deployment's own rabbitmq.conf and plugins, with its ports moved off the system broker's.
    broker_dir = REPO_ROOT / "broker"
    moved = {
        "load_definitions": str(broker_dir / "definitions.json"),
        "listeners.tcp.default": None,  # LocalRabbitNode listens on 127.0.0.1:<free port>
        "management.tcp.port": str(local_node.free_port()),
        "prometheus.tcp.port": str(local_node.free_port()),
        "disk_free_limit.absolute": "50MB",
    }
    config = []
    for line in (broker_dir / "rabbitmq.conf").read_text().splitlines():
        key = line.partition("=")[0].strip()
        if key in moved:
            if moved[key] is not None:
                config.append(f"{key} = {moved[key]}")
        else:
            config.append(line)
    plugins = (broker_dir / "enabled_plugins").read_text().strip().strip("[].").split(",")
    node = LocalRabbitNode(plugins=plugins, extra_config=config)
    await asyncio.to_thread(node.start, 90)
    try:
        port = node.amqp_port
        async with await aio_pika.connect(f"amqp://karabo:karabo-change-me@127.0.0.1:{port}/karabo"):
            pass
        # Definitions loaded at boot: no default guest user, even from loopback.
        with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
            await aio_pika.connect(node.url)
    finally:
        await asyncio.to_thread(node.cleanup)


def test_definitions_bound_every_lane() -> None:
    definitions = json.loads((REPO_ROOT / "broker" / "definitions.json").read_text())
    vhosts = {vhost["name"] for vhost in definitions["vhosts"]}
    assert vhosts == {"/", "karabo"}
    for lane in ("instance", "heartbeats", "broadcast"):
        for vhost in vhosts:
            (policy,) = [
                p for p in definitions["policies"] if p["vhost"] == vhost and f"\\.{lane}\\." in p["pattern"]
            ]
            assert policy["definition"]["max-length"] > 0
            assert policy["definition"]["message-ttl"] > 0


# --- the TCP proxy ---------------------------------------------------------------------------------


@pytest.fixture
async def proxied_connection(
    tcp_proxy: TcpProxy, broker_url: str
) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(tcp_proxy.url(broker_url))
    yield connection
    await connection.close()


async def test_proxy_carries_traffic(tcp_proxy: TcpProxy, broker_url: str, domain: str) -> None:
    assert await round_trip(tcp_proxy.url(broker_url), f"{domain}.q", b"through") == b"through"
    assert tcp_proxy.connections_made == 1


async def test_proxy_cut_breaks_the_connection_and_restore_serves_again(
    tcp_proxy: TcpProxy, broker_url: str, proxied_connection: aio_pika.abc.AbstractConnection
) -> None:
    closed = close_watch(proxied_connection)
    await tcp_proxy.cut()
    await asyncio.wait_for(closed.wait(), 10)
    # While cut, the proxy refuses service instead of reaching the broker.
    with pytest.raises(ConnectionError):
        await aio_pika.connect(tcp_proxy.url(broker_url), timeout=5)

    tcp_proxy.restore()
    async with await aio_pika.connect(tcp_proxy.url(broker_url)) as connection:
        assert not connection.is_closed


async def test_robust_connection_comes_back_after_a_cut(
    tcp_proxy: TcpProxy, broker_url: str, domain: str
) -> None:
    connection = await aio_pika.connect_robust(tcp_proxy.url(broker_url), reconnect_interval=0.1)
    async with connection:
        reconnected = asyncio.Event()
        connection.reconnect_callbacks.add(lambda *_: reconnected.set())
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{domain}.robust", auto_delete=True)

        await tcp_proxy.cut()
        tcp_proxy.restore()
        await asyncio.wait_for(reconnected.wait(), 15)

        assert tcp_proxy.connections_made >= 2
        await channel.default_exchange.publish(aio_pika.Message(b"again"), routing_key=queue.name)
        message = await queue.get(timeout=5, fail=True)
        assert message is not None and message.body == b"again"


# --- the command line ------------------------------------------------------------------------------


def test_ensure_returns_at_once_when_a_broker_answers(broker_url: str) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(LOCAL_NODE_SCRIPT), "ensure", "--url", broker_url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"broker answers at {broker_url}" in result.stdout
    # Python's start-up plus one probe; starting a node would take several seconds.
    assert time.monotonic() - started < 5


@pytest.mark.slow
async def test_ensure_starts_a_detached_node_where_none_answers(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    port = local_node.free_port()
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(LOCAL_NODE_SCRIPT), "ensure", "--url", url],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    directory = local_node._default_dir(port)
    try:
        assert result.returncode == 0, result.stderr
        # It took the URL's own port, so whatever uses that URL finds it.
        assert result.stdout.strip().splitlines()[-1] == url
        assert broker_answers(url)
    finally:
        stopped = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(LOCAL_NODE_SCRIPT), "stop", "--dir", str(directory)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert stopped.returncode == 0, stopped.stderr
    await wait_for(
        lambda: not broker_answers(url, timeout=0.5), seconds=30, what=f"the node on {port} to stop"
    )
    # The runner removes its pid file once the node has stopped.
    await wait_for(lambda: not (directory / "runner.pid").exists(), seconds=30, what="the runner to end")
    shutil.rmtree(directory)


def test_cli_needs_a_command() -> None:
    result = subprocess.run(
        [sys.executable, str(LOCAL_NODE_SCRIPT)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "start" in result.stderr and "ensure" in result.stderr


def test_extra_config_replaces_the_defaults_it_names() -> None:
    merged = local_node._merge_config(
        ["loopback_users = none", "log.console = false", "listeners.tcp.1 = 127.0.0.1:1"],
        ["# a comment", "loopback_users.guest = true", "log.console = true", ""],
    )
    assert merged == ["listeners.tcp.1 = 127.0.0.1:1", "loopback_users.guest = true", "log.console = true"]
