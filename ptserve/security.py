"""API keys: a file of keys, one per line, kept only as hashes and re-read when it changes."""

import hashlib
import hmac
import logging
from pathlib import Path

from ptserve.settings import Settings

log = logging.getLogger("ptserve")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyStore:
    """Checks presented keys against the key file, in constant time per stored key.

    The file is re-read when its modification time or size changes (checked on each request)
    and on ``reload()`` (SIGHUP), so keys rotate without a restart.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._hashes: list[bytes] = []
        self._stamp: tuple[int, int] | None = None
        self.reload()

    def reload(self) -> None:
        stat = self.path.stat()
        lines = self.path.read_text().splitlines()
        keys = [k.strip() for k in lines if k.strip() and not k.lstrip().startswith("#")]
        if not keys:
            raise ValueError(f"API key file {self.path} holds no keys")
        self._hashes = [_digest(k) for k in keys]
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        log.info("loaded %d API keys from %s", len(keys), self.path)

    def accepts(self, key: str | None) -> bool:
        self.refresh()
        if not key:
            return False
        presented = _digest(key)
        matched = False
        for stored in self._hashes:  # no early exit: timing does not tell which key matched
            matched |= hmac.compare_digest(presented, stored)
        return matched

    def refresh(self, force: bool = False) -> None:
        """Re-read the file if it changed (or ``force``); keep the old keys if it is broken."""
        try:
            stat = self.path.stat()
        except OSError:
            return  # keep the last good keys while the file is being replaced
        if force or (stat.st_mtime_ns, stat.st_size) != self._stamp:
            try:
                self.reload()
            except (OSError, ValueError) as exc:
                self._stamp = (stat.st_mtime_ns, stat.st_size)  # say so once, not per request
                log.error("keeping the previous API keys: %s", exc)


def open_paths(settings: Settings) -> tuple[str, ...]:
    """Path prefixes that need no API key."""
    paths = ["/docs", "/openapi.json"]
    if not settings.protect_health:
        paths += ["/health/", "/v2/health/"]
    if not settings.protect_metrics:
        paths.append("/metrics")
    return tuple(paths)
