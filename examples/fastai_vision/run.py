"""A fastai vision Learner, end to end: train on digit images, export, convert, serve, upload.

    python examples/fastai_vision/run.py    # about a minute and a half on 2 cores; torchvision

Renders scikit-learn's 8x8 digits as 32x32 PNGs in one folder per class, trains a
``vision_learner`` (resnet18, random init: nothing is downloaded) with ``from_folder``, exports
it with ``learn.export()``, converts the export once into a pickle-free folder (``ptserve
convert``), starts ``ptserve serve`` on that folder on a free port and classifies held-out PNGs
uploaded as multipart files, then one more sent as base64 JSON. By hand:

    ptserve convert examples/fastai_vision/build/export.pkl examples/fastai_vision/build/digits
    ptserve serve examples/fastai_vision/build/digits     # no fastai needed from here on
    curl -s localhost:8000/predict -F file=@examples/fastai_vision/build/held_out/0-digit-4.png

fastai vision needs torchvision, which works beside ``torch==2.14.1 torchvision==0.29.1``
(``bash scripts/test-vision.sh`` builds such an environment in ``.venv-vision``).
"""

import argparse
import base64
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from ptserve.launch import launched

OUT = Path(__file__).resolve().parent / "build"
HELD_OUT = 8


def render(out: Path, count: int) -> None:
    """Digits as 32x32 PNGs: ``train/<digit>/<i>.png``, and the last ``HELD_OUT`` in
    ``held_out/<i>-digit-<digit>.png``."""
    digits = load_digits()
    for i, (pixels, digit) in enumerate(zip(digits.data[:count], digits.target, strict=False)):
        grey = (255 - pixels.reshape(8, 8) * 255 / 16).astype(np.uint8)
        image = Image.fromarray(grey, "L").resize((32, 32), Image.Resampling.NEAREST)
        held_out = i >= count - HELD_OUT
        path = out / (f"held_out/{i}-digit-{digit}.png" if held_out else f"train/{digit}/{i}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)


def train(out: Path, epochs: int) -> float:
    """Train and export; return the validation accuracy."""
    from fastai.vision.all import (
        ImageDataLoaders,
        Resize,
        accuracy,
        resnet18,
        set_seed,
        vision_learner,
    )

    set_seed(0)
    dls = ImageDataLoaders.from_folder(
        out / "train", valid_pct=0.2, seed=0, item_tfms=Resize(32), bs=64, num_workers=0
    )
    learn = vision_learner(dls, resnet18, pretrained=False, metrics=accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, 5e-3)
        learn.export(out / "export.pkl")
        return float(learn.validate()[1])


def convert(out: Path) -> Path:
    """``ptserve convert`` the export into ``out/digits`` (replacing an earlier one)."""
    folder = out / "digits"
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, "-m", "ptserve", "convert", str(out / "export.pkl"), str(folder)]
    subprocess.run(command, check=True)
    return folder


def serve_and_query(out: Path, folder: Path) -> list[tuple[str, str]]:
    """Serve the converted folder; upload the held-out PNGs, and send the first as base64
    JSON too."""
    files = sorted((out / "held_out").glob("*.png"))
    uploads = [("file", (f.name, f.read_bytes(), "image/png")) for f in files]
    as_json = {"instances": [{"image": base64.b64encode(files[0].read_bytes()).decode()}]}
    with (
        launched(str(folder)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        uploaded = client.post("/predict", files=uploads)
        uploaded.raise_for_status()
        sent = client.post("/predict", json=as_json)
        sent.raise_for_status()
    labels = [p["label"] for p in uploaded.json()["predictions"]]
    answers = [(f.name, label) for f, label in zip(files, labels, strict=True)]
    return [*answers, (f"{files[0].name} as base64", sent.json()["predictions"][0]["label"])]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images", type=int, default=1000, help="digits to render")
    args = parser.parse_args()
    render(args.out, args.images)
    accuracy = train(args.out, args.epochs)
    sys.stdout.write(f"validation accuracy {accuracy:.3f}; exported {args.out / 'export.pkl'}\n")
    for name, label in serve_and_query(args.out, convert(args.out)):
        sys.stdout.write(f"{name}: predicted {label}\n")
