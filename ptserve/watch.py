"""``--watch``: look at the model folder (or file) every ``watch_interval_s`` seconds and let
the lifecycle follow what changed.

Polling, not inotify: it works on every filesystem, network mounts and container volumes
included. A model is acted on only when two consecutive looks at its folder agree, so a file
still being written is left alone until it stops changing.
"""

import asyncio
import logging

from anyio import to_thread

from ptserve.lifecycle import Lifecycle
from ptserve.repository import fingerprint, scan

log = logging.getLogger("ptserve")


class Watcher:
    """Polls the folder for the lifecycle while the server runs."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling (needs the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ptserve-watch")

    async def stop(self) -> None:
        """Stop polling; a change under way completes (``Lifecycle.stop`` waits for it)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        lifecycle = self.lifecycle
        settings, runtime = lifecycle.settings, lifecycle.runtime
        previous = {name: fingerprint(found) for name, found in lifecycle.found.items()}
        while True:
            await asyncio.sleep(settings.watch_interval_s)
            if runtime.draining:
                continue
            try:
                found = await to_thread.run_sync(scan, settings)
            except OSError as exc:
                log.error("cannot look at %s: %s", settings.model_path, exc)
                continue
            # names seen before stay (as None once their folder is gone), so a removal settles
            now = {name: fingerprint(found.get(name)) for name in found.keys() | previous.keys()}
            settled = {name for name, state in now.items() if state == previous.get(name)}
            try:  # shielded: stopping the watcher never cuts a change in half
                await asyncio.shield(lifecycle.follow(found, settled))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("applying a change in %s failed", settings.model_path)
            previous = now
