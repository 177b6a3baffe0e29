"""Start a private Mosquitto for the demo and the tests: free port, loopback, our limits.

The config mirrors the one shipped for production in what matters to delivery:
persistence on, a queue far above the default 1000 messages, and a larger in-flight
window so that a collector acknowledging in batches is not held at 20.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


def listens(proc: subprocess.Popen, port: int) -> bool | None:
    """Whether ``proc`` itself holds the socket listening on 127.0.0.1:``port`` (Linux's /proc);
    None where that cannot be told (no /proc, or another user's process)."""
    if proc.poll() is not None:
        return False
    try:
        wanted = f"0100007F:{port:04X}"
        inodes = {f"socket:[{fields[9]}]" for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                  if (fields := line.split())[1] == wanted and fields[3] == "0A"}  # 0A: LISTEN
        fds = Path(f"/proc/{proc.pid}/fd")
        return any(os.readlink(fd) in inodes for fd in fds.iterdir())
    except OSError:
        return None


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Terminate a server we started, and kill it if it does not go in ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Mosquitto:
    def __init__(self, workdir: Path, port: int | None = None, extra_config: str = ""):
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            raise FileNotFoundError("mosquitto is not installed (Debian/Ubuntu: apt-get install -y mosquitto)")
        self.exe = exe
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.chosen = port is None  # a port we chose may be taken by another before Mosquitto binds it
        self.extra_config = extra_config
        self.conf = self.workdir / "mosquitto.conf"
        self._configure(port or free_port())
        self.proc: subprocess.Popen | None = None

    def _configure(self, port: int) -> None:
        self.port = port
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 1000\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\n"
            # as root Mosquitto drops to user 'mosquitto', who cannot read our private temp files
            + ("user root\n" if os.geteuid() == 0 else "")
            + self.extra_config
        )

    def start(self) -> Mosquitto:
        """Start Mosquitto and return once *it* listens on the port. Something else answering there
        (another process took the port between ``free_port`` and Mosquitto's bind, and ours exited)
        would have a test talk to another test's broker: a port we chose is then chosen again, a
        port we were given is an error."""
        self.log = open(self.workdir / "mosquitto.log", "ab")
        for _ in range(5):
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=self.log, stderr=self.log)
            wait_for_port(self.port)
            if listens(self.proc, self.port) is not False:
                return self
            stop_process(self.proc)
            if not self.chosen:
                break
            self._configure(free_port())
        raise RuntimeError(f"mosquitto could not listen on 127.0.0.1:{self.port}: another process has the port "
                           f"(see {self.workdir / 'mosquitto.log'})")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class EmbeddedBroker:
    """amqtt, a pure-Python MQTT broker, for machines without Mosquitto (demo only:
    it keeps nothing on disk, so the no-loss guarantees need Mosquitto)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._thread = None
        self._loop = None
        self._broker = None

    def start(self) -> "EmbeddedBroker":
        import asyncio
        import threading

        from amqtt.broker import Broker

        config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                  "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="amqtt")
        self._thread.start()

        async def boot():
            self._broker = Broker(config)
            await self._broker.start()

        # listening once start() returns: a probe connection would only make amqtt log an ERROR
        # ("No data to decode MQTT packet fixed header") at every start
        asyncio.run_coroutine_threadsafe(boot(), self._loop).result(15)
        return self

    def stop(self) -> None:
        import asyncio

        if self._broker is not None:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(15)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._broker = None


def start_broker(workdir: Path, log, choice: str = "auto") -> Mosquitto | EmbeddedBroker:
    """Mosquitto when it is installed (or asked for), else the embedded amqtt broker; says which."""
    try:
        if choice == "embedded":
            raise FileNotFoundError("the embedded broker was asked for")
        broker = Mosquitto(workdir / "mosquitto").start()
        log.info("broker: Mosquitto %s at %s", broker.exe, broker.url)
    except FileNotFoundError:
        if choice == "mosquitto":
            raise
        broker = EmbeddedBroker().start()
        log.warning("broker: Mosquitto is not installed; using the embedded Python broker (amqtt) at %s. "
                    "It keeps nothing on disk: install mosquitto for the no-loss guarantees.", broker.url)
    return broker
