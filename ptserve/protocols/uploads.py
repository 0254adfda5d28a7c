"""Multipart uploads to ``/predict``: each file part is one instance, in order.

Only requests sent as ``multipart/form-data`` come here; JSON keeps its own fast path.
"""

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from ptserve.errors import InvalidForm, InvalidInput

MAX_FIELDS = 8
MAX_FIELD_BYTES = 1024


async def read_uploads(request: Request, max_files: int) -> tuple[list[bytes], int | None]:
    """The uploaded files' bytes and the optional ``top_k`` field; 4xx for a bad form."""
    try:
        form = await request.form(
            max_files=max_files, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES
        )
    except (HTTPException, MultiPartException) as exc:
        detail = exc.detail if isinstance(exc, HTTPException) else exc.message
        raise InvalidForm(f"malformed multipart body: {detail}") from None
    files: list[bytes] = []
    top_k: int | None = None
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append(await value.read())
            elif key == "top_k":
                top_k = _top_k(value)
            else:
                raise InvalidInput(f"{key}: unknown form field; send files, and optionally top_k")
    finally:
        await form.close()
    if not files:
        raise InvalidInput(
            "files: the form has no file; upload one or more, e.g. curl -F file=@cat.png"
        )
    return files, top_k


def _top_k(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise InvalidInput(f"top_k: expected a positive integer, got {value!r}")
    return int(value)
