"""``ptserve convert EXPORT OUT_DIR``: the parent side. It never imports fastai or unpickles:
a confined child process loads the export and writes the folder into a staging folder beside
OUT_DIR; this process verifies it (``check.py``), adds the check report to the manifest and
moves the folder into place. OUT_DIR appears only when all of that succeeded."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ptserve.convert import ConversionError
from ptserve.convert.check import verify
from ptserve.convert.child import FOLDER
from ptserve.convert.manifest import MANIFEST, MODEL_FILE, read_manifest, write_manifest
from ptserve.errors import ModelLoadError
from ptserve.loading.detect import detect_format

MAX_CHILD_LINE = 1 << 16


def convert(export: Path, out_dir: Path) -> str:
    """Convert ``export`` into the folder ``out_dir``; a summary of what was done, or
    ConversionError with a one-line cause."""
    _check_paths(export, out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.converting-", dir=out_dir.parent))
    try:
        (staging / "tmp").mkdir()
        sandbox, done = _run_child(export.resolve(), staging)
        folder = staging / FOLDER
        check = verify(folder)
        write_manifest(folder, read_manifest(folder).model_copy(update={"check": check}))
        folder.replace(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    confinement = "; ".join(f"{layer}: {state}" for layer, state in sandbox.items())
    return (
        f"{export}: a fastai {done.get('learner')} learner, loaded by fastai in a child "
        f"process ({confinement})\n"
        f"wrote {out_dir}/: {MODEL_FILE} (torch.export program, dynamic batch), {MANIFEST} "
        "(preprocessing, decoding and labels as data), check/ (the check samples)\n"
        f"check: {check.samples} {check.inputs}; the folder's {check.compared} differ from "
        f"learn.predict's by at most {check.max_abs_difference:.2g} (tolerance "
        f"{check.tolerance:g})\n"
        f"serve it with: ptserve serve {out_dir}\n"
    )


def _check_paths(export: Path, out_dir: Path) -> None:
    if not export.is_file():
        raise ConversionError(f"{export}: no such file")
    try:
        fmt = detect_format(export)
    except ModelLoadError as exc:
        raise ConversionError(str(exc)) from None
    if fmt != "fastai":
        raise ConversionError(
            f"{export}: a {fmt} file, not a fastai Learner export; ptserve convert turns "
            "learn.export() files into folders (ptserve serve takes this file as it is)"
        )
    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise ConversionError(f"{out_dir}: already exists; name a new folder")
    if not out_dir.parent.is_dir():
        raise ConversionError(f"{out_dir.parent}: no such folder")


def _run_child(export: Path, staging: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Run the child to completion; its sandbox report and its summary, or ConversionError."""
    env = {
        **os.environ,
        "TMPDIR": str(staging / "tmp"),  # the only place besides the folder it can write
        "MPLCONFIGDIR": str(staging / "tmp"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    command = [sys.executable, "-m", "ptserve.convert.child", str(export), str(staging)]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, start_new_session=True,  # stopped as a group, sandboxed children included
    )  # fmt: skip
    try:
        out, err = process.communicate()
    finally:
        if process.poll() is None:  # interrupted: stop the child and what it started
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    messages = _messages(out)
    sandbox = next((m["sandbox"] for m in messages if "sandbox" in m), None)
    last = messages[-1] if messages else {}
    if process.returncode == 0 and isinstance(sandbox, dict) and isinstance(last.get("done"), dict):
        return sandbox, last["done"]
    if isinstance(last.get("error"), str):
        raise ConversionError(f"{export}: {last['error'][:1000]}")
    tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-3:])
    raise ConversionError(
        f"{export}: the conversion's child process failed (exit {process.returncode}): {tail}"
    )


def _messages(out: bytes) -> list[dict[str, Any]]:
    """The JSON objects the child printed, one a line (other lines: whatever code printed)."""
    messages = []
    for line in out.splitlines():
        try:
            message = json.loads(line[:MAX_CHILD_LINE])
        except ValueError:
            continue
        if isinstance(message, dict):
            messages.append(message)
    return messages
