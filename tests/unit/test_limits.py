"""Every parser of a model file's bytes stops at its limits with a one-line refusal: zip
directories, JSON, pickle opcodes, safetensors headers, TorchScript code, example arrays."""

import io
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ptserve.arrays import read_arrays
from ptserve.errors import ModelLoadError
from ptserve.loading import archive, detect, load_model
from ptserve.loading.archive import open_zip
from ptserve.loading.detect import detect_format, pickle_globals
from ptserve.loading.limits import json_depth, read_json
from ptserve.loading.safetensors_header import read_header
from ptserve.settings import Settings
from tests.artefacts import Artefact
from tests.hostile import hostile_safetensors, reads_server_file


def refusal(path: Path, **settings: object) -> str:
    """The one-line message with which ``path`` is refused at load."""
    with pytest.raises(ModelLoadError) as err:
        load_model(Settings(model_path=path, **settings))  # type: ignore[arg-type]
    message = str(err.value)
    assert "\n" not in message
    return message


# JSON


def test_json_nesting_is_bounded_without_exhausting_the_stack() -> None:
    with pytest.raises(ModelLoadError, match="nested deeper than 8 levels"):
        read_json(b"[" * 100_000 + b"]" * 100_000, "header", max_depth=8)
    with pytest.raises(ModelLoadError, match="nested deeper than 3 levels"):
        read_json(b'{"a": [[[1]]]}', "header", max_depth=3)
    assert read_json(b'{"a": [[1]]}', "header", max_depth=3) == {"a": [[1]]}
    assert json_depth([1, {"a": []}]) == 3


def test_json_that_is_not_json_is_one_line() -> None:
    with pytest.raises(ModelLoadError, match=r"header: not valid JSON"):
        read_json(b"\xff{", "header")


# zip archives


def zip_of(path: Path, entries: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("archive/../data.pkl", "not a plain relative path"),
        ("/archive/data.pkl", "not a plain relative path"),
        ("archive/da\x01ta.pkl", "not a plain relative path"),
        ("archive/" + "x" * 2000, "an entry name of 2008 characters"),
    ],
)
def test_entry_names_must_be_plain(name: str, cause: str, tmp_path: Path) -> None:
    path = zip_of(tmp_path / "m.pt", {"archive/version": b"3\n", name: b"x"})
    with pytest.raises(ModelLoadError, match=cause):
        open_zip(path)


def test_entry_count_is_bounded_before_the_directory_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = zip_of(tmp_path / "m.pt", {f"archive/{i}": b"" for i in range(10)})
    monkeypatch.setattr(archive, "MAX_ZIP_ENTRIES", 9)
    with pytest.raises(ModelLoadError, match="lists 10 entries"):
        open_zip(path)


def test_a_compression_bomb_is_refused(tmp_path: Path) -> None:
    path = zip_of(
        tmp_path / "bomb.pt", {"archive/data.pkl": bytes(20_000_000)}, zipfile.ZIP_DEFLATED
    )
    assert path.stat().st_size < 100_000
    message = refusal(path)
    assert "would inflate" in message
    assert "20000000" in message


def test_a_duplicated_entry_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"a")
        with pytest.warns(UserWarning, match="Duplicate name"):
            z.writestr("archive/data.pkl", b"b")
    assert "two entries named archive/data.pkl" in refusal(path)


def test_an_entry_larger_than_its_header_says_is_refused(tmp_path: Path) -> None:
    path = zip_of(tmp_path / "m.pt", {"archive/data.pkl": b"0123456789"})
    data = bytearray(path.read_bytes())
    # the central directory's uncompressed size of the one entry: 10 -> 4
    at = data.rfind(b"PK\x01\x02") + 24
    data[at : at + 4] = struct.pack("<L", 4)
    data[at - 4 : at] = struct.pack("<L", 4)  # compressed size too, so it looks stored
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"corrupt|larger than its header"):
        open_zip(path).read("data.pkl", 100)


def test_a_zip64_record_without_its_locator_is_corrupt(tmp_path: Path) -> None:
    path = zip_of(tmp_path / "m.pt", {"archive/data.pkl": b"x"})
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    data[end + 10 : end + 12] = b"\xff\xff"  # entry count: "see the zip64 record"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="zip64 directory without its locator"):
        open_zip(path)


