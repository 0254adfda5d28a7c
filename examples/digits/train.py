"""Rebuild the bundled example model, deterministically, from scikit-learn's digits data.

    python examples/digits/train.py            # writes ptserve/example/

Writes ``digits.pt`` (a whole pickled ``nn.Sequential``, the seed's format), ``labels.txt`` and
``digits.example.npy`` (one real digit, which gives ptserve the input signature and the docs
their example). An instance is the 64 raw pixel values (0-16) of an 8x8 digit; the scaling
learned from the training data is folded into the first layer, so the model takes raw pixels.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

OUT = Path(__file__).resolve().parents[2] / "ptserve" / "example"
SEED = 0
EPOCHS = 300


def train(out: Path) -> float:
    """Train, fold the input scaling into the first layer, save; return test accuracy."""
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data.astype(np.float32), digits.target, test_size=0.25, random_state=SEED
    )
    mean, std = x_train.mean(0), x_train.std(0) + 1.0
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    xs = torch.from_numpy((x_train - mean) / std)
    ys = torch.from_numpy(y_train)
    for _ in range(EPOCHS):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(xs), ys).backward()
        optimiser.step()
    first = model[0]
    assert isinstance(first, nn.Linear)
    with torch.no_grad():  # W((x - m) / s) + b == (W / s) x + (b - W (m / s))
        scale = torch.from_numpy(1.0 / std)
        first.bias -= first.weight @ (torch.from_numpy(mean) * scale)
        first.weight *= scale
    model.eval()
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model, out / "digits.pt")
    np.save(out / "digits.example.npy", digits.data[:1].astype(np.float32))
    (out / "labels.txt").write_text("".join(f"{d}\n" for d in range(10)))
    return float(accuracy)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    accuracy = train(parser.parse_args().out)
    print(f"test accuracy {accuracy:.3f}")  # noqa: T201
