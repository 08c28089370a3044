"""A heartbeat receiver on 127.0.0.1: counts GETs per path, answers a
settable status after a settable delay (a slow or failing monitor)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

from cachemon.testing.loopback import LoopbackServer


class PingSink:
    def __init__(self):
        self.pings: Counter = Counter()
        self.status, self.delay = 200, 0.0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                time.sleep(sink.delay)
                sink.pings[self.path] += 1
                self.send_response(sink.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        self.server = LoopbackServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
