"""Running the app on uvicorn with a time limit on request headers.

uvicorn's keep-alive timeout closes idle connections, but a client that sends part of its headers and
stops would hold a connection forever. ``HeaderTimeoutH11Protocol`` closes a connection whose request
headers are not complete ``header_timeout_s`` after its first byte (or after it opened); the body's
time limit is the app's (``fastgen.serve.guard``).
"""

from __future__ import annotations

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


def header_timeout_protocol(header_timeout_s: float):
    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _waiting_for_headers(self) -> bool:
            return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._waiting_for_headers() and self.conn.trailing_data[0]:
                self._arm()  # part of a request's headers: they must be complete in time
            elif not self._waiting_for_headers():
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # idle between requests: uvicorn's keep-alive timeout applies

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _headers_late(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                msg = f"request headers not complete within {header_timeout_s:g} s\n".encode()
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(msg), msg))
                self.transport.close()

    return HeaderTimeoutH11Protocol


def make_server(app, host: str = "127.0.0.1", port: int = 8000, *, header_timeout_s: float = 10.0,
                log_level: str = "warning", **kw) -> uvicorn.Server:
    """A uvicorn server for ``app`` (h11 with the header time limit; lifespan on)."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            http=header_timeout_protocol(float(header_timeout_s)), **kw)
    return uvicorn.Server(config)
