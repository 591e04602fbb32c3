"""HTTP/1.1 connections with bounded cost against slow, stalled and oversized clients: uvicorn's h11
protocol plus

- a header timeout: a request's line and headers must arrive within ``header_timeout_s`` of its first
  byte (or of the connection's opening); else 408 and the connection is closed;
- a body timeout: while a body is being received, no gap between two reads may pass ``body_timeout_s``;
  else 408 and the connection is closed (the route sees a disconnect);
- a header size limit: headers past ``max_header_bytes`` get 431 (read and discarded for a moment before
  the close, so the client reads the answer instead of a connection reset);
- at shutdown, a connection whose request has not fully arrived is closed at once (503): only fully
  received requests hold the drain.

uvicorn's own ``limit_concurrency`` answers 503 beyond the open-connection cap. Why a subclass: uvicorn
has a keep-alive timeout but no header or body read timeout, and its shutdown waits on every open
connection, stalled uploads included (docs/serving.md, "Slow and stalled clients").
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HEADER_TIMEOUT_S = 30.0  # nginx's client_header_timeout is 60 s, HAProxy's http-request 5-30 s
DEFAULT_BODY_TIMEOUT_S = 30.0    # nginx's client_body_timeout (between two reads) is 60 s
DEFAULT_MAX_HEADER_BYTES = 64 * 2**10  # request line + headers; nginx's large_client_header_buffers is 4 x 8k
DEFAULT_MAX_CONNECTIONS = 1024
LINGER_S = 1.0  # after a 431: how long the rest of the client's headers is read and dropped before the close


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = message.encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def guarded_protocol(limits: ConnectionLimits):
    """The uvicorn ``http`` protocol class enforcing ``limits`` (a class: uvicorn makes one per connection)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._timer = None          # the header or body deadline now running
            self._timer_kind = None     # "header" | "body"
            self._header_bytes = 0      # bytes of the request line and headers received so far
            self._discarding = False    # after a 431: input is read and dropped until the close

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm("header")  # a connection that never sends a request line is closed too

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, kind: str) -> None:
            self._disarm()
            delay = limits.header_timeout_s if kind == "header" else limits.body_timeout_s
            self._timer, self._timer_kind = self.loop.call_later(delay, self._timed_out, kind), kind

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_kind = None, None

        def _abort(self, status: int, reason: str, message: str) -> None:
            """Answer with a plain status (unless the app has begun its answer) and close; the route, if
            one is reading the body, sees a disconnect."""
            self._disarm()
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is None or cycle.response_complete or not cycle.response_started:
                self.transport.write(_raw_response(status, reason, message))
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
            self.transport.close()

        def _timed_out(self, kind: str) -> None:
            self._timer, self._timer_kind = None, None
            what = "its headers" if kind == "header" else "the rest of its body"
            limit = limits.header_timeout_s if kind == "header" else limits.body_timeout_s
            self._abort(408, "Request Timeout", f"the client sent {what} too slowly (the limit is {limit:g} s)")

        def _receiving_headers(self) -> bool:
            return self.conn.their_state is h11.IDLE

        def data_received(self, data: bytes) -> None:
            if self._discarding:
                return
            if self._receiving_headers():
                if self._timer_kind != "header":
                    self._arm("header")  # a keep-alive connection's next request starts its own deadline
                self._header_bytes += len(data)
            super().data_received(data)
            if self.transport.is_closing():
                return
            if self._receiving_headers():
                if self._header_bytes > limits.max_header_bytes and (self.cycle is None or self.cycle.response_complete):
                    self._refuse_headers()
            elif self.conn.their_state is h11.SEND_BODY:
                self._header_bytes = 0
                self._arm("body")  # restarted by every read: the limit is the gap between two reads
            else:
                self._header_bytes = 0
                self._disarm()  # the request has fully arrived: the app's own time is not a client's

        def _refuse_headers(self) -> None:
            self._disarm()
            self._discarding = True
            self.transport.write(_raw_response(
                431, "Request Header Fields Too Large",
                f"the request line and headers pass {limits.max_header_bytes} bytes, this server's limit"))
            # Closing with unread input makes the kernel send a reset, which the client may read before
            # the answer: stop writing, drop what still comes, then close.
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._receiving_headers() and not self.transport.is_closing():
                if self.conn.trailing_data[0]:
                    self._arm("header")  # a pipelined next request has begun: its headers are on the clock
                else:
                    self._disarm()  # idle between requests: uvicorn's keep-alive timeout closes it

        def shutdown(self) -> None:
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and cycle.more_body:
                # Half-sent: the request never fully arrived, so it holds no work worth waiting for.
                self._abort(503, "Service Unavailable", "the server is shutting down")
                return
            self._disarm()
            super().shutdown()

    return GuardedH11Protocol


def uvicorn_settings(limits: ConnectionLimits) -> dict:
    """uvicorn.Config keyword arguments for these limits."""
    return {"http": guarded_protocol(limits),
            # uvicorn answers 503 once len(connections) >= limit_concurrency: the new one counts itself.
            "limit_concurrency": limits.max_connections + 1,
            # h11's own limit (its 400) stays above ours (431): a socket read is at most 256 KiB.
            "h11_max_incomplete_event_size": limits.max_header_bytes + 2**19}
