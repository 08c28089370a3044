"""A real S3-compatible server on loopback: moto's server (its WSGI app
served by werkzeug on 127.0.0.1, a port the kernel picks) with an IAM user,
its access key, a bucket, and signature checking on, so a wrong secret is
refused as R2 or S3 would refuse it. Every request is recorded (method,
path, query) so a test counts the uploads."""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

import boto3
import moto.settings
from moto.core.responses import ActionAuthenticatorMixin
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

BUCKET = "analytics"
_ALLOW_ALL = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    key_id: str
    secret: str = field(repr=False)
    requests: list[tuple[str, str, str]] = field(default_factory=list, repr=False)

    def env(self, prefix: str = "CACHEMON_S3_", **override: str) -> dict[str, str]:
        """The environment an export reads (the CACHEMON_S3_* names, or AWS_*)."""
        names = {
            "CACHEMON_S3_": ("ENDPOINT", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "REGION"),
            "AWS_": ("ENDPOINT_URL", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "REGION"),
        }[prefix]
        env = dict(
            zip((prefix + n for n in names), (self.endpoint, self.key_id, self.secret, "auto"))
        )
        return env | override

    def writes(self) -> list[tuple[str, str]]:
        """(method, path) of every request that created or changed an object
        (a PUT, or a multipart upload's start, part or completion)."""
        return [(m, p) for m, p, _ in self.requests if m in ("PUT", "POST")]

    def client(self):
        """A boto3 client with the user's key, to read what was written."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        )


@contextmanager
def s3_server(bucket: str = BUCKET):
    """Start the server with `bucket`, yield an `S3Server`, stop it."""
    app = DomainDispatcherApplication(create_backend_app)
    log: list[tuple[str, str, str]] = []

    def recorded(environ, start_response):
        log.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"]))
        return app(environ, start_response)

    server = make_server(
        "127.0.0.1", 0, recorded, threaded=True, request_handler=MotoRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    was = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
    try:
        # Set-up without signatures, then every request is checked.
        admin = {
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
        }
        iam = boto3.client("iam", **admin)
        user = f"exporter-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=_ALLOW_ALL)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        boto3.client("s3", **admin).create_bucket(Bucket=bucket)
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = ActionAuthenticatorMixin.request_count
        log.clear()
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], log)
    finally:
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = was
        server.shutdown()
        thread.join(timeout=10)
