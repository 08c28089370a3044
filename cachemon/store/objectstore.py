"""Where an export goes: a local folder or an S3-compatible bucket (R2 first).

Both targets offer the same four operations on paths relative to the
export's root: list the sizes of the files under a folder, read a small
file, and write a whole file atomically (a folder writes beside the target
and renames over it; an S3 PUT, or a multipart upload's completion, makes
the object appear whole). So a reader never sees half a file.

The bucket's endpoint and credentials come from the environment only
(`S3_ENV`), never from a file or an argument, and never reach a message:
every error text from the S3 client passes through a `Redactor` that knows
the key id and the secret, and the settings' repr hides them.
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cachemon.errors import ConfigError, InputError
from cachemon.redact import Redactor

SCHEME = "s3://"
# The environment variables an S3 export reads; the AWS names are the
# fallbacks that every S3 tool knows.
S3_ENV = {
    "endpoint": ("CACHEMON_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "key_id": ("CACHEMON_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
    "secret": ("CACHEMON_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
    "region": ("CACHEMON_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
}
DEFAULT_REGION = "auto"  # R2's; AWS S3 needs the bucket's region
# Small, so an unreachable endpoint fails in seconds, not minutes. The
# request timeout is how long a connection may carry no byte at all (curl's
# low-speed limit): a server that accepts and never answers costs
# ATTEMPTS × REQUEST_TIMEOUT (it cost 3 minutes at 60 s), while an upload
# that moves, however slowly, is never cut.
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0
ATTEMPTS = 3
# S3's bucket naming rules (lower case, digits, dots, hyphens; 3-63 long).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Settings:
    """An S3-compatible endpoint and its credentials. Its repr names the
    endpoint and region only."""

    endpoint: str  # scheme://host[:port]
    region: str
    key_id: str = field(repr=False)
    secret: str = field(repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Settings:
        """The settings from `env` (`S3_ENV`); a missing or malformed value
        is a ConfigError naming the variable, never showing a secret."""
        got = {k: _first(env, names) for k, names in S3_ENV.items()}
        for k in ("endpoint", "key_id", "secret"):
            if got[k] is None:
                raise ConfigError(
                    f"an s3:// export needs {' or '.join(S3_ENV[k])} in the environment"
                )
        name, endpoint = got["endpoint"][0], got["endpoint"][1].strip().rstrip("/")
        # The value is never quoted back: an operator may have pasted a
        # secret into it (as a path, a query, a fragment or user info).
        bad = ConfigError(
            f"{name} must be an http(s)://host[:port] URL with no user, path, query or "
            "fragment, such as https://<account id>.r2.cloudflarestorage.com (keys go in "
            "CACHEMON_S3_ACCESS_KEY_ID and CACHEMON_S3_SECRET_ACCESS_KEY)"
        )
        try:
            u = urllib.parse.urlsplit(endpoint)
            ok = (
                u.scheme in ("http", "https")
                and u.hostname
                and "@" not in u.netloc
                and not (u.path or u.query or u.fragment or "#" in endpoint)
            )
            u.port  # noqa: B018  a malformed host or a port out of range raises here
        except ValueError:
            raise bad from None
        if not ok:
            raise bad
        region = got["region"][1].strip() if got["region"] else DEFAULT_REGION
        return cls(endpoint, region, got["key_id"][1].strip(), got["secret"][1].strip())


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    """The first of `names` set (non-empty) in `env`, as (name, value)."""
    for n in names:
        if env.get(n, "").strip():
            return n, env[n]
    return None


def is_s3(to: str | os.PathLike) -> bool:
    """Whether an export target names a bucket (`s3://bucket/prefix`)."""
    return isinstance(to, str) and to.strip().lower().startswith(SCHEME)


class DirTarget:
    """A local folder; a file is written beside its target and renamed over it."""

    def __init__(self, to: str | os.PathLike):
        if not os.fspath(to).strip():  # Path("") is ".": an empty --to would fill the cwd
            raise InputError("export target is empty: name the folder to write to")
        self.root = Path(to)
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"export target {self.root} exists and is not a directory")

    def __str__(self) -> str:
        return str(self.root)

    def sizes(self, folder: str) -> dict[str, int]:
        """Size of each file under `folder`, by path relative to the root."""
        base = self.root / folder
        if not base.is_dir():
            return {}
        return {
            p.relative_to(self.root).as_posix(): p.stat().st_size
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        }

    def read(self, rel: str) -> bytes | None:
        """A file's bytes, or None when there is none."""
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InputError(f"export target {self.root}: cannot read {rel}: {_why(exc)}") from None

    def put(self, rel: str, data: bytes) -> None:
        """Write `data` to `rel` whole. Any refusal of the file system
        (read-only, full, a file where a folder must be) is one InputError
        naming the file, no partial file left."""
        path = self.root / rel
        tmp: Path | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # A fresh name made with O_EXCL: a file or symlink planted at a
            # predictable name is never followed or overwritten.
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            tmp = Path(name)
            os.fchmod(fd, 0o644)  # as a plain write would leave it, not mkstemp's 0600
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            if tmp is not None:
                _discard(tmp)
            raise InputError(
                f"export target {self.root}: cannot write {rel}: {_why(exc)}"
            ) from None


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _discard(tmp: Path) -> None:
    """Remove a half-written file if there is one and the disk allows it."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


class S3Target:
    """`s3://bucket/prefix` on an S3-compatible endpoint, through pyarrow's
    S3 file system. Opening it checks that the bucket exists and the
    credentials are accepted, so a wrong setting fails before any work."""

    def __init__(self, to: str, settings: S3Settings, redactor: Redactor):
        rest = to.strip()[len(SCHEME) :]
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.match(bucket):
            raise InputError(
                f"export target {to!r}: {bucket!r} is not a bucket name "
                "(3-63 lower-case letters, digits, dots and hyphens)"
            )
        prefix = prefix.strip("/")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise InputError(f"export target {to!r}: the prefix has an empty, . or .. part")
        self.bucket = bucket
        self.base = f"{bucket}/{prefix}" if prefix else bucket
        self.settings = settings
        # The secret and key id are redacted from every message, whatever
        # variable they came from.
        self.redact = redactor.plus(settings.secret, settings.key_id)
        self.fs = self._connect()
        self._check_bucket()

    def __str__(self) -> str:
        return f"{SCHEME}{self.base} at {self.settings.endpoint}"

    def _connect(self):
        import pyarrow.fs as pafs  # pyarrow's S3 client loads only when a bucket is the target

        u = urllib.parse.urlsplit(self.settings.endpoint)
        return pafs.S3FileSystem(
            access_key=self.settings.key_id,
            secret_key=self.settings.secret,
            region=self.settings.region,
            scheme=u.scheme,
            endpoint_override=u.netloc,
            connect_timeout=CONNECT_TIMEOUT,
            request_timeout=REQUEST_TIMEOUT,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS),
            # A whole file is written at once: a small one goes as one PUT
            # (no multipart upload to leave behind), errors still surface at close.
            allow_delayed_open=True,
            allow_bucket_creation=False,
            allow_bucket_deletion=False,
            check_directory_existence_before_creation=False,
        )

    def _check_bucket(self) -> None:
        """Fail now on a missing bucket or refused credentials. A key
        scoped to objects may be refused the bucket's HEAD: then a listing
        of the prefix decides (a missing bucket surfaces at the first PUT)."""
        import pyarrow.fs as pafs

        try:
            info = self.fs.get_file_info(self.bucket)
        except OSError as exc:
            if not _refused(str(exc)):
                raise self._error("cannot open the bucket", exc) from None
            try:
                self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
            except OSError as exc2:
                raise self._error("cannot list the prefix", exc2) from None
            return
        if info.type == pafs.FileType.NotFound:
            raise InputError(
                f"export target {self}: bucket {self.bucket!r} does not exist "
                "(create it first; cachemon does not create buckets)"
            )

    def _error(self, what: str, exc: OSError) -> InputError:
        """One clear message for a failed S3 call: what failed, why in
        plain words, and the client's own text, secrets removed."""
        text = str(exc)
        if "NETWORK_CONNECTION" in text or "curlCode" in text:
            why = "the endpoint cannot be reached (check CACHEMON_S3_ENDPOINT and the network)"
        elif _refused(text):
            why = (
                "the endpoint refused the credentials (check CACHEMON_S3_ACCESS_KEY_ID and "
                "CACHEMON_S3_SECRET_ACCESS_KEY, and the key's permissions on the bucket)"
            )
        elif "NO_SUCH_BUCKET" in text:
            why = f"bucket {self.bucket!r} does not exist"
        else:
            why = "the endpoint answered with an error"
        return InputError(f"export target {self}: {what}: {why}: {self.redact.clip(text)}")

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def sizes(self, folder: str) -> dict[str, int]:
        """Size of each object under `folder`, by path relative to the prefix (one listing)."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self._path(folder), recursive=True, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(sel)
        except OSError as exc:
            raise self._error(f"cannot list {folder}", exc) from None
        cut = len(self.base) + 1
        return {i.path[cut:]: i.size for i in infos if i.type == pafs.FileType.File}

    def read(self, rel: str) -> bytes | None:
        """An object's bytes, or None when there is none."""
        try:
            with self.fs.open_input_stream(self._path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(f"cannot read {rel}", exc) from None

    def put(self, rel: str, data: bytes) -> None:
        """Upload `data` as the object `rel`: it appears whole or not at all."""
        try:
            with self.fs.open_output_stream(self._path(rel)) as out:
                out.write(data)
        except OSError as exc:
            raise self._error(f"cannot write {rel}", exc) from None


def _refused(text: str) -> bool:
    """Whether the S3 client's error says the credentials were refused."""
    return any(
        s in text for s in ("ACCESS_DENIED", "SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY_ID")
    )


def open_target(
    to: str | os.PathLike, env: Mapping[str, str], redactor: Redactor
) -> DirTarget | S3Target:
    """The export target `to` names: a bucket for `s3://…` (settings from
    `env`), else a local folder."""
    if not is_s3(to) and re.match(r"(?i)\s*s3(:|//)", str(to)):
        # "s3:/b/p" or "s3//b/p" would quietly become a local folder named s3:
        raise InputError(f"--to {str(to)!r} is neither a folder nor s3://bucket/prefix")
    if is_s3(to):
        return S3Target(str(to), S3Settings.from_env(env), redactor)
    return DirTarget(to)
