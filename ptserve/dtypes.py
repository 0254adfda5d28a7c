"""The dtype names a signature may use, without importing torch: the settings (and so the
``--workers`` supervisor, which never loads a model) need them before torch is imported."""

from typing import Literal

DType = Literal[
    "float32", "float64", "float16", "bfloat16",
    "int64", "int32", "int16", "int8", "uint8", "bool",
]  # fmt: skip
