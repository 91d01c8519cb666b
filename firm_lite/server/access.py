"""Who may talk to the server and how much they may send: token check, body limit, refusals.

- :func:`check_bind` decides at start-up whether a host may be bound: loopback needs nothing;
  any other address needs a token or an explicit ``--insecure-no-auth``.
- :class:`TokenMiddleware` checks every request. Clients send ``Authorization: Bearer TOKEN``;
  trainers that can only change ``REWARD_SERVER`` put ``user:TOKEN@`` in front of ``host:port``,
  which ``requests`` turns into HTTP Basic auth (the password is compared with the token).
- :class:`BodyLimitMiddleware` refuses bodies over the limit with 413, before the app buffers
  them: at once from ``Content-Length``, or while streaming a chunked body. It reads and drops up
  to one more limit's worth of the body first, so the client is reading when the 413 arrives
  (a server that hangs up mid-upload makes the client see a broken pipe, not the 413).
- :class:`RequestMetricsMiddleware` (outermost) counts every answer, refusals included.
- :func:`refusal_response` renders a refusal: a text body on the reference routes (what the
  reference server and its clients use), ``{"error": ...}`` JSON on the JSON API and the rest.
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


def refusal_response(path: str, status: int, message: str, headers: dict[str, str] | None = None) -> Any:
    """The response for a refused request (see the module docstring for the body format)."""
    from starlette.responses import JSONResponse, PlainTextResponse

    if path.startswith("/mode/"):
        return PlainTextResponse(message + "\n", status_code=status, headers=headers)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


def token_matches(authorization: bytes | None, token: str) -> bool:
    """Bearer TOKEN, or Basic auth whose password is TOKEN (any user name); constant-time compare."""
    if not authorization:
        return False
    scheme, _, value = authorization.decode("latin-1").strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.encode("utf-8"), token.encode("utf-8"))


class TokenMiddleware:
    """401 for any HTTP request without the token."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.token and not token_matches(_header(scope, b"authorization"), self.token):
            response = refusal_response(scope["path"], 401, "missing or wrong token: send 'Authorization: Bearer "
                                        "TOKEN' (or user:TOKEN@host:port in REWARD_SERVER)",
                                        {"WWW-Authenticate": 'Bearer realm="firm-lite"'})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes`` (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, size: str) -> str:
        return (f"request body of {size} is over this server's limit of {self.max_bytes:,} bytes (--max-body-mb); "
                "send smaller batches")

    async def _drain(self, receive: Receive, already: int) -> None:
        seen = already
        while seen <= 2 * self.max_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            if int(length) <= 2 * self.max_bytes:
                await self._drain(receive, 0)
            await refusal_response(scope["path"], 413, self._message(f"{int(length):,} bytes"))(scope, receive, send)
            return
        from firm_lite.server.protocol import RequestRefused

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await self._drain(receive, received)
                    raise RequestRefused(413, self._message(f"over {received:,} bytes"))
            return message

        await self.app(scope, limited_receive, send)


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

