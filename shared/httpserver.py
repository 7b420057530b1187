"""The HTTP server under every service's app: what aiohttp answers itself is answered in our JSON shape.

aiohttp refuses a malformed request line or header (bad method, line too long, too many headers, a
broken chunked encoding) before any app code runs, with a ``text/plain`` 400 and an error-level
traceback per request, so anyone could flood the error log and every client had to handle a second
error format. :class:`AppRunner` answers those ``{"error": {"code", "message"}}`` and logs one info
line; an exception that escapes every middleware is still a 500 with a traceback (truly unexpected).
"""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from shared.logging import get_logger

log = get_logger(__name__)

_CODES = {400: "invalid_request", 413: "payload_too_large", 431: "invalid_request", 500: "internal"}
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def error_body(code: str, message: str) -> bytes:
    """The JSON error body every service answers (DESIGN §5)."""
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _reason(message: str | None, status: int) -> str:
    """The parser's complaint without the bytes it quotes (those are the client's, and may be secret)."""
    first = (message or "").split("\n", 1)[0].split(":", 1)[0].strip()
    return first[:120] or ("internal error" if status >= 500 else "malformed HTTP request")


class JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, with its error answers in our JSON shape."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # a response was already on its way: nothing can be said
            raise ConnectionError("the response had started before the error")
        reason = _reason(message, status)
        if status >= 500:
            log.error("request_crashed_outside_app", path=request.path, exc_info=exc)
            reason = "internal error"
        else:
            log.info("http_request_refused", status=status, reason=reason, remote=request.remote)
        response = web.Response(
            status=status,
            body=error_body(_CODES.get(status, "invalid_request"), reason),
            content_type="application/json",
            headers=_HEADERS,
        )
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer aiohttp's own refusals as JSON (see module doc)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The same server aiohttp builds (its handler, request factory and settings), another handler class.
        return _JsonErrorServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
