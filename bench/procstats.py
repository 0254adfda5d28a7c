"""CPU time and memory of a process group, read from /proc."""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessMemory:
    """Memory of one process from /proc/PID/smaps_rollup, in MiB."""

    pid: int
    name: str
    rss_mib: float
    pss_mib: float
    uss_mib: float


@dataclass(frozen=True)
class GroupMemory:
    """Memory of every live process in a group; PSS sums without double-counting shared pages."""

    processes: int
    rss_mib: float
    pss_mib: float
    uss_mib: float
    per_process: list[ProcessMemory] = field(default_factory=list)


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the server whose group leader is ``pgid``: its process
    group, and the session it leads (servers start in a session of their own), which also holds
    children that made process groups of their own, such as Ray's workers."""
    pids = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and fields[0] != "Z" and pgid in (int(fields[2]), int(fields[3])):
            pids.append(int(entry.name))
    return sorted(pids)


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds used so far by the live processes of a group."""
    ticks = 0
    for pid in group_pids(pgid):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLOCK_TICKS


def system_busy_seconds() -> float:
    """CPU seconds every core has spent busy since boot (all processes), from /proc/stat."""
    fields = (PROC / "stat").read_text().splitlines()[0].split()
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def background_cores(interval_s: float) -> float:
    """Cores kept busy by the whole machine over ``interval_s`` (call while idle yourself)."""
    before = system_busy_seconds()
    time.sleep(interval_s)
    return round((system_busy_seconds() - before) / interval_s, 2)


def _process_memory(pid: int) -> ProcessMemory | None:
    try:
        rollup = (PROC / str(pid) / "smaps_rollup").read_text()
        name = (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return None
    kib: dict[str, int] = {}
    for line in rollup.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            kib[parts[0][:-1]] = int(parts[1])
    uss = kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)
    return ProcessMemory(
        pid=pid,
        name=name,
        rss_mib=round(kib.get("Rss", 0) / 1024, 1),
        pss_mib=round(kib.get("Pss", 0) / 1024, 1),
        uss_mib=round(uss / 1024, 1),
    )


def group_memory(pgid: int) -> GroupMemory:
    """RSS, PSS and USS of every live process in a group, with totals."""
    per = [m for pid in group_pids(pgid) if (m := _process_memory(pid)) is not None]
    return GroupMemory(
        processes=len(per),
        rss_mib=round(sum(m.rss_mib for m in per), 1),
        pss_mib=round(sum(m.pss_mib for m in per), 1),
        uss_mib=round(sum(m.uss_mib for m in per), 1),
        per_process=per,
    )


def file_pss_mib(pgid: int, path: Path) -> float:
    """PSS of a group's memory mappings of the file ``path``: a file mapped by N processes
    counts once in total (weights shared through the page cache)."""
    name, kib = str(path.resolve()), 0
    for pid in group_pids(pgid):
        current = False
        try:
            lines = (PROC / str(pid) / "smaps").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
                current = len(fields) >= 6 and fields[5] == name
            elif current and fields[0] == "Pss:":
                kib += int(fields[1])
    return round(kib / 1024, 1)
