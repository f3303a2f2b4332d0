"""The errors a call raises: one class per kind of answer, all under `PrismError`.

The server answers every refusal with `{"error": "<message>"}` and an HTTP status (400
bad input, 401 no or wrong token, 403 not the admin token, 404 unknown model or object,
408 a body sent too slowly, 413 too large, 503 not ready / queue full, 504 an object not
ready in time, 507 the object store is full, 500 the work failed). A failed object (a
task, or an async inference, that failed after its retries) also says `kind` (such as
`InjectedFault`, `ShapeError`, `Panic`) and `attempts` (executions tried, retries
included).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Type

__all__ = [
    "PrismError",
    "PrismConnectionError",
    "ProtocolError",
    "BadRequestError",
    "UnauthorizedError",
    "ForbiddenError",
    "NotFoundError",
    "RequestTimeoutError",
    "TooLargeError",
    "UnavailableError",
    "GetTimeoutError",
    "StoreFullError",
    "ServerError",
    "ObjectFailedError",
]


class PrismError(Exception):
    """Any failed call. `status` is the HTTP status (None when the server never
    answered), `message` the server's `error` text, `kind` and `attempts` what a failed
    object says about its failure (None otherwise), `url` what was called."""

    def __init__(
        self,
        message: str,
        status: Optional[int] = None,
        *,
        kind: Optional[str] = None,
        attempts: Optional[int] = None,
        url: Optional[str] = None,
        body: Any = None,
    ) -> None:
        self.message = message
        self.status = status
        self.kind = kind
        self.attempts = attempts
        self.url = url
        self.body = body
        super().__init__(message)

    def __str__(self) -> str:
        where = f"{self.url}: " if self.url else ""
        status = f"server answered {self.status}: " if self.status is not None else ""
        extra = ""
        if self.kind is not None:
            extra = f" (kind {self.kind}, {self.attempts} attempt{'s' if self.attempts != 1 else ''})"
        return f"{where}{status}{self.message}{extra}"


class PrismConnectionError(PrismError, ConnectionError):
    """The server could not be reached, or the connection broke before an answer."""


class ProtocolError(PrismError):
    """The server answered something this client cannot read."""


class BadRequestError(PrismError, ValueError):
    """400: the request was refused as it is (which field, what was expected, what came)."""


class UnauthorizedError(PrismError):
    """401: the route needs the server's token (`Authorization: Bearer <token>`), or the
    token sent is wrong."""


class ForbiddenError(PrismError):
    """403: the route needs the admin token; the API token was sent."""


class NotFoundError(PrismError, KeyError):
    """404: no such model, or no such object (never stored, deleted, or expired)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return PrismError.__str__(self)


class RequestTimeoutError(PrismError):
    """408: the request body arrived too slowly."""


class TooLargeError(PrismError):
    """413: the body is over `server.max_request_bytes`, or the object over
    `object_store.max_object_bytes`."""


class UnavailableError(PrismError):
    """503: the server or the model is not ready, its queue is full, the request's
    deadline passed, or the server is shutting down. Retrying later may succeed."""


class GetTimeoutError(PrismError, TimeoutError):
    """504: the object was not ready within the timeout (like `ray.exceptions.GetTimeoutError`)."""


class StoreFullError(PrismError):
    """507: the object store cannot make room (memory, spill space, or object count)."""


class ServerError(PrismError):
    """500: the model or the work failed."""


class ObjectFailedError(ServerError):
    """500 for an object whose work failed (like `ray.exceptions.RayTaskError`): `kind` is
    the error's kind and `attempts` how many executions were tried."""


_BY_STATUS: Dict[int, Type[PrismError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    408: RequestTimeoutError,
    413: TooLargeError,
    503: UnavailableError,
    504: GetTimeoutError,
    507: StoreFullError,
    500: ServerError,
}


def error_from_answer(status: int, body: bytes, url: str) -> PrismError:
    """The error for an answer with a non-success `status`: the server's `error`
    message (or the raw body when it is not V2's error JSON), and for a failed object
    its `kind` and `attempts`."""
    parsed: Any = None
    message = body.decode("utf-8", errors="replace").strip() or f"HTTP {status}"
    kind: Optional[str] = None
    attempts: Optional[int] = None
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, str):
            message = err
        elif isinstance(err, dict) and isinstance(err.get("message"), str):  # /v1's form
            message = err["message"]
        if isinstance(parsed.get("kind"), str):
            kind = parsed["kind"]
        if isinstance(parsed.get("attempts"), int):
            attempts = parsed["attempts"]
    cls: Type[PrismError]
    if kind is not None:
        cls = ObjectFailedError
    else:
        cls = _BY_STATUS.get(status, PrismError)
    return cls(message, status, kind=kind, attempts=attempts, url=url, body=parsed)
