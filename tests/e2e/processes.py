"""What the kernel knows about a server's processes (Linux /proc): its workers, which worker
holds which client connection, and memory."""

import contextlib
import os
from pathlib import Path

PROC = Path("/proc")


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] != "Z" and int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` is still running."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def workers(parent: int) -> list[int]:
    """The worker processes of a ``--workers`` parent (not multiprocessing's resource
    tracker, its other child)."""
    return [
        pid
        for pid in children(parent)
        if b"spawn_main" in (PROC / str(pid) / "cmdline").read_bytes()
    ]


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` has open."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in (PROC / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):
                target = fd.readlink().name
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def connection_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server's end of the loopback TCP connection from ``client_port``."""
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (PROC / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if (
                    int(local.rsplit(":", 1)[1], 16) == server_port
                    and int(remote.rsplit(":", 1)[1], 16) == client_port
                ):
                    return int(fields[9])
    return None


def owner(pids: list[int], server_port: int, client_port: int) -> int | None:
    """Which of ``pids`` holds the server's end of the connection from ``client_port``."""
    inode = connection_inode(server_port, client_port)
    if not inode:  # not accepted yet
        return None
    return next((pid for pid in pids if inode in socket_inodes(pid)), None)


def pss_kib(pid: int) -> int:
    """Proportional set size of a process (shared pages divided among their users)."""
    for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise ValueError(f"no Pss for {pid}")


def rss_kib(pid: int) -> int:
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for {pid}")


def mapped_kib(pid: int, path: Path) -> tuple[int, int]:
    """(Rss, Pss) of ``pid``'s mappings of the file ``path``."""
    rss = pss = 0
    current = False
    name = str(path.resolve())
    for line in (PROC / str(pid) / "smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:
            current = len(head) >= 6 and head[5] == name
        elif current and line.startswith("Rss:"):
            rss += int(head[1])
        elif current and line.startswith("Pss:"):
            pss += int(head[1])
    return rss, pss
