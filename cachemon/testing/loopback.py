"""The HTTP server every emulator and test receiver runs on 127.0.0.1."""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class LoopbackServer(ThreadingHTTPServer):
    """A threading HTTP server whose listening socket has a timeout: after
    the selector reports a connection that was reset before `accept`,
    a blocking `accept` would hang `serve_forever`, and `shutdown` with it
    (seen once in the suite, a client cut at its deadline). With a timeout
    the accept gives up, socketserver ignores the OSError, and the loop
    goes on. Handler threads are daemons: a stuck client never holds exit."""

    daemon_threads = True

    def server_activate(self) -> None:
        super().server_activate()
        self.socket.settimeout(1.0)
