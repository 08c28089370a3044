"""Real receivers on loopback for notification tests: an SMTP server
(aiosmtpd, optionally STARTTLS/SSL with a trustme CA and AUTH) and an HTTP
webhook sink that records every request and answers a settable status.
Misbehaving servers for outbound faults: `DripServer` (answers one byte at a
time, slowly, or an endless body) and `EchoServer` (answers an error that
repeats the request's path and headers, as careless servers do).
Real processes: `streamlit_server`, `serve_process` and `serve_api` (a
`cachemon serve` each), and Debian's Chromium for the browser tests."""

from __future__ import annotations

import email
import email.policy
import json
import os
import random
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from cachemon.testing.loopback import LoopbackServer
from tests.helpers import ROOT

# Ports handed out by this process (a server may not have bound its port yet).
_GIVEN: set[int] = set()


def _port_band() -> range:
    """This process's ports: below the kernel's ephemeral range (where bind(0)
    and outgoing connections take theirs), one slice per pytest-xdist worker,
    so two workers are never handed the same port between free_port() and
    the server's bind."""
    low = 10000
    try:
        high = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        high = 32768
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (high - low) // max(workers, 1)
    return range(low + worker * size, low + (worker + 1) * size)


def free_port() -> int:
    """A loopback port free now, never handed out before in this run by any worker."""
    band = _port_band()
    for _ in range(200):
        port = random.choice(band)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # someone else's (another user's test run, a service)
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError(f"no free port in {band}")


class _Inbox:
    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes = []
        self.reject_recipients = False  # answer 550 to every RCPT TO

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject_recipients:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        self.messages.append(
            email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        )
        return "250 OK"


class SmtpSink:
    """An SMTP server on 127.0.0.1. `tls`: none | starttls | ssl."""

    def __init__(
        self,
        tls: str = "none",
        ca=None,
        user: str = "",
        password: str = "",
        port: int | None = None,
    ):
        self.inbox = _Inbox()
        self.port = port or free_port()
        self.tls, self.ca, self.user, self.password = tls, ca, user, password
        self.controller = None

    def _context(self):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(ctx)
        return ctx

    def _auth(self, server, session, envelope, mechanism, data):
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == self.user
            and data.password.decode() == self.password
        )
        return AuthResult(success=ok)

    def start(self) -> SmtpSink:
        kw = {}
        if self.tls == "starttls":
            kw.update(tls_context=self._context(), require_starttls=True)
        if self.tls == "ssl":
            # aiosmtpd only counts STARTTLS as TLS for AUTH; implicit TLS is TLS from the first byte.
            kw.update(ssl_context=self._context(), auth_require_tls=False)
        if self.user:
            kw.update(authenticator=self._auth, auth_required=True)
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **kw)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller:
            self.controller.stop()
            self.controller = None

    @property
    def messages(self):
        return self.inbox.messages

    def env(self) -> dict:
        e = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(self.port), "SMTP_TLS": self.tls}
        if self.user:
            e.update(SMTP_USER=self.user, SMTP_PASSWORD=self.password)
        return e


