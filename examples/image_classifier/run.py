"""A small CNN on digit images, end to end: render PNGs, train, export ``.pt2``, serve, upload.

    python examples/image_classifier/run.py          # about 25 s on 2 cores

Renders scikit-learn's 8x8 digits as 32x32 greyscale PNGs, reads them back through ptserve's
own image decoder (so training sees exactly what serving will), trains a small CNN, exports it
with ``torch.export`` (dynamic batch) beside a ``labels.txt``, starts ``ptserve serve`` on a free
port and classifies held-out PNGs uploaded as multipart files. By hand, the same is:

    ptserve serve examples/image_classifier/build/digits_cnn.pt2
    curl -s localhost:8000/predict -F file=@examples/image_classifier/build/png/0-digit-4.png
"""

import argparse
import io
import sys
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

from ptserve.images import image_spec, to_batch
from ptserve.launch import launched
from ptserve.settings import Settings
from ptserve.signature import Signature, TensorSpec

OUT = Path(__file__).resolve().parent / "build"
SIDE = 32
HELD_OUT = 300


def render(pixels: np.ndarray) -> bytes:
    """One 8x8 digit (0-16) as a 32x32 greyscale PNG, dark ink on white like a scan."""
    grey = (255 - pixels.reshape(8, 8) * 255 / 16).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey, "L").resize((SIDE, SIDE), Image.Resampling.NEAREST).save(buffer, "PNG")
    return buffer.getvalue()


def network() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )  # fmt: skip


def train(out: Path, epochs: int) -> float:
    """Render, train and export; return the held-out accuracy."""
    torch.manual_seed(0)
    digits = load_digits()
    pngs = [render(row) for row in digits.data]
    (out / "png").mkdir(parents=True, exist_ok=True)
    for i, png in enumerate(pngs[-HELD_OUT:][:8]):
        (out / "png" / f"{i}-digit-{digits.target[-HELD_OUT + i]}.png").write_bytes(png)
    # The serving preprocessing: greyscale, resized to 8x8, scaled to 0-1 (ptserve's defaults).
    spec = image_spec(Signature((TensorSpec("x", "float32", (1, 8, 8)),)), Settings())
    assert spec is not None
    images = torch.from_numpy(to_batch(pngs, spec, "png"))
    targets = torch.from_numpy(digits.target)
    x_train, y_train = images[:-HELD_OUT], targets[:-HELD_OUT]
    model = network()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.005)
    for _ in range(epochs):
        for batch in torch.randperm(len(x_train)).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        predicted = model(images[-HELD_OUT:]).argmax(1)
    accuracy = float((predicted == targets[-HELD_OUT:]).float().mean())
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (images[:2],), dynamic_shapes={"input": {0: batch}})
    torch.export.save(program, out / "digits_cnn.pt2")
    (out / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))
    return accuracy


def serve_and_query(out: Path) -> list[tuple[str, str]]:
    """Serve the export, upload the held-out PNGs; (file name, predicted label) pairs."""
    files = sorted((out / "png").glob("*.png"))
    uploads = [("file", (f.name, f.read_bytes(), "image/png")) for f in files]
    model = str(out / "digits_cnn.pt2")
    with launched(model) as url, httpx.Client(base_url=url, timeout=10) as client:
        response = client.post("/predict", files=uploads)
        response.raise_for_status()
        labels = [p["label"] for p in response.json()["predictions"]]
    return [(f.name, label) for f, label in zip(files, labels, strict=True)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    accuracy = train(args.out, args.epochs)
    sys.stdout.write(f"held-out accuracy {accuracy:.3f}; exported {args.out / 'digits_cnn.pt2'}\n")
    for name, label in serve_and_query(args.out):
        sys.stdout.write(f"{name}: predicted {label}\n")
