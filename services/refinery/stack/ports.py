"""Which ports the stack listens on, whether they are safe, and who holds a busy one.

A listener inside the kernel's ephemeral range (32768-60999 on Linux by default) can find
its port taken at random by any outgoing connection on the machine, so every listener port
of the stack comes from settings and should lie below that range. When a port is taken
anyway, the error names the process that holds it, read from ``/proc``.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from refinery.common.exceptions import ProcessError
from refinery.common.settings import Settings

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LINUX_DEFAULT_RANGE = (32768, 60999)


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports, read at run time."""
    try:
        low, high = _RANGE_FILE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _LINUX_DEFAULT_RANGE


def in_ephemeral_range(port: int) -> bool:
    low, high = ephemeral_range()
    return low <= port <= high


def replica_name(component: str, replica: int) -> str:
    """The name of ``component``'s replica ``replica`` (0-based): vllm, vllm-2, vllm-3, ..."""
    return component if replica == 0 else f"{component}-{replica + 1}"


def listener_ports(settings: Settings) -> dict[str, int]:
    """Every port the stack's processes listen on, by a name saying whose it is."""
    ports: dict[str, int] = {}
    for i in range(settings.kafka_nodes):
        ports[f"kafka-{i + 1} broker"] = settings.kafka_port + i
        ports[f"kafka-{i + 1} controller"] = settings.kafka_controller_port + i
    ports["mlflow"] = settings.mlflow_port
    if settings.mlflow_backend == "postgresql" and settings.mlflow_backend_uri is None:
        ports["postgres"] = settings.postgres_port
    for i in range(settings.vllm_replicas):
        ports[replica_name("vllm", i)] = settings.vllm_port + i
    for i in range(settings.gateway_replicas):
        ports[replica_name("gateway", i)] = settings.gateway_port + i
    if settings.gateway_replicas > 1:
        ports["balancer"] = settings.balancer_port
    for i in range(settings.monitor_workers):
        ports[f"{replica_name('monitor', i)} metrics"] = settings.monitor_metrics_port + i
    if settings.serve_merged:
        for slot in range(2):
            ports[f"vllm-merged-{slot}"] = settings.vllm_merged_port + slot
    ports["evidently ui"] = settings.evidently_ui_port
    ports["retrainer metrics"] = settings.retrainer_metrics_port
    return ports


def _socket_inodes(port: int) -> set[str]:
    """Inodes of TCP sockets bound locally to ``port`` (any state), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[9] != "0":
                inodes.add(fields[9])
    return inodes


def _fd_links(proc: Path) -> set[str]:
    """What ``proc``'s open descriptors point at (each may close while we look)."""
    links: set[str] = set()
    try:
        fds = list((proc / "fd").iterdir())
    except OSError:  # gone, or not ours to read
        return links
    for fd in fds:
        try:
            links.add(os.readlink(fd))
        except OSError:
            continue
    return links


def port_holders(port: int) -> list[str]:
    """``"pid N (command line)"`` for each process with a socket on ``port``."""
    inodes = _socket_inodes(port)
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        if _fd_links(proc) & wanted:
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                cmd = "?"
            holders.append(f"pid {proc.name} ({cmd[:160]})")
    return holders or [f"a socket the kernel still holds (inode {', '.join(sorted(inodes))})"]


def describe_holders(port: int) -> str:
    return "; ".join(port_holders(port)) or "no process found (released since?)"


def ensure_free(owner: str, ports: dict[str, int], host: str = "127.0.0.1") -> None:
    """Raise a ProcessError naming the holder if any of ``ports`` cannot be bound now."""
    for what, port in ports.items():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise ProcessError(
                    f"{owner} cannot start: {host}:{port} ({what}) is already in use by "
                    f"{describe_holders(port)}"
                ) from None
