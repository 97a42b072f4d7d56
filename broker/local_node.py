#!/usr/bin/env python3
"""Start a private RabbitMQ node on this machine, without Docker and without touching the system node.

The test suite imports this module (``LocalRabbitNode``) and ``make test``/``make demo`` run it as a
script (``ensure``), so the two always agree on how a node is started. It uses the standard library
only, so it also runs with a bare ``python3`` as a container's service command.

A private node gets a directory of its own: a HOME holding a private Erlang cookie, its data (mnesia),
logs, config and a unique node name. Every RabbitMQ variable is set for the node's process only; were
they set in the caller's environment, the system ``rabbitmqctl`` would start talking to the private
node instead of the system one.

Usage::

    python broker/local_node.py start [--port P] [--management-port P] [--dir D]   # foreground
    python broker/local_node.py ensure [--url URL]    # a broker answers at URL, or start one detached
    python broker/local_node.py stop --dir D          # stop a node that `ensure` started
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("karabo_async.broker.local_node")

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
AMQP_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
# A broker answers the protocol header with a Connection.Start method frame: type 1, channel 0.
CONNECTION_START_PREFIX = b"\x01\x00\x00"
RUNNER_PID_FILE = "runner.pid"


class BrokerNodeError(RuntimeError):
    """A private RabbitMQ node could not be installed, started or controlled.

    Defined here rather than in ``karabo_async.errors`` so this file needs nothing but the standard
    library.
    """


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def host_and_port(url: str) -> tuple[str, int]:
    """Host and port of an ``amqp://`` URL (port 5672 when the URL names none)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("amqp", "amqps"):
        raise ValueError(f"broker URL {url!r} must start with amqp:// or amqps://")
    return parsed.hostname or "127.0.0.1", parsed.port or (5671 if parsed.scheme == "amqps" else 5672)


def broker_answers(url: str, timeout: float = 2.0) -> bool:
    """True when an AMQP 0-9-1 broker answers at ``url`` within ``timeout`` seconds.

    Sends the protocol header and waits for the start of a Connection.Start frame: an open port alone
    is not enough, since a booting RabbitMQ (or another program) may accept connections first.
    """
    host, port = host_and_port(url)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(AMQP_PROTOCOL_HEADER)
            received = b""
            while len(received) < len(CONNECTION_START_PREFIX):
                chunk = sock.recv(64)
                if not chunk:
                    return False
                received += chunk
            return received.startswith(CONNECTION_START_PREFIX)
    except OSError:
        return False


def ensure_rabbitmq_installed() -> None:
    """Install Debian's rabbitmq-server when its programs are missing (needs root).

    The package's own service is kept from starting: it would take port 5672 and the node name of
    the system broker, which is not ours to own.
    """
    if (RABBITMQ_BIN / "rabbitmq-server").exists():
        return
    if os.geteuid() != 0:
        raise BrokerNodeError(
            f"{RABBITMQ_BIN / 'rabbitmq-server'} is missing; install it as root with "
            "`apt-get install rabbitmq-server`"
        )
    log.warning("rabbitmq-server is missing; installing Debian's package")
    policy = Path("/usr/sbin/policy-rc.d")
    placed_policy = not policy.exists()
    if placed_policy:
        # Exit status 101 tells invoke-rc.d that starting services is forbidden.
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "rabbitmq-server"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    except subprocess.CalledProcessError as exc:
        raise BrokerNodeError(f"installing rabbitmq-server failed: {exc}") from exc
    finally:
        if placed_policy:
            policy.unlink()


def _config_key(line: str) -> str:
    return line.partition("=")[0].strip()


def _merge_config(defaults: Iterable[str], extra: Iterable[str]) -> list[str]:
    """``defaults`` without the keys ``extra`` sets (``a`` also yields to ``a.b``), then ``extra``."""
    extra = [line for line in extra if line.strip() and not line.lstrip().startswith("#")]
    extra_keys = {_config_key(line) for line in extra}

    def overridden(key: str) -> bool:
        return any(other == key or other.startswith(key + ".") for other in extra_keys)

    return [line for line in defaults if not overridden(_config_key(line))] + extra


