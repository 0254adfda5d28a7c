"""Process logging: ptserve's own lines next to uvicorn's, unless the host app set up logging."""

import logging


def setup_logging(level: str) -> None:
    """Give the ``ptserve`` logger a handler and level if nobody configured logging."""
    logger = logging.getLogger("ptserve")
    logger.setLevel(level.upper())
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
