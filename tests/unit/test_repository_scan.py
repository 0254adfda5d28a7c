"""A repository folder as found: layouts, per-model settings, version policy, and escapes."""

import os
from pathlib import Path

import pytest

from ptserve.model_config import MODEL_KEYS, VersionPolicy, read_model_config
from ptserve.repository import ModelProblem, ModelSource, is_repository, scan
from ptserve.settings import Settings
from tests.repos import add_version, marked_net, write_config


def found(root: Path, **settings: object) -> dict[str, ModelSource | ModelProblem]:
    return scan(Settings(model_path=root, **settings))


def source(root: Path, name: str) -> ModelSource:
    model = found(root)[name]
    assert isinstance(model, ModelSource), model
    return model


def problem(root: Path, name: str) -> str:
    model = found(root)[name]
    assert isinstance(model, ModelProblem), model
    return model.reason


def test_versioned_and_unversioned_models(tmp_path: Path) -> None:
    add_version(tmp_path, "a", 1, marked_net(1))
    add_version(tmp_path, "a", 12, marked_net(12), file="weights.pth")
    (tmp_path / "a" / "12" / "labels.txt").write_text("x\ny\n")
    (tmp_path / "a" / "12" / "weights.example.npy").write_bytes(b"")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.pt2").write_bytes(b"")
    (tmp_path / "b" / "notes.md").write_text("not a model")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "README.txt").write_text("files at the top are not models")
    models = found(tmp_path)
    assert sorted(models) == ["a", "b"]
    a, b = source(tmp_path, "a"), source(tmp_path, "b")
    assert sorted(a.versions) == [1, 12]
    assert a.versions[12].path == tmp_path / "a" / "12" / "weights.pth"
    assert b.versions[1].path == tmp_path / "b" / "model.pt2"
    assert a.settings_for(1).model_name == "a"
    assert a.settings_for(1).model_path == tmp_path / "a" / "1" / "model.pt"


def test_a_single_file_is_a_repository_of_one(tmp_path: Path) -> None:
    path = tmp_path / "digits.pt"
    path.write_bytes(b"x")
    assert not is_repository(path)
    models = scan(Settings(model_path=path, name="mine"))
    assert list(models) == ["mine"]
    assert models["mine"].versions[1].path == path  # type: ignore[union-attr]


def test_a_converted_folder_is_a_model_not_a_repository(tmp_path: Path) -> None:
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "ptserve.json").write_text("{}")
    (converted / "model.pt2").write_bytes(b"")
    assert not is_repository(converted)
    root = tmp_path / "repo"
    (root / "m" / "3").mkdir(parents=True)
    for folder in (root / "m" / "3", root / "u"):  # a version, and an unversioned model
        folder.mkdir(exist_ok=True)
        (folder / "ptserve.json").write_text("{}")
        (folder / "model.pt2").write_bytes(b"")
    assert source(root, "m").versions[3].path == root / "m" / "3"
    assert source(root, "u").versions[1].path == root / "u"


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"m/model.pt": "", "m/1/model.pt": ""}, "holds version folders and a model file"),
        ({"m/labels.txt": ""}, "holds no model file and no version folder"),
        ({"bad name/model.pt": ""}, "is not a model name"),
    ],
)
def test_model_folders_that_cannot_be_served(
    tmp_path: Path, layout: dict[str, str], message: str
) -> None:
    for relative, text in layout.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    name = next(iter(layout)).split("/")[0]
    assert message in problem(tmp_path, name)


def test_version_folders_with_no_or_several_model_files(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "labels.txt").write_text("a\n")
    (tmp_path / "m" / "2").mkdir()
    (tmp_path / "m" / "2" / "a.pt").write_bytes(b"")
    (tmp_path / "m" / "2" / "b.pt").write_bytes(b"")
    (tmp_path / "m" / "01").mkdir()  # not a version: leading zero
    m = source(tmp_path, "m")
    assert sorted(m.versions) == [1, 2]
    assert m.versions[1].problem == "m/1/ holds no model file"
    assert m.versions[2].problem == (
        "m/2/ holds several model files (a.pt, b.pt); keep one per version folder"
    )


