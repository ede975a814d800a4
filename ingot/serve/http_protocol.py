"""uvicorn's HTTP/1.1 protocol (h11) with the two guards on a request's head that uvicorn lacks.

    size      a request line and headers over limits.max_header_bytes get a 431 with an OpenAI-shaped
              body. uvicorn alone answered a bare 400 only when the head arrived in pieces past h11's
              buffer (a head that came in one piece passed unchecked), and closed with the rest of it
              unread, which resets the connection: the client saw "connection reset", not the answer.
    deadline  a head must arrive whole within limits.read_timeout of the connection opening (or of the
              previous answer on it): a head that began gets a 408, an idle connection is closed.
              uvicorn waits forever for a head that began (its keep-alive timer stops at the first byte).

A refused client may still be sending: what it sends is read and dropped for up to LINGER_S after the
answer, so that closing does not reset the connection before the client has read the answer.

These answers, and uvicorn's own 400 for bytes that are not HTTP, never reach the app, so the app's
Gate cannot count them: `count(path, status)` (ServerState.count_response) counts them for /metrics.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ingot.serve.errors import APIError
from ingot.serve.limits import ServeLimits, flag

LINGER_S = 2.0
_END_OF_HEAD = re.compile(rb"\n\r?\n")  # the blank line that ends a head, as h11 finds it

logger = logging.getLogger("ingot.serve")


class GuardedH11Protocol(H11Protocol):
    """Made by uvicorn per connection; `limits` is bound with functools.partial (server.py)."""

    def __init__(self, *args, limits: ServeLimits, count: Callable[[str, int], None] = lambda path, status: None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits, self.count = limits, count
        self._head_timer = None
        self._refused = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        waiting_for_head = self.conn.their_state is h11.IDLE
        if waiting_for_head and (size := self._head_size(data)) > self.limits.max_header_bytes:
            return self._refuse(431, self._path(data), f"the request's line and headers reached {size} bytes, "
                                f"over this server's limit of {self.limits.max_header_bytes} "
                                f"({flag('max_header_bytes')}); send fewer or shorter headers",
                                "request_header_fields_too_large")
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_head_timer()  # the next request on this connection

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _head_size(self, data: bytes) -> int:
        """Bytes of the head so far with `data` (up to its blank line, once that has come)."""
        head = self.conn.trailing_data[0] + data
        end = _END_OF_HEAD.search(head)
        return len(head) if end is None else end.end()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.read_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            return
        if not self.conn.trailing_data[0].strip():
            self.transport.close()  # idle: nothing was asked, nothing to answer
            return
        self._refuse(408, self._path(), f"the request's headers did not arrive within "
                                        f"{self.limits.read_timeout:g} s ({flag('read_timeout')})", "request_timeout")

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes h11 cannot parse as a request, counted."""
        self.count(self._path(), 400)
        super().send_400_response(msg)

    def _path(self, data: bytes = b"") -> str:
        """The path of the request line received so far ("" before there is one)."""
        line = (bytes(self.conn.trailing_data[0][:8192]) + data[:8192]).split(b"\n", 1)[0]
        parts = line.split(b" ")
        path = parts[1].split(b"?", 1)[0].decode("latin-1") if len(parts) > 2 else ""
        return path if path.startswith("/") else ""

    def _refuse(self, status: int, path: str, message: str, code: str) -> None:
        """Answer, stop reading the request (what still comes is dropped), close after LINGER_S."""
        self.count(path, status)
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        self._refused = True
        logger.warning("%s %s: %s", status, self.client and self.client[0], message)
        body = json.dumps(APIError(status, message, code=code).body()).encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, HTTPStatus(status).phrase.encode(),
                                                                len(body), body))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
