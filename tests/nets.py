"""Small model classes for tests: importable, so pickles and state_dicts can name them."""

import os
import threading
import time
from pathlib import Path

import torch
from torch import nn

from tests.guards import REQUEST_S, hang_guard


class TinyNet(nn.Module):
    """A custom module class (not a torch.nn building block): 8 inputs -> 3 outputs."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TwoInputs(nn.Module):
    """Two named inputs, two named outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 2)
        self.b = nn.Linear(3, 2)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> dict[str, torch.Tensor]:
        summed = self.a(image) + self.b(extra)
        return {"sum": summed, "norm": summed.norm(dim=1, keepdim=True)}


class FailsOnMarker(nn.Module):
    """Raises when any input value equals -999, to test model failures."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == -999).any()):
            raise RuntimeError("marker value seen")
        return self.linear(x)


class SequenceSum(nn.Module):
    """A variable-length input: (batch, length, 2) -> (batch, 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1)


GATE = threading.Event()
ENTERED = threading.Event()
HOLD = 1234.0


class GatedNet(nn.Module):
    """Identity on 2 values; a batch holding the value HOLD waits until GATE opens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == HOLD).any()):
            ENTERED.set()
            GATE.wait(hang_guard(REQUEST_S))
        return x * 1.0


class FileGatedNet(nn.Module):
    """Identity on 2 values; a batch holding HOLD waits until the file named by the
    TEST_GATE_FILE environment variable exists (lets a test hold a server's model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == HOLD).any()):
            gate = Path(os.environ["TEST_GATE_FILE"])
            deadline = time.monotonic() + hang_guard(REQUEST_S)
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return x * 1.0


class SleepyNet(nn.Module):
    """Identity on 2 values that takes 20 ms a batch (sleeping, as a big model releases the
    GIL), so that requests are queued and in the model when a test signals the server."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.02)
        return x * 1.0


class Wide(nn.Module):
    """``layers`` Linear(1024, 1024): 4 MiB of weights a layer, for memory tests."""

    def __init__(self, layers: int = 4, width: int = 1024) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(nn.Linear(width, width) for _ in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GatedFailingNet(nn.Module):
    """GatedNet that also raises on a sample holding -999: a failing batch on cue."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == HOLD).any()):
            ENTERED.set()
            GATE.wait(10)
        if bool((x == -999).any()):
            raise RuntimeError("marker value seen")
        return x * 1.0
