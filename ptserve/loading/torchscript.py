"""TorchScript archives read as data: the globals their pickles name and the code they carry.

TorchScript's pickles (``data.pkl``, ``constants.pkl``, ``*.debug_pkl``) are read by
TorchScript's own C++ unpickler, not Python's: it builds tensors, plain values and the
TorchScript classes compiled from the archive's ``code/``, and refuses any other global
("Unknown type name"), so it never imports or calls Python. The archive's code is TorchScript,
run by TorchScript's interpreter, which can only call registered torch operators. One of
those reads a file: ``torch.from_file``, with which a model could return the bytes of a file
on the server; archives whose code calls it are refused.
"""

import re

from ptserve.loading.archive import ZipIndex
from ptserve.loading.detect import archive_globals

MAX_CODE_BYTES = 64 * 1024 * 1024
READS_FILES = re.compile(rb"\bfrom_file\b")
PICKLES = ("data.pkl", "constants.pkl")


def torchscript_problems(index: ZipIndex) -> list[str]:
    """Why serving this archive could reach outside the model, one line per code file."""
    return [
        f"{name}: calls torch.from_file, which reads a file on the server"
        for name in index.entries
        if name.startswith("code/")
        and name.endswith(".py")
        and READS_FILES.search(index.read(name, MAX_CODE_BYTES))
    ]


def torchscript_globals(index: ZipIndex) -> list[str]:
    """The globals the archive's pickles name beyond TorchScript's own classes (``__torch__``)
    and torch's weights-only defaults: TorchScript's unpickler refuses every one of them."""
    names: dict[str, None] = {}
    for record in PICKLES:
        if record in index.entries:
            for name in archive_globals(index, record):
                if not name.startswith("__torch__."):
                    names[name] = None
    return list(names)
