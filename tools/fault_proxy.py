#!/usr/bin/env python3
"""Fault-injecting HTTP/1.1 reverse proxy for loader tests: sits between a client and an S3 server.

Requests and headers (Host included: SigV4 signs it) pass unchanged and bodies stream through; the
faults hit only ranged GETs (GET with a Range header), counted from 1 in arrival order. A bandwidth
limit (--bytes-per-second) applies to every response body, shared by all connections, as one
bucket's link would.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fcntl
import http
import json
import os
import secrets
import socket
import struct
import sys
import termios
import threading
import time
import urllib.parse
from email.utils import formatdate
from xml.sax.saxutils import escape

from objstore import wait_for_shutdown

CHUNK = 256 * 1024
MAX_HEAD = 1 << 20
S3_ERROR_CODES = {
    400: ("InvalidRequest", "Invalid Request"),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    409: ("OperationAborted", "A conflicting conditional operation is currently in progress."),
    412: ("PreconditionFailed", "At least one of the pre-conditions you specified did not hold."),
    416: ("InvalidRange", "The requested range is not satisfiable."),
    429: ("TooManyRequests", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    501: ("NotImplemented", "A header you provided implies functionality that is not implemented."),
    502: ("BadGateway", "Bad Gateway."),
    503: ("ServiceUnavailable", "Service is unable to handle request."),
    504: ("GatewayTimeout", "Gateway Timeout."),
}
SLOWDOWN = ("SlowDown", "Please reduce your request rate.")


@dataclasses.dataclass
class Faults:
    """Which ranged GETs fail and how. Numbers fault_skip+1 .. fault_skip+fault_requests are hit."""
    reset_after_bytes: int | None = None   # relay headers + N body bytes, then TCP RST
    stall_after_bytes: int | None = None   # relay headers + N body bytes, go silent, then close
    corrupt_at_byte: int | None = None     # relay the body with one bit flipped at body offset N
    stall_seconds: float = 10.0
    status: int | None = None              # answer with this status and an S3 XML error
    slowdown: int = 0                      # answer the first `slowdown` with 503 SlowDown
    fault_requests: int = 1
    fault_skip: int = 0
    swap_after_requests: int | None = None  # on arrival of this ranged GET: os.replace(swap_with, swap_path)
    swap_path: str | None = None
    swap_with: str | None = None

    def kind(self) -> str | None:
        """The one fault configured ("reset", "stall", "corrupt", "status", "slowdown") or None."""
        kinds = [name for name, on in (("reset", self.reset_after_bytes is not None),
                                       ("stall", self.stall_after_bytes is not None),
                                       ("corrupt", self.corrupt_at_byte is not None),
                                       ("status", self.status is not None),
                                       ("slowdown", self.slowdown > 0)) if on]
        if len(kinds) > 1:
            raise ValueError("choose one of reset-after-bytes, stall-after-bytes, corrupt-at-byte, "
                             "status, slowdown")
        return kinds[0] if kinds else None

    def validate(self) -> None:
        self.kind()
        if self.swap_after_requests is not None and not (self.swap_path and self.swap_with):
            raise ValueError("swap-after-requests needs swap-path and swap-with")

    def kind_for(self, n: int) -> str | None:
        """The fault for ranged GET number n (1-based), or None. For slowdown, its count
        takes the place of fault_requests."""
        count = self.slowdown or self.fault_requests
        return self.kind() if self.fault_skip < n <= self.fault_skip + count else None


@dataclasses.dataclass
class _Head:
    """A parsed request or response head; `raw` is forwarded byte for byte."""
    raw: bytes
    start: list[str]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ","

    @classmethod
    def parse(cls, raw: bytes) -> "_Head":
        lines = raw.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"malformed header line {line[:80]!r}")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        return cls(raw, lines[0].split(" ", 2), headers)

    def has_token(self, name: str, token: str) -> bool:
        return token in (t.strip().lower() for t in self.headers.get(name, "").split(","))


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    """Reads up to and including the blank line; None on a clean EOF before any byte."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise ConnectionError("connection closed inside a message head") from e
    except asyncio.LimitOverrunError as e:
        raise ConnectionError("message head too large") from e



async def _read_exactly(reader: asyncio.StreamReader, n: int, what: str):
    """Yields exactly n bytes in pieces of at most CHUNK; ConnectionError if the peer closes."""
    while n:
        data = await reader.read(min(CHUNK, n))
        if not data:
            raise ConnectionError(f"peer closed inside a {what}")
        n -= len(data)
        yield data