def test_a_nested_archive_is_named_by_its_entry(tmp_path: Path) -> None:
    inner = io.BytesIO()
    torch.save({"a": torch.zeros(1)}, inner)
    index = open_zip(tmp_path / "outer.pt2", ("data/sample.pt", inner.getvalue()))
    assert index.path == f"{tmp_path / 'outer.pt2'}!data/sample.pt"
    assert "data.pkl" in index.entries


# pickles


def test_the_pickle_opcode_scan_is_bounded(
    artefacts: dict[str, Artefact], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(detect, "MAX_PICKLE_OPS", 10)
    with pytest.raises(ModelLoadError, match=r"data\.pkl has more than 10 opcodes"):
        pickle_globals(artefacts["pickle"].path)


def test_the_pickle_record_size_is_bounded(
    artefacts: dict[str, Artefact], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(detect, "MAX_PICKLE_BYTES", 16)
    with pytest.raises(
        ModelLoadError, match=r"entry data.pkl is \d+ bytes; ptserve reads at most 16"
    ):
        detect_format(artefacts["pickle"].path)


# safetensors

SAFETENSORS_CAUSES = {
    "deep_nesting": "JSON nested deeper than 8 levels",
    "past_the_end": "tensor 'w' lies outside the file's data",
    "overlapping": "tensor 'b' overlaps another",
    "wrong_size": "holds 16 bytes, not the 1000 F32 values",
    "unknown_dtype": "unknown dtype 'PYOBJ'",
    "not_an_object": "unknown model format",
    "huge_header": "unknown model format",
}


@pytest.fixture(scope="module")
def bad_safetensors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return hostile_safetensors(tmp_path_factory.mktemp("safetensors"))


@pytest.mark.parametrize("name", list(SAFETENSORS_CAUSES))
def test_hostile_safetensors_headers_are_refused_in_one_line(
    name: str, bad_safetensors: dict[str, Path]
) -> None:
    path = bad_safetensors[name]
    message = refusal(path, model_class="tests.nets:TinyNet", input_shape=[8])
    assert SAFETENSORS_CAUSES[name] in message
    assert message.startswith(str(path))


def test_a_safetensors_header_is_read_as_data(artefacts: dict[str, Artefact]) -> None:
    header = read_header(artefacts["safetensors"].path)
    assert header.tensors["body.0.weight"] == ("F32", (16, 8))
    assert header.elements == 8 * 16 + 16 + 16 * 3 + 3


# TorchScript


def test_torchscript_that_reads_server_files_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"\x07")
    attack = reads_server_file(tmp_path, secret)
    message = refusal(attack.path, input_shape=[1])
    assert ".py: calls torch.from_file, which reads a file on the server" in message
    assert "--trust-pickle" in message
    assert attack.control is not None
    assert attack.control(attack.path).tolist() == [7.0]  # plain torch does read the file


# example arrays beside a model


def npy_claiming(shape: tuple[int, ...], payload: bytes) -> bytes:
    """An .npy whose header states ``shape`` (float32) but which holds only ``payload``."""
    buffer = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


def test_example_arrays_are_read_as_saved(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.ones((2, 3), np.float32))
    np.savez_compressed(tmp_path / "two.npz", a=np.ones((2, 3)), b=np.zeros(2, np.int64))
    one = read_arrays(tmp_path / "one.npy")
    assert isinstance(one, np.ndarray)
    assert one.shape == (2, 3)
    two = read_arrays(tmp_path / "two.npz")
    assert isinstance(two, dict)
    assert {k: v.shape for k, v in two.items()} == {"a": (2, 3), "b": (2,)}


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (lambda p: p.write_bytes(npy_claiming((10**12,), bytes(16))), "claims (1000000000000,)"),
        (lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), "holds Python objects"),
        (lambda p: zip_of(p, {"a.npy": bytes(50_000_000)}, zipfile.ZIP_DEFLATED), "inflate"),
        (lambda p: zip_of(p, {f"{i}.npy": b"" for i in range(1025)}), "1025 arrays"),
        (lambda p: p.write_bytes(b"not an array"), "magic"),
    ],
)
def test_hostile_example_arrays_are_refused_before_numpy_allocates(
    make: Any, cause: str, tmp_path: Path
) -> None:
    path = tmp_path / "model.example.npy"
    make(path)
    with pytest.raises(ValueError, match=re.escape(cause)):
        read_arrays(path)
