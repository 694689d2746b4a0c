"""Which addresses the Ray processes of this machine listen on, read from /proc (Linux)."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _listening_sockets() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every TCP socket in LISTEN state."""
    found = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # host-order 32-bit words
            found[fields[9]] = (socket.inet_ntop(family, words), int(port, 16))
    return found


def ray_listening(pids: set[int] | None = None) -> list[tuple[str, int]]:
    """(address, port) of the listening sockets held by Ray's processes (or by ``pids``)."""
    sockets = _listening_sockets()
    held = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = (
                (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        is_ray = "gcs_server" in command or "raylet" in command or command.startswith("ray::")
        if (pids is not None and int(pid) in pids) or (pids is None and is_ray):
            held += [
                sockets[link[8:-1]] for link in links if link.startswith("socket:[") and link[8:-1] in sockets
            ]
    return held


def ray_workers_of(temp_dir: Path) -> set[str]:
    """Names of the busy Ray worker processes (``ray::...``, not idle) of the raylet using ``temp_dir``."""
    processes = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = (
                (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
            parent = int((Path("/proc") / pid / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        processes[int(pid)] = (parent, command)
    raylets = {
        pid for pid, (_, command) in processes.items() if "raylet" in command and str(temp_dir) in command
    }
    return {
        command.split()[0]
        for parent, command in processes.values()
        if parent in raylets
        and command.startswith("ray::")
        and not command.startswith(("ray::IDLE", "ray::Dash"))
        and "Agent" not in command.split()[0]
    }