async def _body_pieces(reader: asyncio.StreamReader, head: _Head, length: int | None):
    """Yields a message body's raw bytes as they arrive: chunked, Content-Length or until EOF."""
    if head.has_token("transfer-encoding", "chunked"):
        while True:
            size_line = await reader.readuntil(b"\r\n")
            yield size_line
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    line = await reader.readuntil(b"\r\n")
                    yield line
                    if line == b"\r\n":
                        return
            async for data in _read_exactly(reader, size + 2, "chunk"):  # data + CRLF
                yield data
    elif length is not None:
        async for data in _read_exactly(reader, length, "body"):
            yield data
    else:
        while data := await reader.read(CHUNK):
            yield data


def _request_body_length(head: _Head) -> int | None:
    if head.has_token("transfer-encoding", "chunked"):
        return None
    return int(head.headers.get("content-length", "0"))


def _response_body_length(request: _Head, response: _Head) -> int | None:
    """0 for bodiless responses, the Content-Length, or None (chunked or until EOF)."""
    status = int(response.start[1])
    if request.start[0] == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return 0
    if response.has_token("transfer-encoding", "chunked") or "content-length" not in response.headers:
        return None
    return int(response.headers["content-length"])


def _s3_error_response(status: int, code: str, message: str, resource: str) -> bytes:
    request_id = secrets.token_hex(8).upper()
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message><Resource>{escape(resource)}</Resource>"
            f"<RequestId>{request_id}</RequestId></Error>").encode()
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nx-amz-request-id: {request_id}\r\n"
            f"Date: {formatdate(usegmt=True)}\r\nServer: ember-fault-proxy\r\n\r\n")
    return head.encode() + body


async def _wait_sent(writer: asyncio.StreamWriter, timeout: float = 2.0) -> None:
    """Waits until the kernel has sent (and had acked) what we wrote, so an RST loses nothing."""
    writer.transport.set_write_buffer_limits(0)
    await writer.drain()
    sock = writer.get_extra_info("socket")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        if unsent == 0:
            return
        await asyncio.sleep(0.005)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Closes with SO_LINGER 0: the peer sees a TCP RST (connection reset by peer)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _UpstreamUnreachable(Exception):
    pass