class LocalRabbitNode:
    """A RabbitMQ node of our own, in a directory of its own, listening on 127.0.0.1 only.

    ``base_dir`` keeps data between ``restart()`` calls (and between runs, when given); without it a
    temporary directory is made and removed on ``stop()``. Ports not given are picked free ones and
    stay the same for the node's life, so clients can reconnect after a restart. ``extra_config``
    lines (``key = value``) go into its rabbitmq.conf, replacing the defaults they name.

    Example::

        with LocalRabbitNode() as node:
            connection = await aio_pika.connect_robust(node.url)
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        amqp_port: int | None = None,
        management_port: int | None = None,
        plugins: Iterable[str] = (),
        extra_config: Iterable[str] = (),
    ) -> None:
        self._own_dir = base_dir is None
        # Made on start(), so that constructing a node leaves nothing behind.
        default_dir = Path(tempfile.gettempdir()) / f"karabo-rmq-{secrets.token_hex(4)}"
        self.base_dir = Path(base_dir or default_dir).resolve()
        self.amqp_port = amqp_port or free_port()
        self.dist_port = free_port()
        self.plugins = tuple(plugins)
        self.extra_config = tuple(extra_config)
        if management_port is not None and "rabbitmq_management" not in self.plugins:
            self.plugins += ("rabbitmq_management",)
        if "rabbitmq_management" in self.plugins and management_port is None:
            management_port = free_port()
        self.management_port = management_port
        # Derived from the directory so that a node started again in the same directory finds its
        # own data (mnesia keys its files by node name).
        suffix = "".join(c if c.isalnum() else "_" for c in self.base_dir.name)
        self.nodename = f"{suffix}@localhost"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: int | None = None

    # --- addresses -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def management_url(self) -> str | None:
        return None if self.management_port is None else f"http://127.0.0.1:{self.management_port}/"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- files and environment -------------------------------------------------------------------

    @property
    def home(self) -> Path:
        return self.base_dir / "home"

    @property
    def server_log(self) -> Path:
        return self.base_dir / "server-output.log"

    def _write_files(self) -> None:
        for sub in ("home", "mnesia", "log", "etc"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text("".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(24)))
        # Erlang refuses a cookie that others can read.
        cookie.chmod(0o600)
        etc = self.base_dir / "etc"
        conf = [
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}",
            # guest may connect from anywhere: the node listens on loopback only.
            "loopback_users = none",
            "disk_free_limit.absolute = 50MB",
            "log.console = false",
            "log.file.level = info",
        ]
        if self.management_port is not None:
            conf += [f"management.tcp.port = {self.management_port}", "management.tcp.ip = 127.0.0.1"]
        (etc / "rabbitmq.conf").write_text("\n".join(_merge_config(conf, self.extra_config)) + "\n")
        (etc / "advanced.config").write_text("[].\n")
        (etc / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        # An empty env file, else /etc/rabbitmq/rabbitmq-env.conf (the system node's) is read.
        (etc / "rabbitmq-env.conf").write_text("")

    def _environment(self) -> dict[str, str]:
        """The caller's environment minus its RabbitMQ/Erlang settings, plus this node's."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_")) and key != "NOTIFY_SOCKET"
        }
        etc = self.base_dir / "etc"
        env.update(
            HOME=str(self.home),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(etc / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(etc / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(etc / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(etc / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.base_dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base_dir / "log"),
            RABBITMQ_PID_FILE=str(self.base_dir / "rabbitmq.pid"),
            # Else the distribution port listens on every interface.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            # An epmd started on our behalf listens on loopback only too.
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    # --- life cycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start the node and return when it answers AMQP; raise BrokerNodeError otherwise."""
        if self.running:
            return
        ensure_rabbitmq_installed()
        self._write_files()
        with self.server_log.open("ab") as output:
            self._process = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=self._environment(),
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for the caller must not stop the node behind its back.
                start_new_session=True,
            )
        self._wait_until_answering(timeout)
        log.info("RabbitMQ node %s answers at %s", self.nodename, self.url)

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not broker_answers(self.url, timeout=1.0):
            assert self._process is not None
            if self._process.poll() is not None:
                raise BrokerNodeError(
                    f"RabbitMQ node {self.nodename} exited with status {self._process.returncode} "
                    f"before answering on port {self.amqp_port}:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerNodeError(
                    f"RabbitMQ node {self.nodename} did not answer on port {self.amqp_port} "
                    f"within {timeout:.0f} s:\n{self._log_tail()}"
                )
            time.sleep(0.2)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.server_log.read_text(errors="replace")
        except OSError as exc:
            return f"(no output: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node gracefully (SIGTERM); SIGKILL it if it takes longer than ``timeout``."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Stop the node at once, as a crash would."""
        self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning(
                "RabbitMQ node %s ignored %s for %.0f s; killing it", self.nodename, sig.name, timeout
            )
            process.kill()
            process.wait()

    def restart(self, timeout: float = 60.0) -> None:
        """Stop and start again on the same ports and data directory, to prove clients reconnect."""
        self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        """Stop the node and remove its directory when this object made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # --- rabbitmqctl -----------------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl`` against this node (with its private cookie); return its output."""
        env = self._environment()
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.nodename, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise BrokerNodeError(
                f"rabbitmqctl {' '.join(args)} on {self.nodename} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout

    def stop_app(self) -> None:
        """Stop the RabbitMQ application but keep the Erlang VM: clients lose their connections."""
        self.ctl("stop_app")

    def start_app(self, timeout: float = 60.0) -> None:
        """Start the application again after ``stop_app`` and wait until AMQP answers."""
        self.ctl("start_app", timeout=timeout)
        self._wait_until_answering(timeout)

    # --- context manager -------------------------------------------------------------------------

    def __enter__(self) -> LocalRabbitNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.cleanup()


# --- command line ----------------------------------------------------------------------------------


def _default_dir(port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"karabo-async-broker-{port}"


def run_foreground(port: int | None, management_port: int | None, directory: str | None) -> int:
    """Run a node until SIGTERM or SIGINT, then stop it gracefully."""
    node = LocalRabbitNode(directory, amqp_port=port, management_port=management_port)
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: types.FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # Before the node answers: whoever sees it answer must also find out whom to stop.
    node.base_dir.mkdir(parents=True, exist_ok=True)
    (node.base_dir / RUNNER_PID_FILE).write_text(f"{os.getpid()}\n")
    try:
        node.start()
    except BaseException:
        (node.base_dir / RUNNER_PID_FILE).unlink(missing_ok=True)
        raise
    print(node.url, flush=True)
    if node.management_url:
        print(f"management console: {node.management_url}", flush=True)
    try:
        while not stop_requested.wait(1.0):
            if not node.running:
                log.error("RabbitMQ node %s exited by itself:\n%s", node.nodename, node._log_tail())
                return 1
    finally:
        node.cleanup()
        # Last, so that a missing pid file means the node has stopped.
        with contextlib.suppress(FileNotFoundError):
            (node.base_dir / RUNNER_PID_FILE).unlink()
    return 0


def ensure(url: str, timeout: float = 120.0) -> int:
    """Return at once when a broker answers at ``url``; else start a detached node and print its URL.

    The node takes the URL's port when that is on this machine and free, so that everything using
    the default URL (tests, the demo) finds it.
    """
    if broker_answers(url):
        print(f"broker answers at {url}", flush=True)
        return 0
    host, port = host_and_port(url)
    if host not in ("127.0.0.1", "localhost") or not port_is_free(port):
        port = free_port()
    management_port = 15672 if port_is_free(15672) else free_port()
    directory = _default_dir(port)
    directory.mkdir(parents=True, exist_ok=True)
    ensure_rabbitmq_installed()
    with (directory / "runner-output.log").open("ab") as output:
        subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "start",
                f"--port={port}",
                f"--management-port={management_port}",
                f"--dir={directory}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    node_url = f"amqp://guest:guest@127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while not broker_answers(node_url, timeout=1.0):
        if time.monotonic() > deadline:
            tail = (directory / "runner-output.log").read_text(errors="replace")[-3000:]
            print(f"no broker answered at {node_url} within {timeout:.0f} s:\n{tail}", file=sys.stderr)
            return 1
        time.sleep(0.3)
    print(f"started a private RabbitMQ node in {directory}", file=sys.stderr)
    print(f"management console: http://127.0.0.1:{management_port}/ (guest/guest)", file=sys.stderr)
    print(f"stop it with: python {Path(__file__).name} stop --dir {directory}", file=sys.stderr)
    print(node_url, flush=True)
    return 0


def stop_detached(directory: str) -> int:
    pid_file = Path(directory) / RUNNER_PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        print(f"no running node recorded in {pid_file}: {exc}", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGTERM)
    print(f"asked node runner {pid} to stop", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="run a private node in the foreground until SIGTERM/SIGINT")
    start.add_argument("--port", type=int, default=None, help="AMQP port (default: a free one)")
    start.add_argument("--management-port", type=int, default=None, help="enable the console on this port")
    start.add_argument("--dir", default=None, help="data directory (default: a temporary one)")
    ensure_cmd = commands.add_parser("ensure", help="make sure a broker answers, starting one if needed")
    ensure_cmd.add_argument(
        "--url", default=os.environ.get("KARABO_BROKER", DEFAULT_URL), help="broker URL to check"
    )
    stop = commands.add_parser("stop", help="stop a node started by `ensure` or `start --dir`")
    stop.add_argument("--dir", required=True, help="the node's directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "start":
            return run_foreground(args.port, args.management_port, args.dir)
        if args.command == "ensure":
            return ensure(args.url)
        return stop_detached(args.dir)
    except (BrokerNodeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
