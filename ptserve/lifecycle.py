"""Model versions while the server runs: load beside, swap, drain, release.

``Lifecycle`` is the only writer of the registry. Each change brings one model in line with what
its folder holds (``repository.scan``) under its version policy:

1. every version to serve that is not already served from the same files is loaded *beside* the
   serving ones, on a worker thread (loading, probing and warming up never stall the event
   loop), and its batch loop is started;
2. the model's set of versions is swapped in the registry in one reference assignment, so each
   request reaches either the old set or the new one;
3. each version no longer served is retired: it finishes what it accepted (requests arriving,
   queued or in the model; up to ``drain_timeout_s``), its batcher and threads stop, its metric
   series are dropped and its memory is collected (``ptserve.memory``).

A version that fails to load or warm up is reported (log, ``ptserve_model_loads{outcome=
"failed"}``, the repository index, its model's metadata and 404s) and treated as absent: the
policy picks among the rest, so the serving versions stay untouched. It is tried again when its
files change, or when the model is loaded through the API. At start-up every model must load.

Changes come from ``--watch`` (``ptserve.watch``: a change is acted on once two looks at the
folder agree, so a file still being copied is left alone) and from the V2 repository API
(``protocols/repository.py``). One change runs at a time.
"""

import asyncio
import contextlib
import gc
import logging
import os
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from anyio import to_thread

from ptserve.errors import ModelLoadError, ModelNotFound, one_line
from ptserve.memory import release_memory
from ptserve.registry import Served
from ptserve.repository import (
    Found,
    ModelProblem,
    ModelSource,
    fingerprint,
    is_repository,
    scan,
)
from ptserve.repository_index import missing_reasons
from ptserve.service import InferenceService

if TYPE_CHECKING:
    from ptserve.runtime import Runtime

log = logging.getLogger("ptserve")
Key = tuple[str, str]  # (model name, version: "" for the whole model)
Failure = tuple[str, str]  # (version, or "" for the whole model; why, as the loader said it)
RETIRE_POLL_S = 0.01  # how often a retiring version is checked for work still arriving


