"""``ptserve serve``: bind the port first, then run the server in this process, or supervise
``--workers N`` worker processes.

The port is bound (not yet listening) before anything heavy happens, so a busy port fails in
about a second with one line instead of after the model has loaded. Until the server runs, a
stop signal ends start-up at once. This module imports neither torch nor the app: the
``--workers`` parent never loads a model.
"""

import logging
import logging.config
import socket
import sys

from uvicorn.config import STARTUP_FAILURE

from ptserve.drain import DrainingServer, exit_on_stop_signals
from ptserve.observability.logs import log_config
from ptserve.settings import Settings

log = logging.getLogger("ptserve")


def serve(settings: Settings) -> None:
    """Run the server in the foreground until SIGTERM/SIGINT; exit 0 after a clean drain, 1 if
    requests were cut off, 3 if the port or the model cannot be used."""
    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    exit_on_stop_signals()
    sock = bind(settings.host, settings.port)
    if settings.workers > 1:
        from ptserve.supervisor import Supervisor

        sys.exit(Supervisor(settings, sock).run())
    DrainingServer.for_settings(settings).run_to_exit(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (it listens once the server is ready); exits with one
    line when the address cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = " (another server is using it? pick another with --port)" if port else ""
        log.error("ptserve: cannot listen on %s:%d: %s%s", host, port, exc.strerror, hint)
        sys.exit(STARTUP_FAILURE)
    sock.set_inheritable(True)
    return sock
