"""How the server answers what went wrong: the status, message and headers of an exception raised while
answering a request, and the framework's own errors (a bad query parameter, 405, 404) in the rerank
routes' error shapes."""
from __future__ import annotations

import json
from typing import Optional

from ..selection.steps import ModelOutputError
from .engine import DeadlineExceeded, EngineClosed, Overloaded
from .rerank import RerankError
from .schema import HTTPError

CLIENT_CLOSED = 499  # nginx's "client closed request": logged in /metrics, never read by anyone


async def until_disconnected(request) -> None:
    for _ in range(10**9):  # bounded only by the connection: each receive waits for a message
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class ClientGone(Exception):
    pass


def error_status(e: BaseException, timeout_ms=None) -> tuple:
    """(status, message, headers) of an exception raised while answering a request."""
    from starlette.requests import ClientDisconnect

    if isinstance(e, HTTPError):
        return e.status, str(e), e.headers
    if isinstance(e, RerankError):
        return e.status, str(e), e.headers
    if isinstance(e, ModelOutputError):  # a ValueError, but the server's model is at fault, not the request
        return 500, str(e), {}
    if isinstance(e, (ValueError, TypeError)):
        return 422, str(e), {}
    if isinstance(e, Overloaded):
        return 429, str(e), {"Retry-After": str(int(e.retry_after))}
    if isinstance(e, DeadlineExceeded):
        return 504, f"deadline exceeded ({timeout_ms} ms): {e}", {}
    if isinstance(e, EngineClosed):
        return 503, str(e), {}
    if isinstance(e, (ClientGone, ClientDisconnect)):
        return CLIENT_CLOSED, "client closed the request", {}
    return 500, f"{type(e).__name__}: {e}", {}


# Framework-level errors (a bad query parameter, 405, 404) on the rerank routes come in that API's error
# shape, as its clients expect; elsewhere FastAPI's own {"detail": ...}.
RERANK_PATHS = {"/v1/rerank": "cohere-v1", "/v2/rerank": "cohere-v2", "/rerank": "tei"}


def rerank_api(path: str) -> Optional[str]:
    """The rerank API whose error shape a path answers in (None: FastAPI's own); paths under a rerank
    route too, so that a 404 there reads as its clients expect."""
    for prefix, api in RERANK_PATHS.items():
        if path == prefix or path.startswith(prefix + "/"):
            return api
    return None


def framework_error_message(exc) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # a RequestValidationError: one line per bad parameter, in the user's names
        parts = []
        for err in errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}, got {json.dumps(err.get('input'), default=str)}")
        return "; ".join(parts) or "invalid request"
    return str(getattr(exc, "detail", exc))
