"""``--workers 2`` end to end: a killed worker is replaced and only its own requests fail, its
gauges go with it; workers survive a start-up that holds the GIL; the parent has no torch."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import torch

from tests import nets
from tests.e2e.conftest import Server, running_ptserve
from tests.e2e.processes import owner, workers
from tests.e2e.traffic import (
    RawConnection,
    clients,
    in_flight,
    post_bytes,
    wait_for,
    wait_for_value,
)
from tests.guards import COMMAND_S, hang_guard

MAX_CONNECTIONS = 40  # to find connections held by each worker
GIL_HOLD_S = 6.0  # longer than uvicorn's 5 s worker health check


def port_of(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def workers_serving(server: Server) -> list[int]:
    wait_for("two workers", lambda: "with 2 workers" in server.log())
    pids = workers(server.process.pid)
    assert len(pids) == 2, pids
    return pids


def test_a_killed_worker_is_replaced_and_only_its_requests_fail(tmp_path: Path) -> None:
    torch.save(nets.FileGatedNet(), tmp_path / "gated.pt")
    gate = tmp_path / "gate"
    args = [str(tmp_path / "gated.pt"), "--trust-module", "tests.nets", "--input-shape", "2",
            "--execution", "thread", "--workers", "2"]  # fmt: skip
    env = {"TEST_GATE_FILE": str(gate)}
    with running_ptserve(args, tmp_path / "log", env) as server:
        pids, port = workers_serving(server), port_of(server)
        # Requests held in the model (the gate is shut) on connections we know the worker of.
        held: dict[int, list[tuple[RawConnection, int]]] = {pid: [] for pid in pids}
        for n in range(MAX_CONNECTIONS):
            connection = RawConnection(port)
            connection.send(post_bytes("/predict", {"instances": [[nets.HOLD, float(n)]]}))
            pid = wait_for_value(
                "its worker", lambda c=connection: owner(pids, port, c.sock.getsockname()[1])
            )
            held[pid].append((connection, n))
            if all(len(h) >= 2 for h in held.values()):
                break
        assert all(held.values()), f"every connection went to one worker: {held}"
        total = sum(len(h) for h in held.values())
        wait_for("every held request in flight", lambda: in_flight(server.base_url) == total)
        victim, survivor = sorted(pids, key=lambda pid: -len(held[pid]))
        os.kill(victim, signal.SIGKILL)
        wait_for("the parent to see it", lambda: f"worker [{victim}] was killed" in server.log())
        # Its gauges are gone although it never decremented them: the parent removed them.
        assert in_flight(server.base_url) == len(held[survivor])
        gate.touch()
        for connection, n in held[survivor]:
            answer = connection.answer()
            assert answer.status == 200
            assert answer.body == b'{"predictions":[[1234.0,%d.0]],"model":"gated"}' % n
        for connection, _ in held[victim]:
            with pytest.raises(ConnectionError):
                connection.answer()
        wait_for("the replacement", lambda: "serving; 2 workers up" in server.log())
        replacement = (set(workers(server.process.pid)) - {survivor}).pop()
        assert replacement != victim
        # Back to normal: fresh connections, spread by the kernel, all answered.
        for client in clients(server.base_url, 20):
            response = client.post("/predict", json={"instances": [[1.0, 2.0]]})
            assert response.status_code == 200
            client.close()
        assert in_flight(server.base_url) == 0
    assert server.process.returncode == 0
    log = server.log()
    assert log.count("starting a replacement") == 1, log
    assert f"worker [{victim}] was killed by SIGKILL" in log


def write_gil_holder(folder: Path) -> Path:
    """A --handler whose import holds the GIL for GIL_HOLD_S, as importing torch or unpickling
    a large model does (one long C call: no other thread of the process runs meanwhile)."""
    path = folder / "gil_holder.py"
    path.write_text(
        textwrap.dedent(f"""
        import sys
        import time

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1000.0)  # this thread is never asked to let another one run
        end = time.monotonic() + {GIL_HOLD_S}
        while time.monotonic() < end:
            pass
        sys.setswitchinterval(interval)


        def postprocess(outputs):
            return [row.tolist() for row in outputs[0]]
        """)
    )
    return path


def test_workers_whose_start_holds_the_gil_are_not_killed(tmp_path: Path) -> None:
    handler = write_gil_holder(tmp_path)
    with running_ptserve(["--workers", "2", "--handler", str(handler)], tmp_path / "log") as server:
        workers_serving(server)
        response = httpx.post(f"{server.base_url}/predict", json={"instances": [[0.0] * 64]})
        assert response.status_code == 200
    log = server.log()
    assert log.count("Started server process") == 2, log  # no worker was replaced
    assert "killed" not in log
    assert "replacement" not in log


def test_control_the_gil_holder_starves_other_threads_past_uvicorns_health_check(
    tmp_path: Path,
) -> None:
    """Importing the handler stops every other thread of its process for longer than the 5 s
    within which uvicorn's supervisor wanted a worker's ping answered."""
    handler = write_gil_holder(tmp_path)
    probe = textwrap.dedent(f"""
        import importlib.util, threading, time
        ticks = []
        def tick():
            while len(ticks) < 100_000:
                ticks.append(time.monotonic())
                time.sleep(0.01)
        threading.Thread(target=tick, daemon=True).start()
        time.sleep(0.2)
        spec = importlib.util.spec_from_file_location("gil_holder", {str(handler)!r})
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        time.sleep(0.2)
        print(max(b - a for a, b in zip(ticks, ticks[1:])))
        """)
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=hang_guard(COMMAND_S)
    )
    assert float(done.stdout) > 5.0, done


def test_the_supervising_parent_never_imports_torch(tmp_path: Path) -> None:
    with running_ptserve(["--workers", "2"], tmp_path / "log") as server:
        pids = workers_serving(server)
        parent_maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        worker_maps = Path(f"/proc/{pids[0]}/maps").read_text()
    assert "libtorch" in worker_maps  # the check can see torch where it is
    assert "libtorch" not in parent_maps
