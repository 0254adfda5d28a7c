"""``ptserve serve``: run the app under uvicorn, in one process or under uvicorn's supervisor."""

import os
import signal
import sys
import tempfile
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from ptserve.app import WORKER_SETTINGS_ENV, create_app
from ptserve.observability.logs import log_config
from ptserve.observability.metrics import MULTIPROC_ENV
from ptserve.settings import Settings


def serve(settings: Settings) -> None:
    """Run the server in the foreground until SIGTERM/SIGINT (which drain first); exit 0 after
    a clean stop, 3 if the model cannot load."""
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": log_config(settings.log_level, settings.log_format),
        "access_log": False,  # ptserve logs each request itself, with its id and timing
    }
    # uvicorn re-raises the stop signal once it has shut down; answered here, the process then
    # exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    # Each worker is a fresh (spawned) process that rebuilds these settings, loads the model
    # and writes its metrics to the shared multiprocess folder.
    with tempfile.TemporaryDirectory(prefix="ptserve-metrics-") as folder:
        os.environ[MULTIPROC_ENV] = folder
        os.environ[WORKER_SETTINGS_ENV] = settings.model_dump_json()
        config = uvicorn.Config(
            "ptserve.app:app_from_environment", factory=True, workers=settings.workers, **common
        )
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
    if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        sys.exit(STARTUP_FAILURE)