class WebhookSink:
    """Records POSTs (path, headers, JSON body); answers `status` after `delay` seconds."""

    def __init__(self):
        self.requests: list[dict] = []
        self.status = 200
        self.delay = 0.0  # seconds before answering (a slow receiver)
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(sink.delay)
                sink.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "json": json.loads(body),
                        "status": sink.status,
                    }
                )
                self.send_response(sink.status)
                self.end_headers()
                self.wfile.write(b"ok" if sink.status < 300 else b"invalid_token")

            def log_message(self, *args):
                pass

        self.server = LoopbackServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def accepted(self, path: str) -> list[dict]:
        return [r["json"] for r in self.requests if r["path"] == path and r["status"] < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class DripServer:
    """A TCP server on 127.0.0.1 that, per connection, reads what the client
    sends first, then writes `answer` one byte every `interval` seconds
    (a slow-drip webhook, a stalling SMTP banner), and then, if `endless`,
    zero bytes in 64 KiB chunks as fast as the client reads."""

    def __init__(
        self, answer: bytes, interval: float = 2.0, endless: bool = False, read_first: bool = True
    ):
        self.answer, self.interval, self.endless, self.read_first = (
            answer,
            interval,
            endless,
            read_first,
        )
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                if self.read_first:
                    conn.settimeout(5)
                    conn.recv(65536)
                for b in self.answer:
                    if self.closed.wait(self.interval):
                        return
                    conn.sendall(bytes([b]))
                while self.endless and not self.closed.is_set():
                    conn.sendall(bytes(65536))
            except OSError:  # the client gave up: what the test wants
                return

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


class EchoServer:
    """An HTTP server on 127.0.0.1 answering every request with `status` and
    a body that repeats the method, path and headers it received."""

    def __init__(self, status: int = 404):
        self.status = status
        self.requests: list[str] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def _echo(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.requests.append(self.path)
                body = (
                    f"error: no route for {self.command} {self.path}\n"
                    + "".join(f"{k}: {v}\n" for k, v in self.headers.items())
                ).encode()
                self.send_response(sink.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _echo

            def log_message(self, *args):
                pass

        self.server = LoopbackServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def streamlit_server(env: dict, with_pid: bool = False):
    """`streamlit run app.py` on a free loopback port with `env`; yields its
    URL (and its pid, `with_pid`)."""
    port = free_port()
    root = ROOT
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root), **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if httpx.get(url + "/_stcore/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise RuntimeError("streamlit did not start")
        yield (url, proc.pid) if with_pid else url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextmanager
def serve_process(
    db, *extra, host: str = "127.0.0.1", nofile: int | None = None, token: str | None = None
):
    """A real `cachemon serve` on a free port of `host` over the store `db`;
    yields (base URL, its output so far). `nofile` sets the server's
    descriptor limit (a distribution's default), `token` CACHEMON_API_TOKEN."""
    port = free_port()
    env = dict(os.environ, CACHEMON_DB=str(db), PYTHONPATH=str(ROOT))
    env.pop("CACHEMON_API_TOKEN", None)
    if token:
        env["CACHEMON_API_TOKEN"] = token

    def limit():
        if nofile:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
            )

    proc = subprocess.Popen(
        [sys.executable, "-m", "cachemon", "serve", "--host", host, "--port", str(port), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=limit,
    )
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    out: list[str] = []
    # Drained as it comes: a full pipe would block the server's access log.
    drain = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    drain.start()
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, "".join(out)
            try:
                httpx.get(base + "/healthz", timeout=2)
                break
            except httpx.HTTPError:
                assert time.time() < deadline, "server did not start"
                time.sleep(0.2)
        yield base, out
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drain.join(timeout=10)


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


def chromium(playwright):
    """Debian's Chromium through Playwright (never a downloaded browser)."""
    return playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)


def _wait(url: str, proc, seconds=60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer")


def serve_api(db, *extra, token=None):
    """A real `cachemon serve` on a free loopback port over the store `db`,
    answering /healthz; returns (process, base URL). The caller stops it."""
    port = free_port()
    env = dict(os.environ, CACHEMON_DB=str(db), PYTHONPATH=str(ROOT))
    env.pop("CACHEMON_API_TOKEN", None)
    if token:
        env["CACHEMON_API_TOKEN"] = token
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachemon", "serve", "--port", str(port), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    _wait(base + "/healthz", proc)
    return proc, base


def runner_process(env: dict, log: Path, start: str = "2026-11-19T00:00:00Z", speed: str = "120"):
    """A real `python -m jobs` on a fast simulated clock from `start`, its
    output (stdout and stderr) written to `log`. The caller stops it."""
    return subprocess.Popen(
        [sys.executable, "-m", "jobs", "--clock-start", start, "--clock-speed", speed],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
