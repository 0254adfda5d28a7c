"""Confine the conversion's child process, where Linux offers it cheaply: defence in depth
around code the operator chose to trust, never a promise that hostile code is contained.

Three layers, each applied if the kernel allows it and reported either way:

- **read-only file system**: in a new mount namespace every mount is remounted read-only except
  the one folder the child writes; a user namespace entered afterwards locks those mounts, so
  code in the child cannot remount them writable (where it starts as root);
- **no network**: a new, empty network namespace (not even a loopback that is up);
- **no other processes**: a new PID namespace with its own ``/proc``: the child cannot signal,
  trace or read the memory of any process outside it.

Needs only the standard library (``ctypes``): it runs before anything else is imported, since
``unshare`` of a user namespace fails once a process has threads.
"""

import ctypes
import os
import re
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 0x400, 0x800, 0x200000
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG = 1
# Flags a bind remount must repeat: a user namespace locks them, and a remount without them fails.
KEPT_FLAGS = {
    "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME,
}  # fmt: skip


class Unavailable(OSError):
    """A layer the kernel (or the container) does not offer here."""


def confine(writable: Path) -> dict[str, str]:
    """Confine this process (and what it starts) and say what held, per layer: ``"yes"`` or
    why not. Must run while the process has a single thread.

    The PID namespace needs a fork: the calling process stays outside it, waits for the child
    that does the work and exits with its status; only that child returns from here.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]  # fmt: skip
    report = {"read-only file system": "no", "no network": "no", "no other processes": "no"}
    try:
        _read_only_except(libc, writable)
        report["read-only file system"] = "yes"
    except Unavailable as exc:
        report["read-only file system"] = f"unavailable ({exc.strerror})"
    uid, gid = os.geteuid(), os.getegid()
    try:
        _call(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    except OSError as exc:  # no user namespaces here: keep what the first layer gave
        reason = f"unavailable ({exc.strerror})"
        report.update({"no network": reason, "no other processes": reason})
        if report["read-only file system"] == "yes":
            report["read-only file system"] = "yes (not locked: no user namespaces)"
        return report
    report["no network"] = "yes"
    if report["read-only file system"] != "yes":  # not root: the user namespace allows it
        try:
            _read_only_except(libc, writable)
            report["read-only file system"] = "yes (not locked: made inside the user namespace)"
        except Unavailable as exc:
            report["read-only file system"] = f"unavailable ({exc.strerror})"
    _run_in_new_pid_namespace(libc)
    try:
        _call(
            libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "proc"
        )
        report["no other processes"] = "yes"
    except Unavailable as exc:  # processes outside stay out of reach by pid, but /proc shows them
        report["no other processes"] = f"partly (own /proc unavailable: {exc.strerror})"
    return report


def _read_only_except(libc: ctypes.CDLL, writable: Path) -> None:
    """A private mount namespace in which everything but ``writable`` (and /proc, which the
    user namespace's maps are written through) is read-only."""
    _call(libc.unshare(CLONE_NEWNS), "unshare")
    _call(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount")
    target = bytes(writable)
    _call(libc.mount(target, target, None, MS_BIND | MS_REC, None), "mount")
    inside = str(writable).rstrip("/") + "/"
    for point, options in _mounts():
        if point == str(writable) or point.startswith(inside):
            continue
        if point == "/proc" or point.startswith("/proc/"):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in options:
            flags |= KEPT_FLAGS.get(option, 0)
        _call(libc.mount(None, point.encode(), None, flags, None), f"remount {point}")


def _mounts() -> list[tuple[str, list[str]]]:
    """Every mount point and its per-mount options (``/proc/self/mountinfo``)."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])  # \040: " "
        mounts.append((point, fields[5].split(",")))
    return mounts


def _run_in_new_pid_namespace(libc: ctypes.CDLL) -> None:
    """Fork into the new PID namespace; the parent waits and exits with the child's status."""
    pid = os.fork()
    if pid == 0:
        libc.prctl(PR_SET_PDEATHSIG, 9)  # SIGKILL when the waiting parent goes
        return
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) % 256)


def _call(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise Unavailable(errno, f"{what}: {os.strerror(errno)}")
