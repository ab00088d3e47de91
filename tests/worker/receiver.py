"""A real HTTP webhook receiver on 127.0.0.1 for the tests: it records what it gets and
answers from a script of status codes; it can hold a request until released."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    received: list[Received] = field(default_factory=list)
    statuses: deque[int] = field(default_factory=deque)
    hold: threading.Event | None = None
    holding: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, *statuses: int) -> None:
        self.statuses.extend(statuses)

    def hold_next(self) -> threading.Event:
        """The next request waits until the returned event is set."""
        self.hold = threading.Event()
        self.holding.clear()
        return self.hold

    async def in_flight(self) -> bool:
        """Whether a held request has arrived (for ``eventually``)."""
        return self.holding.is_set()

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.received)


def serve() -> Iterator[Receiver]:
    receiver: Receiver | None = None

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            assert receiver is not None
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with receiver.lock:
                receiver.received.append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body)
                )
                status = receiver.statuses.popleft() if receiver.statuses else 200
                hold = receiver.hold
                receiver.hold = None
            if hold is not None:
                receiver.holding.set()
                hold.wait(timeout=60)
            try:
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
            except OSError:
                pass  # the client (a killed worker) went away

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        # a receiver takes many deliveries at once (a worker sends up to its concurrency);
        # socketserver's backlog of 5 drops connections beyond it
        request_queue_size = 256

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hooks")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        if receiver.hold is not None:
            receiver.hold.set()
        server.shutdown()
        server.server_close()
