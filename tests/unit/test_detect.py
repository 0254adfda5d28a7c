import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from ptserve.errors import ModelLoadError
from ptserve.loading import inspect_file
from ptserve.loading.detect import _globals_in, detect_format, pickle_globals
from tests.artefacts import Artefact


@pytest.mark.parametrize("fmt", ["pickle", "state_dict", "safetensors", "torchscript", "export"])
def test_each_format_is_detected_from_content_not_suffix(
    fmt: str, artefacts: dict[str, Artefact], tmp_path: Path
) -> None:
    renamed = tmp_path / "model.bin"
    shutil.copy(artefacts[fmt].path, renamed)
    assert detect_format(renamed) == fmt


def test_facts_carry_size_and_sha256(artefacts: dict[str, Artefact]) -> None:
    import hashlib

    path = artefacts["export"].path
    facts = inspect_file(path)
    assert facts.size_bytes == path.stat().st_size
    assert facts.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"hello, I am not a model\n", "unknown model format"),
        (b"", "unknown model format"),
        (b"\x80\x02}q\x00.", "legacy"),
        (b"PK\x03\x04" + b"\x00" * 40, "corrupt or truncated archive"),
    ],
)
def test_unknown_and_broken_files_are_refused(content: bytes, cause: str, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=cause) as err:
        detect_format(path)
    assert str(path) in str(err.value)


def test_truncated_torch_save_is_corrupt(artefacts: dict[str, Artefact], tmp_path: Path) -> None:
    data = artefacts["pickle"].path.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"cut\.pt: corrupt or truncated"):
        detect_format(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such model file"):
        inspect_file(tmp_path / "nope.pt")


# The pickle global scanner: reads opcodes only, never unpickles.


def test_protocol_4_globals_are_listed_once_in_first_seen_order(tmp_path: Path) -> None:
    import collections

    # The second deque is a memo fetch of the class; defaultdict's STACK_GLOBAL gets its
    # module string "collections" from the memo (BINGET), its name pushed just before.
    obj = {
        "a": collections.deque(),
        "b": collections.defaultdict(list),
        "c": collections.deque([1]),
    }
    torch.save(obj, tmp_path / "p4.pt", pickle_protocol=4)
    assert pickle_globals(tmp_path / "p4.pt") == [
        "collections.deque",
        "collections.defaultdict",
        "builtins.list",
    ]
    assert detect_format(tmp_path / "p4.pt") == "pickle"


def test_protocol_2_names_are_python_3_names(tmp_path: Path) -> None:
    # Protocol 2 writes "__builtin__ frozenset" and "__builtin__ xrange" (for range).
    torch.save({"f": frozenset({1}), "r": range(3)}, tmp_path / "p2.pt", pickle_protocol=2)
    assert pickle_globals(tmp_path / "p2.pt") == ["builtins.frozenset", "builtins.range"]
    assert _globals_in(pickle.dumps({1, 2}, protocol=2)) == ["builtins.set"]


def test_a_pickle_with_pop_is_scanned_past_the_pop(tmp_path: Path) -> None:
    import collections
    import pickletools

    # A tuple inside itself (through a list): the pickler writes POP POP, then a later global.
    inner: list[object] = []
    loop = (inner, collections.deque())
    inner.append(loop)
    torch.save([loop, range(2)], tmp_path / "pop.pt", pickle_protocol=2)
    with zipfile.ZipFile(tmp_path / "pop.pt") as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    assert "POP" in {op.name for op, _, _ in pickletools.genops(data)}
    assert pickle_globals(tmp_path / "pop.pt") == ["collections.deque", "builtins.range"]


def data_pkl_zip(path: Path, data: bytes) -> Path:
    """A zip shaped like torch.save's, with ``data`` as its pickle."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x04K\x01K\x02\x93.",  # STACK_GLOBAL of two ints
        b"\x80\x04\x8c\x0bcollectionsK\x02\x93.",  # a module string, then an int
        b"\x80\x04K\x01\x94\x8c\x05dequeh\x00\x93.",  # an int memoized, then fetched
    ],
)
def test_a_stack_global_of_non_strings_is_corrupt(data: bytes, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not plain strings"):
        _globals_in(data)
    path = data_pkl_zip(tmp_path / "odd.pt", data)
    with pytest.raises(ModelLoadError, match=r"odd\.pt: corrupt torch\.save file"):
        pickle_globals(path)
    with pytest.raises(ModelLoadError, match="corrupt"):
        detect_format(path)


def test_a_frame_boundary_inside_a_stack_global_is_not_corrupt() -> None:
    import collections
    import pickletools

    # 65492 bytes of padding end the first 64 KiB frame just after the memo fetch of
    # "collections" for deque's STACK_GLOBAL: BINGET, FRAME, SHORT_BINUNICODE 'deque'.
    obj = [b"x" * 65492, collections.OrderedDict(), collections.deque()]
    data = pickle.dumps(obj, protocol=4)
    ops = [op.name for op, _, _ in pickletools.genops(data)]
    assert ops[ops.index("FRAME", 2) - 1 : ops.index("FRAME", 2) + 2] == [
        "BINGET",
        "FRAME",
        "SHORT_BINUNICODE",
    ]
    assert _globals_in(data) == ["collections.OrderedDict", "collections.deque"]
