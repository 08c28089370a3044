"""A loopback emulator of the Workers KV REST API (values only).

A real HTTP server on 127.0.0.1 speaking
`PUT|GET /client/v4/accounts/{account}/storage/kv/namespaces/{ns}/values/{key}`:
it checks the bearer token, keeps values in memory, enforces KV's limit of
one write per second per key (429), and injects faults on demand (a status,
a delay, or a stored value replaced by garbage).
"""

from __future__ import annotations

import collections
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from cachemon.testing.loopback import LoopbackServer

_PATH = re.compile(r"^/client/v4/accounts/([^/]+)/storage/kv/namespaces/([^/]+)/values/(.+)$")


@dataclass
class Fault:
    status: int = 500
    delay: float = 0.0


class KvEmulator:
    def __init__(
        self, token: str, account: str = "test-account", namespace: str = "test-ns", port: int = 0
    ):
        self.token, self.account, self.namespace = token, account, namespace
        self.values: dict[str, bytes] = {}
        self.last_write: dict[str, float] = {}
        self.faults: collections.deque[Fault] = collections.deque()
        self.log: list[tuple[str, str, int]] = []  # (method, key, status)
        self.lock = threading.Lock()
        self.server = LoopbackServer(("127.0.0.1", port), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/client/v4"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        emu = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: bytes = b"", ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _route(self, method: str):
                m = _PATH.match(urllib.parse.urlsplit(self.path).path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                if not m or m.group(1) != emu.account or m.group(2) != emu.namespace:
                    return self._answer(
                        404, b'{"success":false,"errors":[{"code":10009,"message":"not found"}]}'
                    )
                key = urllib.parse.unquote(m.group(3))
                if self.headers.get("Authorization") != f"Bearer {emu.token}":
                    emu.log.append((method, key, 403))
                    return self._answer(
                        403,
                        b'{"success":false,"errors":[{"code":10000,"message":"Authentication error"}]}',
                    )
                with emu.lock:
                    fault = emu.faults.popleft() if emu.faults else None
                if fault:
                    time.sleep(fault.delay)
                    emu.log.append((method, key, fault.status))
                    return self._answer(
                        fault.status,
                        b'{"success":false,"errors":[{"code":10001,"message":"injected"}]}',
                    )
                with emu.lock:
                    if method == "PUT":
                        now = time.monotonic()
                        if now - emu.last_write.get(key, -10.0) < 1.0:
                            emu.log.append((method, key, 429))
                            return self._answer(
                                429,
                                b'{"success":false,"errors":[{"code":10048,"message":"rate limited"}]}',
                            )
                        emu.values[key], emu.last_write[key] = body, now
                        emu.log.append((method, key, 200))
                        return self._answer(
                            200, b'{"success":true,"errors":[],"messages":[],"result":{}}'
                        )
                    if key not in emu.values:
                        emu.log.append((method, key, 404))
                        return self._answer(
                            404,
                            b'{"success":false,"errors":[{"code":10009,"message":"key not found"}]}',
                        )
                    emu.log.append((method, key, 200))
                    return self._answer(200, emu.values[key], "application/octet-stream")

            def do_PUT(self):
                self._route("PUT")

            def do_GET(self):
                self._route("GET")

            def log_message(self, *args):
                pass

        return Handler
