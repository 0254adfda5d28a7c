"""Images for tests: encoded in memory, plus a tiny image model whose answer is predictable."""

import io
import json
import struct
import zlib
from pathlib import Path

import torch
from PIL import Image
from torch import nn

COLOURS = ["red", "green", "blue"]


def encoded(
    colour: tuple[int, ...] = (255, 0, 0),
    size: tuple[int, int] = (12, 10),
    mode: str = "RGB",
    fmt: str = "PNG",
) -> bytes:
    """A solid image of ``colour`` in ``fmt``."""
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` pixels with almost no data: a decompression bomb's
    shape, which must be refused from its header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def save_colour_model(folder: Path) -> Path:
    """A pickled nn.Sequential taking 3x8x8 images, giving each channel's mean; labels red,
    green, blue beside it. A solid red image is "red" with score softmax([1, 0, 0])."""
    folder.mkdir(parents=True, exist_ok=True)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    path = folder / "colours.pt"
    torch.save(model, path)
    (folder / "labels.json").write_text(json.dumps(COLOURS))
    return path


def large_png(width: int, height: int, colour: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    """A solid RGB PNG of ``width`` x ``height``, compressed row by row: 25 megapixels come to
    about 71 KB, and decode to a 100 MB buffer."""
    pixels = zlib.compressobj(9)
    row = b"\x00" + bytes(colour) * width  # filter type 0, then the pixels
    idat = b"".join(pixels.compress(row) for _ in range(height)) + pixels.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