class Lifecycle:
    """Loads, swaps and releases the server's model versions (see the module docstring)."""

    def __init__(self, runtime: "Runtime", on_change: Callable[[], None]) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.registry = runtime.models
        self.on_change = on_change  # the served set changed (the OpenAPI schema is stale)
        self.found: dict[str, Found] = {}  # the latest look at the folder
        self.loading: set[Key] = set()
        self.retiring: dict[Key, InferenceService] = {}
        self.failed: dict[Key, tuple[object, str]] = {}  # what failed to load, and why
        self.unloaded: set[str] = set()  # unloaded through the API: the watcher leaves them
        self.loads: dict[str, int] = {}  # loads per model name
        self._identity: dict[Key, object] = {}  # what each served version was loaded from
        self._applied: dict[str, object] = {}  # the folder's state each model was matched to
        self._lock = asyncio.Lock()
        self._retired: list[weakref.ref[object]] = []  # retired versions' models, to collect
        self._torch_threads = self.settings.torch_threads

    async def start(self) -> None:
        """Load every model the folder (or file) holds; ModelLoadError when any fails."""
        settings = self.settings
        repository = is_repository(settings.model_path)
        if repository and settings.name is not None:
            raise ModelLoadError(
                f"{settings.model_path}: the name setting names a single model file's model; "
                "in a repository each model's folder gives its name"
            )
        try:
            self.found = await to_thread.run_sync(scan, settings)
        except OSError as exc:
            raise ModelLoadError(f"{settings.model_path}: cannot read it ({exc})") from None
        if not self.found and not settings.watch:
            raise ModelLoadError(
                f"{settings.model_path}: the repository holds no model folders "
                "(NAME/VERSION/model file); add one, or start with --watch to wait for them"
            )
        first = settings.default_model
        if first is not None and first not in self.found:
            raise ModelLoadError(f"--default-model {first!r}: the repository has no such model")
        names = sorted(self.found, key=lambda n: (n != first, n))  # the default first
        failures: list[Failure] = []
        async with self._lock:
            for name in names:
                failures += await self._bring(name, self.found[name], retry=True)
                self._applied[name] = fingerprint(self.found[name])
        if failures:  # one line, as for a single file (the lifespan's failure prints it)
            await self.stop()
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise ModelLoadError(failures[0][1] + more)
        self.registry.default = first or (names[0] if len(names) == 1 else None)

    async def load(self, name: str) -> list[str]:
        """Bring model ``name`` in line with its folder now, retrying versions that failed
        before; returns why versions failed (none: all loaded), naming files relative to the
        repository (for clients). 404 for a name the folder does not hold."""
        async with self._lock:
            self.found = await to_thread.run_sync(scan, self.settings)
            found = self.found.get(name)
            if found is None:
                raise ModelNotFound(f"the repository holds no model named {name!r}")
            self.unloaded.discard(name)
            failures = await self._bring(name, found, retry=True)
            self._applied[name] = fingerprint(found)
            self._release()
            _report(name, failures)
            return [self._relative(message) for _, message in failures]

    async def unload(self, name: str) -> None:
        """Stop serving model ``name``: its versions finish their work and are released. It
        stays unloaded (``--watch`` leaves it alone) until loaded again. 404 when unknown."""
        async with self._lock:
            if not self.registry.versions(name) and name not in self.found:
                raise ModelNotFound(f"no model named {name!r}")
            self.unloaded.add(name)
            await self._serve(name, {})
            self._release()
            log.info("model %r unloaded", name)

    async def rescan(self) -> None:
        """Look at the folder again (for the index), without changing what is served."""
        self.found = await to_thread.run_sync(scan, self.settings)

    def busy(self) -> bool:
        """Whether a retiring version still has work."""
        return any(service.batcher.busy() for service in self.retiring.values())

    async def follow(self, found: dict[str, Found], settled: set[str]) -> None:
        """Bring each model in ``settled`` (its folder looked the same twice running, see
        ``ptserve.watch``) in line with ``found`` where it changed since it was last brought in
        line; models unloaded through the API are left alone."""
        async with self._lock:
            self.found = found
            for name in sorted(settled):
                state = fingerprint(found.get(name))
                if name in self.unloaded or state == self._applied.get(name, None):
                    continue
                _report(name, await self._bring(name, found.get(name), retry=False))
                self._applied[name] = state
            self._release()

    async def stop(self) -> None:
        """Stop every version, after the change under way if any (queued work finishes, up to
        drain_timeout_s)."""
        async with self._lock:
            for served in self.registry.all():
                await served.service.stop(self.settings.drain_timeout_s)

    async def _bring(self, name: str, found: Found | None, retry: bool) -> list["Failure"]:
        """Serve what ``found`` (None: nothing) says for model ``name``; returns the failures.
        The caller holds the lock."""
        present = found.versions if isinstance(found, ModelSource) else {}
        for key in [k for k in self.failed if k[0] == name]:
            if retry or key[1] == "" or not key[1].isdigit() or int(key[1]) not in present:
                del self.failed[key]
        if found is None:  # the model's folder is gone
            self.unloaded.discard(name)
            await self._serve(name, {})
            return []
        if isinstance(found, ModelProblem):
            self.failed[(name, "")] = (fingerprint(found), found.reason)
            self._explain()
            return [("", found.reason)]
        current = {v: self.registry.get(name, v) for v in self.registry.versions(name)}
        # A version that failed as its files are now is left out, unless a copy loaded
        # earlier is serving: that copy stays.
        left_out = {v for v in found.versions if self._failed_as_is(found, v)} - {
            int(v) for v in current
        }
        fresh: dict[str, Served] = {}
        failures: list[Failure] = []
        while True:
            wanted = [str(v) for v in found.policy.select(set(found.versions) - left_out)]
            todo = [
                v for v in wanted
                if v not in fresh and not self._served_as_is(found, v)
                and not (v in current and self._failed_as_is(found, int(v)))
            ]  # fmt: skip
            if not todo:
                break
            loaded = await self._load(found, int(todo[0]))
            if isinstance(loaded, str):
                failures.append((todo[0], loaded))
                if todo[0] not in current:
                    left_out.add(int(todo[0]))
            else:
                fresh[todo[0]] = loaded
        serving = {v: fresh[v] if v in fresh else current[v] for v in wanted}
        if not serving and current:
            log.warning("model %r: nothing new could be served; its versions stay", name)
            serving = current
        for version, served in fresh.items():
            if version in serving:
                self._identity[(name, version)] = found.identity(int(version))
            else:
                await served.service.stop()
        await self._serve(name, serving)
        return failures

    async def _load(self, found: ModelSource, version: int) -> Served | str:
        """Load, probe and warm up one version off the event loop and start its batch loop;
        on failure, record why (for clients: files named relative to the repository) and
        return it (for the operator: as the loader said it)."""
        key = (found.name, str(version))
        source = found.versions[version]
        self.loading.add(key)
        self._explain()
        try:
            if source.problem is not None:
                raise ModelLoadError(source.problem)
            settings = found.settings_for(version)
            if self._torch_threads is not None:  # process-wide: chosen by the first model
                settings = settings.model_copy(update={"torch_threads": self._torch_threads})
            service = await to_thread.run_sync(
                InferenceService.start, settings, self.runtime.metrics, str(version)
            )
        except Exception as exc:
            if not isinstance(exc, ModelLoadError):
                log.exception("loading model %r version %d failed", found.name, version)
            reason = one_line(exc)
            self.failed[key] = (found.identity(version), self._relative(reason))
            metrics = self.runtime.metrics
            metrics.loads.labels(*key, "failed").inc()
            serving = self.registry.versions(found.name)
            kept = self.registry.get(*key).service.metrics if key[1] in serving else None
            metrics.forget_failed(*key, kept)  # what the failed load made before it failed
            gc.collect()  # what the failed load built
            return reason
        finally:
            self.loading.discard(key)
        if self._torch_threads is None and service.threads is not None:
            self._torch_threads = service.threads.torch_threads
        service.start_batching()
        self.runtime.loads += 1
        self.loads[found.name] = self.loads.get(found.name, 0) + 1
        self.runtime.metrics.loads.labels(*key, "ok").inc()
        return Served.of(service)

    async def _serve(self, name: str, versions: dict[str, Served]) -> None:
        """Swap model ``name``'s versions for ``versions``, then retire the ones replaced."""
        old = self.registry.swap(name, versions)
        for key in [k for k in self._identity if k[0] == name and k[1] not in versions]:
            del self._identity[key]
        if old or versions:
            log.info("model %r now serves version(s) %s", name, ", ".join(versions) or "none")
        self._explain()
        self.on_change()
        for served in old:
            await self._retire(served, versions.get(served.service.version))

    async def _retire(self, served: Served, successor: Served | None) -> None:
        """Let an old version finish what it accepted, then stop it and drop its metric series."""
        service = served.service
        key = (service.name, service.version)
        self.retiring[key] = service
        self._explain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout_s
        with contextlib.suppress(TypeError):  # a model that takes no weak reference
            self._retired.append(weakref.ref(service.runner.model))
        try:
            while service.batcher.busy() and loop.time() < deadline:
                await asyncio.sleep(RETIRE_POLL_S)
            await service.stop(max(0.0, deadline - loop.time()))
        finally:
            del self.retiring[key]
            self._explain()
        service.metrics.forget(successor.service.metrics if successor is not None else None)
        log.info("model %r version %s released", service.name, service.version)

    def _release(self) -> None:
        """Collect what retired versions left, once nothing of the change refers to them: see
        ``release_memory``."""
        retired, self._retired = self._retired, []
        if retired:
            release_memory(retired)

    def _served_as_is(self, found: ModelSource, version: str) -> bool:
        key = (found.name, version)
        return key in self._identity and self._identity[key] == found.identity(int(version))

    def _failed_as_is(self, found: ModelSource, version: int) -> bool:
        failure = self.failed.get((found.name, str(version)))
        return failure is not None and failure[0] == found.identity(version)

    def _explain(self) -> None:
        """Tell the registry why missing versions are missing (their 404s say so)."""
        self.registry.explain(missing_reasons(self))

    def _relative(self, message: str) -> str:
        """``message`` with the repository's location left out (it may reach clients)."""
        folder = self.settings.model_path
        if not is_repository(folder):
            folder = folder.parent
        for prefix in (str(folder.resolve()), str(folder)):
            if prefix not in ("", "."):
                message = message.replace(prefix.rstrip(os.sep) + os.sep, "")
        return message


def _report(name: str, failures: list[Failure]) -> None:
    """Log what failed in a change made while serving (at start-up the failure stops it)."""
    for version, message in failures:
        if version:
            log.error("model %r version %s failed to load: %s", name, version, message)
        else:
            log.error("model %r cannot be served: %s", name, message)