class _ClientConnection:
    """Relays one client connection over its own upstream connection, request by request."""

    def __init__(self, proxy: "FaultProxy", reader, writer):
        self.proxy = proxy
        self.reader, self.writer = reader, writer
        self.up_reader = self.up_writer = None

    async def run(self) -> None:
        try:
            while (raw := await _read_head(self.reader)) is not None:
                if not await self._handle(_Head.parse(raw)):
                    break
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            self.proxy.log(f"connection ended: {type(e).__name__}: {e}")
        finally:
            self._close_upstream()
            if not self.writer.transport.is_closing():
                self.writer.close()

    def _close_upstream(self) -> None:
        if self.up_writer:
            self.up_writer.close()
        self.up_reader = self.up_writer = None

    async def _handle(self, request: _Head) -> bool:
        """Serves one request; returns whether the client connection stays open."""
        fault, label = self._classify(request)
        keep_alive = request.start[2] == "HTTP/1.1" and not request.has_token("connection", "close")
        resource = urllib.parse.urlsplit(request.start[1]).path
        if fault in ("slowdown", "status"):
            async for _ in _body_pieces(self.reader, request, _request_body_length(request)):
                pass  # the request body is dropped, the connection stays usable
            status = 503 if fault == "slowdown" else self.proxy.faults.status
            code, message = SLOWDOWN if fault == "slowdown" else S3_ERROR_CODES.get(
                status, (f"Error{status}", "Injected error."))
            await self._reply_error(status, code, message, resource, label)
            return keep_alive
        try:
            response = await self._forward(request)
        except _UpstreamUnreachable as e:
            await self._reply_error(502, "BadGateway", f"fault proxy: {e}", resource, label)
            return False
        return await self._relay_response(request, response, fault, label) and keep_alive

    def _classify(self, request: _Head) -> tuple[str | None, str]:
        """Counts the request, swaps the object when due; returns (fault or None, log label)."""
        stats, faults = self.proxy.stats, self.proxy.faults
        stats["requests"] += 1
        label = f"{request.start[0]} {urllib.parse.urlsplit(request.start[1]).path}"
        if request.start[0] != "GET" or "range" not in request.headers:
            return None, label
        n = stats["ranged_gets"] = stats["ranged_gets"] + 1
        label += f" #{n} range={request.headers['range']}"
        if n == faults.swap_after_requests:
            os.replace(faults.swap_with, faults.swap_path)
            stats["swaps"] += 1
            label += " [swapped object]"
        fault = faults.kind_for(n)
        if fault:
            stats["faults"] += 1
            label += f" [fault: {fault}]"
        return fault, label

    async def _reply_error(self, status: int, code: str, message: str, resource: str,
                           label: str) -> None:
        self.writer.write(_s3_error_response(status, code, message, resource))
        await self.writer.drain()
        self.proxy.log(f"{label} -> {status} {code}")

    async def _relay_response(self, request: _Head, response: _Head, fault: str | None,
                              label: str) -> bool:
        """Streams the response to the client, cut short by a reset or stall fault; returns reusable."""
        faults = self.proxy.faults
        limit = {"reset": faults.reset_after_bytes, "stall": faults.stall_after_bytes}.get(fault)
        length = _response_body_length(request, response)
        self.writer.write(response.raw)
        sent = 0
        if limit != 0:
            async for piece in _body_pieces(self.up_reader, response, length):
                if limit is not None and sent + len(piece) >= limit:
                    piece = piece[:limit - sent]
                at = faults.corrupt_at_byte
                if fault == "corrupt" and sent <= at < sent + len(piece):
                    flipped = bytearray(piece)
                    flipped[at - sent] ^= 0x01
                    piece = bytes(flipped)
                self.writer.write(piece)
                sent += len(piece)
                await self.writer.drain()
                await self.proxy.throttle(len(piece))
                if sent == limit:
                    break
        self.proxy.stats["body_bytes"] += sent
        self.proxy.log(f"{label} -> {response.start[1]} ({sent} body bytes)")

        if fault == "reset":
            self._close_upstream()
            await _wait_sent(self.writer)
            _reset(self.writer)
            return False
        if fault == "stall":
            self._close_upstream()
            await self.writer.drain()
            await asyncio.sleep(faults.stall_seconds)
            return False
        if length is None and not response.has_token("transfer-encoding", "chunked"):
            return False  # the body ended with the upstream closing; the client needs a close too
        if response.has_token("connection", "close"):
            self._close_upstream()
            return False
        return True

    async def _forward(self, request: _Head) -> _Head:
        """Sends the request upstream and returns the final response head (1xx relayed)."""
        body_length = _request_body_length(request)
        for attempt in range(2):
            reused = self.up_writer is not None
            if not reused:
                host, port = self.proxy.upstream
                try:
                    self.up_reader, self.up_writer = await asyncio.open_connection(
                        host, port, limit=MAX_HEAD)
                except OSError as e:
                    raise _UpstreamUnreachable(f"{host}:{port}: {e.strerror or e}") from e
            self.up_writer.write(request.raw)
            body_task = asyncio.ensure_future(self._relay_request_body(request, body_length))
            try:
                raw = await _read_head(self.up_reader)
            except ConnectionError:
                raw = None
            if raw is None:
                # A reused keep-alive connection the server had closed: retry once on a new one
                # when nothing of the request body was consumed from the client.
                body_task.cancel()
                self._close_upstream()
                if reused and attempt == 0 and body_length == 0:
                    continue
                raise ConnectionError("upstream closed without a response")
            response = _Head.parse(raw)
            while response.start[1].startswith("1"):  # e.g. 100 Continue for Expect
                self.writer.write(response.raw)
                await self.writer.drain()
                if (raw := await _read_head(self.up_reader)) is None:
                    raise ConnectionError("upstream closed after an interim response")
                response = _Head.parse(raw)
            done, _ = await asyncio.wait([body_task], timeout=1.0)
            if not done:
                # A final response before the client sent its body (e.g. an Expect refusal):
                # the framing of both connections is unknown from here, so neither is reused.
                body_task.cancel()
                response.headers["connection"] = "close"
            else:
                body_task.result()
            return response
        raise AssertionError("unreachable")

    async def _relay_request_body(self, request: _Head, length: int | None) -> None:
        if length == 0:
            return
        async for piece in _body_pieces(self.reader, request, length):
            self.up_writer.write(piece)
            await self.up_writer.drain()


