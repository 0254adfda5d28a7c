import shutil
from pathlib import Path

import pytest

from ptserve.errors import ModelLoadError
from ptserve.loading import inspect_file
from ptserve.loading.detect import detect_format
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
