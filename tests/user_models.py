"""A user's own folder, made the way people make it: a training script that defines its model
classes and saves with ``torch.save(model, ...)`` (so the pickle names ``__main__.Net``), the
same classes copied into a module, and a two-input model.

Everything is written and saved by running the script itself in a subprocess, as the user
would (``python train.py``), with the folder as the working directory.
"""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, hidden), nn.ReLU())
        self.head = Head(hidden)

    def forward(self, x):
        return self.head(self.body(x))


class Head(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        return self.fc(x)


class Pair(nn.Module):
    """Two inputs: a [6] and b [3, 4]."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.a = nn.Linear(6, hidden)
        self.b = nn.Linear(12, hidden)

    def forward(self, a, b):
        return self.a(a) + self.b(b.flatten(1))
'''

TRAINING = """
if __name__ == "__main__":  # training, as a tutorial writes it; importing the module skips it
    import numpy as np

    torch.manual_seed(0)
    net, pair = Net().eval(), Pair(hidden=2).eval()
    torch.save(net, "model.pt")
    torch.save(pair, "pair.pt")
    torch.save(pair.state_dict(), "pair_weights.pt")
    x, a, b = torch.randn(3, 6), torch.randn(3, 6), torch.randn(3, 3, 4)
    with torch.no_grad():
        np.savez("expected.npz", x=x, net=net(x), a=a, b=b, pair=pair(a, b))
"""


@dataclass(frozen=True)
class UserFolder:
    """What the training script left behind, and the outputs to expect from it."""

    folder: Path
    expected: dict[str, np.ndarray[Any, Any]]

    @property
    def model(self) -> Path:
        """``Net`` saved whole from ``train.py``: its pickle names ``__main__.Net``."""
        return self.folder / "model.pt"


def make_user_folder(folder: Path) -> UserFolder:
    """``train.py`` (classes + guarded training) run in ``folder``, and ``netdef.py`` (the
    classes alone, as the README tells users to copy them)."""
    (folder / "train.py").write_text(CLASSES + TRAINING)
    (folder / "netdef.py").write_text(CLASSES)
    subprocess.run([sys.executable, "train.py"], cwd=folder, check=True)
    with np.load(folder / "expected.npz") as saved:
        expected = {key: saved[key] for key in saved.files}
    return UserFolder(folder, expected)