class FaultProxy:
    """The proxy on 127.0.0.1, running its event loop on a background thread."""

    def __init__(self, upstream: str, faults: Faults | None = None, listen_port: int = 0,
                 verbose: bool = False, bytes_per_second: float | None = None):
        url = urllib.parse.urlsplit(upstream)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"upstream must be http://HOST:PORT, got {upstream!r}")
        self.upstream = (url.hostname, url.port or 80)
        self.faults = faults or Faults()
        self.faults.validate()
        self.listen_port = listen_port
        self.verbose = verbose
        self.bytes_per_second = bytes_per_second
        self._link_free_at = 0.0  # when the shared link has sent what it was given
        self.stats = {"connections": 0, "requests": 0, "ranged_gets": 0, "faults": 0,
                      "swaps": 0, "body_bytes": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    async def throttle(self, sent: int) -> None:
        """Waits until `sent` more bytes fit the shared bandwidth limit (if any)."""
        if not self.bytes_per_second:
            return
        now = time.monotonic()
        self._link_free_at = max(self._link_free_at, now) + sent / self.bytes_per_second
        if self._link_free_at > now:
            await asyncio.sleep(self._link_free_at - now)

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"fault_proxy: {message}", file=sys.stderr, flush=True)

    def start(self) -> "FaultProxy":
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, errors), daemon=True,
                                        name="fault-proxy")
        self._thread.start()
        ready.wait()
        if errors:
            raise errors[0]
        return self

    def _run(self, ready: threading.Event, errors: list) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            try:
                server = await asyncio.start_server(self._on_client, "127.0.0.1",
                                                    self.listen_port, limit=MAX_HEAD)
            except OSError as e:
                errors.append(e)
                ready.set()
                return
            self.listen_port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await self._stopped.wait()
        asyncio.run(main())

    async def _on_client(self, reader, writer) -> None:
        self.stats["connections"] += 1
        try:
            await _ClientConnection(self, reader, writer).run()
        except asyncio.CancelledError:
            pass  # stop() with connections still open

    def stop(self) -> None:
        if self._loop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout=10)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Prints {"endpoint","pid"} as one JSON line on stdout; runs until SIGTERM/SIGINT or '
               "until stdin (when a pipe or tty) closes; prints request/fault counts to stderr at exit.")
    parser.add_argument("--upstream", required=True, help="the real server, http://127.0.0.1:PORT")
    parser.add_argument("--listen-port", type=int, default=0, help="port to listen on (default: free)")
    parser.add_argument("--fault-requests", type=int, default=1, metavar="K",
                        help="how many ranged GETs the fault hits (default 1)")
    parser.add_argument("--fault-skip", type=int, default=0, metavar="M",
                        help="let the first M ranged GETs through before faulting (default 0)")
    parser.add_argument("--reset-after-bytes", type=int, metavar="N",
                        help="relay headers and N body bytes, then reset the connection (RST)")
    parser.add_argument("--stall-after-bytes", type=int, metavar="N",
                        help="relay headers and N body bytes, then send nothing for --stall-seconds")
    parser.add_argument("--stall-seconds", type=float, default=10.0, metavar="S",
                        help="stall length before closing (default 10)")
    parser.add_argument("--corrupt-at-byte", type=int, metavar="N",
                        help="relay the body with one bit flipped at body offset N")
    parser.add_argument("--bytes-per-second", type=float, metavar="B",
                        help="limit every response body to B bytes/s in total, over all connections")
    parser.add_argument("--status", type=int, metavar="CODE",
                        help="answer with this HTTP status and an S3 XML error (500, 503, 403, ...)")
    parser.add_argument("--slowdown", type=int, default=0, metavar="K",
                        help="answer the first K ranged GETs with 503 SlowDown")
    parser.add_argument("--swap-after-requests", type=int, metavar="N",
                        help="when ranged GET number N arrives, os.replace(--swap-with, --swap-path)")
    parser.add_argument("--swap-path", help="file inside the server's root that gets replaced")
    parser.add_argument("--swap-with", help="file that replaces it")
    parser.add_argument("--verbose", action="store_true", help="log each request to stderr")
    args = parser.parse_args(argv)

    faults = Faults(reset_after_bytes=args.reset_after_bytes, stall_after_bytes=args.stall_after_bytes,
                    corrupt_at_byte=args.corrupt_at_byte,
                    stall_seconds=args.stall_seconds, status=args.status, slowdown=args.slowdown,
                    fault_requests=args.fault_requests, fault_skip=args.fault_skip,
                    swap_after_requests=args.swap_after_requests, swap_path=args.swap_path,
                    swap_with=args.swap_with)
    try:
        proxy = FaultProxy(args.upstream, faults, args.listen_port, args.verbose,
                           args.bytes_per_second).start()
    except (ValueError, OSError) as e:
        parser.error(str(e))
    sys.stdout.write(json.dumps({"endpoint": proxy.endpoint, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    why = wait_for_shutdown(lambda: not proxy._thread.is_alive())
    proxy.stop()
    print(f"fault_proxy: stopping ({why}); stats {json.dumps(proxy.stats)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
