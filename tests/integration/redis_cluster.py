"""A throwaway Redis Cluster for the tests: three primaries from Debian's redis-server, no
replicas, each on a free loopback port (and its bus port, +10000), joined by redis-cli."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NODES = 3


class ClusterStartError(RuntimeError):
    """The test cluster could not be started (the message says which step failed)."""


def _free_port_pair() -> int:
    """A port p with p and p + 10000 (the cluster bus) both free."""
    for _ in range(200):
        port = random.randint(20000, 30000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise ClusterStartError("no free port pair for a cluster node")


def _cli(args: list[str], timeout_s: float = 5) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, timeout=timeout_s, check=False)  # noqa: S603 (redis-cli)


def _wait_ping(cli: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _cli([cli, "-p", str(port), "ping"]).stdout.strip() == b"PONG":
            return
        time.sleep(0.05)
    raise ClusterStartError(f"cluster node on port {port} did not start")


def _wait_cluster_ok(cli: str, ports: list[int]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = [_cli([cli, "-p", str(port), "cluster", "info"]).stdout for port in ports]
        if all(b"cluster_state:ok" in state for state in states):
            return
        time.sleep(0.1)
    raise ClusterStartError("the test cluster did not reach cluster_state:ok")


@contextmanager
def redis_cluster(root: Path, nodes: int = NODES) -> Iterator[list[int]]:
    """Start a cluster with its node files under `root`; yield the primaries' ports; stop it."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise ClusterStartError("redis-server and redis-cli are needed: run scripts/services up")
    ports: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(nodes):
            port = _free_port_pair()
            node_dir = Path(root, str(port))
            node_dir.mkdir()
            args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            args += ["--appendonly", "no", "--cluster-enabled", "yes", "--dir", str(node_dir)]
            args += ["--logfile", str(node_dir / "redis.log")]
            procs.append(
                subprocess.Popen(args, stdout=subprocess.DEVNULL)  # noqa: S603 (redis-server)
            )
            ports.append(port)
        for port in ports:
            _wait_ping(cli, port)
        addresses = [f"127.0.0.1:{port}" for port in ports]
        create = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0"]
        done = _cli([*create, "--cluster-yes"], timeout_s=30)
        if done.returncode != 0:
            raise ClusterStartError(f"redis-cli --cluster create failed: {done.stdout[-500:]!r}")
        _wait_cluster_ok(cli, ports)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
