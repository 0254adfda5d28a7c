"""The processes a Ray cluster is made of, read from /proc (Linux).

A process is named by (pid, start time), so a pid the kernel reuses for something else is never
mistaken for one of Ray's.
"""

import time
from pathlib import Path

Process = tuple[int, int]  # (pid, start time in clock ticks since boot)
PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time, state) of a live process, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return int(fields[1]), int(fields[19]), fields[0]


def command_line(pid: int) -> str:
    try:
        return (
            (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def descendants(root: int) -> set[Process]:
    """Every live process below ``root`` (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents.setdefault(stat[0], []).append(int(entry.name))
            started[int(entry.name)] = stat[1]
    found: set[Process] = set()
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child in started:
                found.add((child, started[child]))
                todo.append(child)
    return found


def alive(processes: set[Process]) -> set[Process]:
    """Those of ``processes`` still running (a zombie has exited: it only waits to be reaped)."""
    still = set()
    for pid, start in processes:
        stat = _stat(pid)
        if stat is not None and stat[1] == start and stat[2] != "Z":
            still.add((pid, start))
    return still


def wait_gone(processes: set[Process], timeout: float) -> set[Process]:
    """Poll until all of ``processes`` have exited or ``timeout`` passes; those left."""
    deadline = time.monotonic() + timeout
    while (left := alive(processes)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def replicas(root: int, deployment: str = "ptserve", app: str = "ptserve") -> set[int]:
    """Pids of the Serve replicas of ``app``/``deployment`` below ``root`` (Ray names a replica's
    process ``ray::ServeReplica:APP:DEPLOYMENT``)."""
    title = f"ray::ServeReplica:{app}:{deployment}"
    return {pid for pid, _ in descendants(root) if command_line(pid).startswith(title)}


def session(sid: int) -> set[Process]:
    """Every live process of session ``sid`` (``start_new_session=True`` makes the child's pid
    its session id; Ray's processes, replicas included, stay in the session of the driver)."""
    found: set[Process] = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.add((int(entry.name), int(fields[19])))
    return found
