"""Model repositories for tests: folders of real saved models, one version at a time, and the
requests that reach them."""

import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from ptserve.settings import EXAMPLE_MODEL
from tests.nets import TinyNet

MARKED_WIDTH = 4
LABELS = EXAMPLE_MODEL.with_name("labels.txt")


def marked_net(marker: float, width: int = MARKED_WIDTH) -> nn.Linear:
    """A model whose every output is ``marker``: an answer says which version gave it."""
    net = nn.Linear(width, 2)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.fill_(marker)
    return net.eval()


def digits_variant(seed: int) -> nn.Module:
    """The bundled digits model, its weights moved a little (a "retrained" version); seed 0 is
    the bundled model as it is."""
    net: nn.Module = torch.load(EXAMPLE_MODEL, weights_only=False)
    if seed:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return net.eval()


def tiny_variant(seed: int) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().eval()


def add_version(
    root: Path, name: str, version: int, model: nn.Module, file: str = "model.pt"
) -> Path:
    """Save ``model`` as ROOT/NAME/VERSION/FILE the way a deployment should: written into a
    hidden staging folder, then renamed into place in one step."""
    stage = root / name / f".stage-{version}"
    stage.mkdir(parents=True)
    torch.save(model, stage / file)
    target = root / name / str(version)
    stage.rename(target)
    return target / file


def add_broken_version(root: Path, name: str, version: int) -> Path:
    """A version whose model file is not a model."""
    stage = root / name / f".stage-{version}"
    stage.mkdir(parents=True)
    (stage / "model.pt").write_bytes(b"these bytes are not a model")
    target = root / name / str(version)
    stage.rename(target)
    return target / "model.pt"


def write_config(root: Path, name: str, text: str) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "ptserve.toml").write_text(text)


def copy_labels(root: Path, name: str) -> None:
    shutil.copy(LABELS, root / name / "labels.txt")


def reference(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    """What ``model`` computes in-process for ``inputs``."""
    with torch.inference_mode():
        outputs: np.ndarray = model(torch.from_numpy(inputs.astype(np.float32))).numpy()
    return outputs


def v2_request(inputs: np.ndarray) -> dict[str, Any]:
    data = inputs.reshape(-1).tolist()
    return {
        "inputs": [{"name": "input", "shape": list(inputs.shape), "datatype": "FP32", "data": data}]
    }


def v2_outputs(response: httpx.Response) -> tuple[str, np.ndarray]:
    """The answering version and the first output."""
    assert response.status_code == 200, response.text
    body = response.json()
    output = body["outputs"][0]
    return body["model_version"], np.array(output["data"], np.float32).reshape(output["shape"])


def metric(text: str, name: str, **labels: str) -> list[float]:
    return [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]
