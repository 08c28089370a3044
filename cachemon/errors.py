"""The one error hierarchy of cachemon.

Shells (CLI, job runner, dashboard) catch `CachemonError` and turn it into a
message: a CLI exit code 2, a log line, an `st.error`. Messages name what is
wrong and never contain a secret.
"""


class CachemonError(Exception):
    """Base of every error cachemon raises on purpose."""


class ConfigError(CachemonError):
    """A configuration file or value is invalid."""


class InputError(CachemonError):
    """User input (an event file, a period, a timestamp) is invalid."""


class StoreError(CachemonError):
    """The DuckDB store is missing, corrupt, locked or empty."""


class SourceError(CachemonError):
    """A data source (simulator, Analytics Engine, files) failed."""


class EmptyStoreError(StoreError):
    """The store does not exist yet or holds no request data (fill it with
    `demo`, `import` or `pull`)."""


class StoreBusyError(StoreError):
    """Another process holds the store for writing longer than a writer
    waits (or DuckDB's own lock refuses the open). Trying again later is
    right: the job runner records it and retries."""


class StoreDiskError(StoreError):
    """The disk refused a write: no space left, a read-only file system, an
    I/O error. Nothing half-written is published; trying again later is
    right once the disk is fixed."""


class StoreUnpublishedError(StoreError):
    """A write was committed to the store, but publishing the readers'
    snapshot failed (a full disk, say): the change is kept and used by the
    runner, readers show the previous snapshot until a publish succeeds.
    Repeating the command would do the write twice."""
