"""The conversion's child process: ``python -m ptserve.convert.child EXPORT WORK``.

It confines itself first (``sandbox.py``: before anything else is imported), says on stdout
what held, then loads the export with fastai (running whatever code the export holds: the
operator trusts it for this one command) and writes the folder to ``WORK/folder``. Its last
line on stdout is ``{"done": ...}`` or ``{"error": "<one line>"}``. The parent trusts none of
it: it verifies the folder itself.
"""

import json
import sys
from pathlib import Path
from typing import Any

from ptserve.convert import ConversionError
from ptserve.convert.sandbox import confine

FOLDER = "folder"


def main(argv: list[str]) -> int:
    """Convert ``argv[0]`` into ``argv[1]/folder``; 0 when written, 2 when refused."""
    export, work = Path(argv[0]), Path(argv[1])
    _say({"sandbox": confine(work)})
    try:
        from ptserve.convert.writer import write_folder

        _say({"done": write_folder(export, work / FOLDER)})
    except ConversionError as exc:
        _say({"error": str(exc)})
        return 2
    return 0


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
