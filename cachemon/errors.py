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
