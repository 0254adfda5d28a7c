"""``ptserve convert`` on fastai vision exports (RGB from_folder; greyscale with a lambda
labeller; from_df with aug_transforms and ImageNet Normalize; multi-label, padded): the folders
predict what ``learn.predict`` does (probabilities to 1e-4), served in-process and, with fastai
blocked, by the real CLI; fastai's Resize is reproduced pixel for pixel; a transform outside the
supported set fails the conversion by name. Runs in the vision environment."""

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ptserve.convert import ConversionError
from ptserve.convert.command import convert
from ptserve.convert.manifest import Resize
from ptserve.convert.vision import resize
from tests.conftest import NEEDS_FASTAI, NEEDS_TORCHVISION, serving
from tests.e2e.conftest import running_ptserve
from tests.e2e.test_fastai_cli import without_fastai
from tests.fastai_learners import VisionExport

pytest.importorskip("fastai", reason=NEEDS_FASTAI)
pytest.importorskip("torchvision", reason=NEEDS_TORCHVISION)

pytestmark = pytest.mark.anyio
TOLERANCE = 1e-4
LEARNERS = ["rgb", "grey", "augmented", "multi_label"]


@pytest.fixture(scope="module")
def converted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[VisionExport, Path]]:
    """Every vision learner, converted once for the module."""
    folders = {}
    for name in LEARNERS:
        export: VisionExport = request.getfixturevalue(name)
        out = tmp_path_factory.mktemp(f"converted-{name}") / name
        convert(export.path, out)
        folders[name] = (export, out)
    return folders


def assert_equal_to_learn_predict(export: VisionExport, predictions: list[dict[str, Any]]) -> None:
    vocab = [str(v) for v in export.learn.dls.vocab]
    assert len(predictions) == len(export.images)
    for path, prediction in zip(export.images, predictions, strict=True):
        with export.learn.no_bar():
            decoded, _, probs = export.learn.predict(path)
        if "labels" in prediction:  # multi-label: the labels learn.predict decodes
            assert prediction["labels"] == [str(label) for label in decoded], path
        else:
            assert prediction["label"] == str(decoded), path
        assert list(prediction["probabilities"]) == vocab
        assert list(prediction["probabilities"].values()) == pytest.approx(
            probs.tolist(), abs=TOLERANCE
        ), path


@pytest.mark.parametrize("name", LEARNERS)
async def test_a_converted_vision_learner_predicts_what_learn_predict_does(
    converted: dict[str, tuple[VisionExport, Path]], name: str
) -> None:
    export, folder = converted[name]
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in export.images]
    instances = [{"image": base64.b64encode(p.read_bytes()).decode()} for p in export.images]
    async with serving(folder) as client:
        uploaded = await client.post("/predict", files=files)
        sent = await client.post("/predict", json={"instances": instances})
        meta = (await client.get(f"/models/{folder.name}")).json()
    for response in (uploaded, sent):
        assert response.status_code == 200, response.text
        assert_equal_to_learn_predict(export, response.json()["predictions"])
    assert (meta["format"], meta["handler"]) == ("converted", "converted fastai vision learner")
    assert json.loads((folder / "ptserve.json").read_text())["check"]["samples"] == 12


def test_the_manifests_say_what_each_learner_does(
    converted: dict[str, tuple[VisionExport, Path]],
) -> None:
    def manifest(name: str) -> dict[str, Any]:
        return json.loads((converted[name][1] / "ptserve.json").read_text())

    rgb, grey = manifest("rgb")["preprocessing"], manifest("grey")["preprocessing"]
    assert rgb["resize"] == {
        "height": 32, "width": 32, "method": "crop", "pad_mode": "reflection", "resample": "bilinear",
    }  # fmt: skip
    assert (rgb["mode"], rgb["divide"], rgb["normalize"]) == ("RGB", 255.0, None)
    assert (grey["mode"], grey["resize"]["height"]) == ("L", 28)
    augmented = manifest("augmented")["preprocessing"]["normalize"]
    assert augmented["means"] == pytest.approx([0.485, 0.456, 0.406])
    assert augmented["stds"] == pytest.approx([0.229, 0.224, 0.225])
    multi = manifest("multi_label")
    assert (
        multi["preprocessing"]["resize"]["method"],
        multi["preprocessing"]["resize"]["pad_mode"],
    ) == ("pad", "zeros")
    assert multi["decoding"] == {
        "activation": "sigmoid", "decode": "threshold", "threshold": 0.5,
        "vocab": ["even", "large", "odd", "small"],
    }  # fmt: skip


def test_a_converted_folder_serves_without_fastai(
    converted: dict[str, tuple[VisionExport, Path]], tmp_path: Path
) -> None:
    export, folder = converted["grey"]
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in export.images]
    env = without_fastai(tmp_path / "blocked")
    with (
        running_ptserve([str(folder)], tmp_path / "log", env) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        response = client.post("/predict", files=files)
    assert response.status_code == 200, response.text
    assert_equal_to_learn_predict(export, response.json()["predictions"])


def test_a_transform_outside_the_supported_set_fails_naming_it(
    rgb: VisionExport, tmp_path: Path
) -> None:
    from fastai.vision.augment import CropPad

    from tests.hostile_exports import load_genuine, save_like_export

    learn = load_genuine(rgb.path)
    learn.dls.valid.after_item.fs.insert(1, CropPad(24))
    export = save_like_export(learn, tmp_path / "export.pkl")
    with pytest.raises(
        ConversionError,
        match=r"the item transform fastai\.vision\.augment\.CropPad is not supported",
    ):
        convert(export, tmp_path / "out")
    assert not (tmp_path / "out").exists()


SIZES = [(32, 32), (48, 20), (20, 48), (7, 5), (101, 33), (64, 63)]
RESIZES = [
    (method, pad_mode, target)
    for method in ("crop", "squish", "pad")
    for pad_mode in ("zeros", "border", "reflection")
    for target in ((32, 32), (24, 40))
]


@pytest.mark.parametrize(("method", "pad_mode", "target"), RESIZES)
def test_resize_is_fastais_resize_pixel_for_pixel(
    method: str, pad_mode: str, target: tuple[int, int]
) -> None:
    from fastai.vision.augment import Resize as FastaiResize
    from fastai.vision.core import PILImage
    from PIL import Image

    height, width = target
    theirs = FastaiResize((height, width), method=method, pad_mode=pad_mode)
    ours = Resize(height=height, width=width, method=method, pad_mode=pad_mode, resample="bilinear")  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    for size in SIZES:
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGB")
        expected = np.asarray(theirs(PILImage(image), split_idx=1))
        got = np.asarray(resize(image, ours))
        assert got.shape == (height, width, 3)
        assert np.array_equal(got, expected), (size, method, pad_mode)