def test_stamps_change_when_files_do(tmp_path: Path) -> None:
    path = add_version(tmp_path, "m", 1, marked_net(1))
    before = source(tmp_path, "m").identity(1)
    assert source(tmp_path, "m").identity(1) == before
    write_config(tmp_path, "m", "max_batch_size = 4\n")
    after_config = source(tmp_path, "m").identity(1)
    assert after_config != before
    os.utime(path, ns=(1, 1))
    assert source(tmp_path, "m").identity(1) != after_config


def test_symlinks_and_dot_dots_out_of_the_repository_are_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "repo", tmp_path / "outside"
    outside.mkdir()
    add_version(outside, "x", 1, marked_net(1))
    (outside / "labels.txt").write_text("secret\n")
    add_version(root, "inside", 1, marked_net(1))
    (root / "linked_model").symlink_to(outside / "x")  # a model folder elsewhere
    (root / "file" / "1").mkdir(parents=True)
    (root / "file" / "1" / "model.pt").symlink_to(outside / "x" / "1" / "model.pt")
    (root / "version").mkdir()
    (root / "version" / "1").symlink_to(outside / "x" / "1")
    add_version(root, "sidecar", 1, marked_net(1))
    (root / "sidecar" / "1" / "labels.txt").symlink_to(outside / "labels.txt")
    write_config(root, "config", 'labels = "../../outside/labels.txt"\n')
    add_version(root, "config", 1, marked_net(1))
    (root / "alias").symlink_to(root / "inside")  # inside the repository: fine
    models = found(root)
    assert "resolves outside the repository" in problem(root, "linked_model")
    for name in ("file", "version", "sidecar"):
        model = models[name]
        assert isinstance(model, ModelSource)
        reason = model.versions[1].problem
        assert reason is not None
        assert "resolves outside the repository" in reason, name
    assert "labels '../../outside/labels.txt': resolves outside the repository" in problem(
        root, "config"
    )
    assert source(root, "alias").versions[1].path == root / "alias" / "1" / "model.pt"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = 9000\n", "m/ptserve.toml: 'port' is a server-wide setting"),
        ("workers = 2\n", "'workers' is a server-wide setting"),
        ("api_key_file = 'k'\n", "'api_key_file' is a server-wide setting"),
        ("max_bach_size = 3\n", "unknown setting 'max_bach_size' (did you mean 'max_batch_size'?)"),
        ("max_batch_size = 0\n", "m/ptserve.toml: max_batch_size: Input should be greater than 0"),
        ("execution = 'gpu'\n", "execution: Input should be 'auto', 'thread' or 'inline'"),
        ("version_policy = 'newest'\n", "version_policy: Value error, 'newest' is no policy"),
        ("version_policy = { latest = 1, all = true }\n", "give one of latest, all or specific"),
        ("max_batch_size = \n", "m/ptserve.toml: not valid TOML"),
    ],
)
def test_per_model_settings_are_validated_strictly(tmp_path: Path, text: str, message: str) -> None:
    write_config(tmp_path, "m", text)
    add_version(tmp_path, "m", 1, marked_net(1))
    assert message in problem(tmp_path, "m")


def test_per_model_settings_override_the_servers(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        "m",
        'max_batch_size = 4\nlabels = "labels.txt"\ntrust_modules = ["tests.nets"]\n'
        "version_policy = { latest = 2 }\n",
    )
    base = Settings(model_path=tmp_path, max_batch_size=16, timeout_ms=500)
    config = read_model_config(tmp_path / "m", tmp_path.resolve(), base)
    assert config.settings.max_batch_size == 4
    assert config.settings.timeout_ms == 500  # the server's, where the model says nothing
    assert config.settings.labels == (tmp_path / "m" / "labels.txt").resolve()
    assert config.settings.trust_modules == ["tests.nets"]
    assert config.settings.name == "m"
    assert config.policy == VersionPolicy(latest=2)


@pytest.mark.parametrize(
    ("policy", "available", "served"),
    [
        ({}, [1, 2, 3], [3]),
        ("latest", [1, 2, 3], [3]),
        ({"latest": 2}, [3, 1, 2], [3, 2]),
        ("all", [2, 1], [2, 1]),
        ({"specific": [1, 3, 5]}, [1, 2, 3], [3, 1]),
        ({"latest": 2}, [], []),
    ],
)
def test_version_policies(policy: object, available: list[int], served: list[int]) -> None:
    assert VersionPolicy.model_validate(policy).select(available) == served


def test_every_per_model_key_is_a_setting() -> None:
    assert set(Settings.model_fields) >= MODEL_KEYS
