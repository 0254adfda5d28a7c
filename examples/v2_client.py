"""Classify a handwritten digit through the Open Inference Protocol with ptserve's client.

Start a server first (``ptserve serve`` serves the bundled digits model), then run
``python examples/v2_client.py`` (``--url`` for a server elsewhere). The client sends and
receives binary tensors; it takes numpy arrays or torch tensors and returns numpy arrays.
"""

import argparse
from importlib.resources import files

import numpy as np

from ptserve.client import Client


def main() -> None:
    parser = argparse.ArgumentParser(description="Classify a digit on a ptserve server.")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    url = parser.parse_args().url

    # One 8x8 digit as 64 raw pixel values (0-16): a batch of one, shape (1, 64).
    with (files("ptserve") / "example" / "digits.example.npy").open("rb") as saved:
        pixels = np.load(saved)

    with Client(url) as client:  # the model: the one the server serves ("digits")
        metadata = client.metadata()
        outputs = client.infer(pixels)  # {"output": array of shape (1, 10)}

    logits = outputs["output"]
    print(f"model {metadata['name']!r} takes {metadata['inputs']}")  # noqa: T201
    print("logits", " ".join(f"{value:.2f}" for value in logits[0]))  # noqa: T201
    print(f"predicted digit: {int(logits.argmax(axis=1)[0])}")  # noqa: T201


if __name__ == "__main__":
    main()
