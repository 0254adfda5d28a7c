"""The ServeError hierarchy: every failure a client or operator can see has a status and a code.

Routes raise these; one function (``ServeError.render``) turns each into its response:
``{"error": message, "code": code, "detail": [...]}``.
"""

from typing import Any, ClassVar

import orjson
from starlette.responses import Response

RawHeaders = list[tuple[bytes, bytes]]
JSON_TYPE = (b"content-type", b"application/json")


class ServeError(Exception):
    """Base of every error ptserve reports to a client."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        detail: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.detail:
            body["detail"] = self.detail
        return body

    def render(self) -> tuple[int, RawHeaders, bytes]:
        """The one way an error becomes an HTTP response: status, raw headers and body."""
        headers = [JSON_TYPE]
        if self.headers:
            headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        return self.status_code, headers, orjson.dumps(self.body())

    def response(self) -> Response:
        """``render()`` as a Starlette response, for FastAPI's exception handlers."""
        status, headers, body = self.render()
        response = Response(body, status_code=status)
        response.raw_headers = [*headers, (b"content-length", str(len(body)).encode())]
        return response


class InvalidJSON(ServeError):
    status_code = 400
    code = "invalid_json"


class EmptyBody(ServeError):
    status_code = 400
    code = "empty_body"


class InvalidHeader(ServeError):
    status_code = 400
    code = "invalid_header"


class ClientDisconnected(ServeError):
    """The client went away before its answer was ready (nginx's 499); its work was dropped."""

    status_code = 499
    code = "client_closed_request"


class Unauthorized(ServeError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class BodyTooLarge(ServeError):
    status_code = 413
    code = "body_too_large"


class InvalidInput(ServeError):
    status_code = 422
    code = "invalid_input"


class UnsupportedMediaType(ServeError):
    status_code = 415
    code = "unsupported_media_type"


class NotFound(ServeError):
    """No route at this path."""

    status_code = 404
    code = "not_found"


class MethodNotAllowed(ServeError):
    status_code = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message, headers={"Allow": ", ".join(allowed)})


class InternalError(ServeError):
    """Anything unexpected; the traceback goes to the log with the request id, never here."""

    status_code = 500
    code = "internal_error"

    def __init__(self) -> None:
        super().__init__("internal server error; the server log has details")


class ModelNotFound(ServeError):
    status_code = 404
    code = "model_not_found"


class NotReady(ServeError):
    status_code = 503
    code = "not_ready"


class Overloaded(ServeError):
    """The queue is full; the client should retry after ``Retry-After`` seconds."""

    status_code = 503
    code = "overloaded"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class DeadlineExceeded(ServeError):
    status_code = 504
    code = "deadline_exceeded"


class ModelFailure(ServeError):
    """The model raised while computing a prediction; details go to the log only."""

    status_code = 500
    code = "model_error"


class ModelLoadError(Exception):
    """A model file cannot be served; the message is one line naming the file and the cause."""


class InvalidTensor(ServeError):
    """An Open Inference Protocol request whose tensors do not fit the model (V2 wants 400)."""

    status_code = 400
    code = "invalid_tensor"


class InvalidImage(ServeError):
    """An uploaded image that cannot be decoded: not an image, truncated, or corrupt."""

    status_code = 422
    code = "invalid_image"


class ImageTooLarge(ServeError):
    """An image with more pixels than ``max_image_pixels``, refused before it is decoded."""

    status_code = 413
    code = "image_too_large"


class HookFailure(ServeError):
    """A user hook raised or returned something unusable; details go to the log only."""

    status_code = 500
    code = "hook_error"


class InvalidForm(ServeError):
    """A multipart body that cannot be parsed, or has too many parts."""

    status_code = 400
    code = "invalid_form"


def describe_value(value: Any) -> str:
    """A JSON value as an error message names it: `a list of 3 items`, `null`, `'abc'`."""
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class LoadFailed(ServeError):
    """A model the repository API was asked to load failed to (what served before still
    serves); the message says why."""

    status_code = 400
    code = "load_failed"


class ControlUnavailable(ServeError):
    """The repository API cannot change models here (with several workers it would reach
    only one of them)."""

    status_code = 409
    code = "control_unavailable"


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__
