"""Build one small model in every format ptserve serves, with the in-process outputs to expect."""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.export import Dim, export

from tests.nets import TinyNet

IN, OUT = 8, 3


@dataclass
class Artefact:
    """A saved model, the settings that serve it, and inputs with their expected outputs."""

    path: Path
    settings: dict[str, Any] = field(default_factory=dict)
    inputs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    expected: np.ndarray = field(default_factory=lambda: np.zeros(0))


def reference_net() -> TinyNet:
    torch.manual_seed(1)
    return TinyNet().eval()


def sample_inputs() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(5, IN)).astype(np.float32)


def build_all(folder: Path) -> dict[str, Artefact]:
    """Save the same TinyNet as pickle, state_dict, safetensors, TorchScript and torch.export."""
    net = reference_net()
    inputs = sample_inputs()
    with torch.no_grad():
        expected = net(torch.from_numpy(inputs)).numpy()
    shape = {"input_shape": [IN]}
    trusted = {"trust_modules": ["tests.nets"]}
    cls = {"model_class": "tests.nets:TinyNet", "model_kwargs": {"hidden": 16}}
    torch.save(net, folder / "pickled.pt")
    torch.save(net.state_dict(), folder / "weights.pth")
    save_file(net.state_dict(), folder / "weights.safetensors")
    torch.jit.script(net).save(str(folder / "scripted.pt"))
    program = export(net, (torch.zeros(2, IN),), dynamic_shapes={"x": {0: Dim("batch")}})
    torch.export.save(program, folder / "exported.pt2")
    made = {
        "pickle": Artefact(folder / "pickled.pt", {**trusted, **shape}),
        "state_dict": Artefact(folder / "weights.pth", {**cls, **shape}),
        "safetensors": Artefact(folder / "weights.safetensors", {**cls, **shape}),
        "torchscript": Artefact(folder / "scripted.pt", shape),
        "export": Artefact(folder / "exported.pt2", {}),
    }
    for artefact in made.values():
        artefact.inputs, artefact.expected = inputs, expected
    return made


def save_plain_mlp(path: Path) -> Artefact:
    """A whole pickled nn.Sequential: loads with no trust flags; signature from its first Linear."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(IN, 4), nn.ReLU(), nn.Linear(4, OUT)).eval()
    torch.save(net, path)
    inputs = sample_inputs()
    with torch.no_grad():
        expected = net(torch.from_numpy(inputs)).numpy()
    return Artefact(path, {}, inputs, expected)


class Exploit:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def save_malicious(path: Path, marker: Path) -> None:
    """A torch.save file whose unpickling would create ``marker``."""
    torch.save({"weights": torch.zeros(2), "payload": Exploit(marker)}, path)
