"""Real local servers for response tests: an HTTP webhook receiver and a tiny SMTP server."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Delivery:
    """One POST as received; header names in lower case (HTTP header names ignore case)."""

    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """Answers the first ``fail_first`` POSTs with ``fail_status``, the rest with 200."""

    fail_first: int = 0
    fail_status: int = 500
    gate: threading.Event | None = None
    """When set, every answer waits (up to 30 s) until the test opens the gate."""
    deliveries: list[Delivery] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def accepted(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.answered == 200]


@contextmanager
def webhook_receiver(
    fail_first: int = 0, fail_status: int = 500, gate: threading.Event | None = None
) -> Iterator[Receiver]:
    receiver = Receiver(fail_first=fail_first, fail_status=fail_status, gate=gate)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if receiver.gate is not None:
                receiver.gate.wait(30)
            with receiver.lock:
                status = receiver.fail_status if len(receiver.deliveries) < receiver.fail_first else 200
                receiver.deliveries.append(
                    Delivery({k.lower(): v for k, v in self.headers.items()}, body, status)
                )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Mailbox:
    port: int = 0
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)


@contextmanager
def smtp_server() -> Iterator[Mailbox]:
    """Enough of RFC 5321 for smtplib: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""
    mailbox = Mailbox()

    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")

        def handle(self) -> None:
            sender, recipients = "", []
            self.reply("220 test ESMTP")
            while line := self.rfile.readline():
                command = line.decode().strip()
                verb = command[:4].upper()
                if verb == "EHLO":
                    self.reply("250-test")
                    self.reply("250 8BITMIME")
                elif verb == "HELO":
                    self.reply("250 test")
                elif verb == "MAIL":
                    sender, recipients = command.split(":", 1)[1].strip().split()[0].strip("<>"), []
                    self.reply("250 OK")
                elif verb == "RCPT":
                    recipients.append(command.split(":", 1)[1].strip().strip("<>"))
                    self.reply("250 OK")
                elif verb == "DATA":
                    self.reply("354 go ahead")
                    data = b""
                    while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                        data += chunk
                    mailbox.messages.append((sender, recipients, data))
                    self.reply("250 queued")
                elif verb == "QUIT":
                    self.reply("221 bye")
                    return
                else:
                    self.reply("250 OK")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    mailbox.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield mailbox
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
