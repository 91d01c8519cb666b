"""Who may talk to the server and how much they may send: token check, body limit, refusals.

- :func:`check_bind` decides at start-up whether a host may be bound: loopback needs nothing;
  any other address needs a token or an explicit ``--insecure-no-auth``.
- :class:`TokenMiddleware` checks every request. Clients send ``Authorization: Bearer TOKEN``;
  trainers that can only change ``REWARD_SERVER`` put ``user:TOKEN@`` in front of ``host:port``,
  which ``requests`` turns into HTTP Basic auth (the password is compared with the token).
- Tokens may hold any Unicode: clients send them as UTF-8 (curl, most tools) or Latin-1 (Python's
  ``http.client``, so ``requests``, for both a Bearer header and ``user:TOKEN@`` Basic auth); the
  raw header bytes are compared with both encodings of the token, in constant time.
- The body limit and the in-flight budget live in :mod:`~firm_lite.server.admission`.
- :class:`RequestMetricsMiddleware` (outermost) counts every answer, refusals included.
- :class:`RequestRefused` is how any layer says "answer this status with this one line";
  :func:`refusal_response` renders it: a text body on the reference routes (what the reference
  server and its clients use), ``{"error": ...}`` JSON on the JSON API and the rest. The line is
  made safe to encode (a lone surrogate echoed from the input is escaped, never a 500).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from firm_lite.errors import UserError
from firm_lite.server.metrics import ServerMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KNOWN_ROUTES = ("/mode/score_execution", "/mode/score_consistency", "/v1/score", "/health", "/metrics")


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, insecure_no_auth: bool) -> str:
    """Refuse to expose an unauthenticated server; return the access line to print at start-up."""
    if token is not None and not token.strip():
        raise UserError("--token is empty: pass a secret string (or FIRM_LITE_TOKEN)")
    if token and insecure_no_auth:
        raise UserError("--token and --insecure-no-auth contradict each other: drop one")
    if token:
        return "access: token required on every request (Authorization: Bearer TOKEN, or user:TOKEN@host:port)"
    if is_loopback(host):
        return "access: loopback only, no token (only processes on this machine can connect)"
    if not insecure_no_auth:
        raise UserError(f"--host {host} can be reached from other machines: pass --token SECRET (clients send "
                        "'Authorization: Bearer SECRET' or use REWARD_SERVER=user:SECRET@host:port), "
                        "or --insecure-no-auth if the network is trusted")
    return (f"access: WARNING no authentication on {host} (--insecure-no-auth): anyone who can reach this "
            "port can use the critic")


class RequestRefused(Exception):
    """A request the server answers with ``status`` and a one-line ``message`` (no traceback)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def refusal_response(path: str, status: int, message: str, headers: dict[str, str] | None = None) -> Any:
    """The response for a refused request (see the module docstring for the body format)."""
    from starlette.responses import JSONResponse, PlainTextResponse

    message = " ".join(message.encode("utf-8", "backslashreplace").decode("utf-8").split())
    if path.startswith("/mode/"):
        return PlainTextResponse(message + "\n", status_code=status, headers=headers)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), as the raw bytes the client sent."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


def _token_forms(token: str) -> list[bytes]:
    forms = [token.encode("utf-8")]
    try:
        latin = token.encode("latin-1")
    except UnicodeEncodeError:
        return forms
    return forms if latin == forms[0] else [*forms, latin]


def token_matches(authorization: bytes | None, token: str) -> bool:
    """Bearer TOKEN, or Basic auth whose password is TOKEN (any user name); constant-time compare
    of the raw bytes with the token in UTF-8 and in Latin-1 (see the module docstring)."""
    if not authorization:
        return False
    scheme, _, value = authorization.strip().partition(b" ")
    value = value.strip()
    if scheme.lower() == b"basic":
        try:
            value = base64.b64decode(value, validate=True).partition(b":")[2]
        except (binascii.Error, ValueError):
            return False
    elif scheme.lower() != b"bearer":
        return False
    matched = False
    for form in _token_forms(token):  # every form compared: the time does not say which matched
        matched |= hmac.compare_digest(value, form)
    return matched


class TokenMiddleware:
    """401 for any HTTP request without the token."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.token and not token_matches(header(scope, b"authorization"), self.token):
            response = refusal_response(scope["path"], 401, "missing or wrong token: send 'Authorization: Bearer "
                                        "TOKEN' (or user:TOKEN@host:port in REWARD_SERVER)",
                                        {"WWW-Authenticate": 'Bearer realm="firm-lite"'})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RequestMetricsMiddleware:
    """Counts every HTTP answer (route, status, latency) in :class:`ServerMetrics`."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope["path"] if scope["path"] in KNOWN_ROUTES else "other"
            self.metrics.request_done(route, status["code"], time.perf_counter() - start)

