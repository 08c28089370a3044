"""Configuration loading: a TOML file (CACHEMON_CONFIG / --config) over defaults.

Every value has a default, so cachemon runs with no file at all. Unknown
sections or keys are errors naming the file and the key, so a typo is never
silently ignored. Secrets are never read from here: they come from the
environment (see docs/configuration.md). The values are `cachemon.settings`;
this module sits high in the graph because it calls the domain parsers
(alert rules, experiments, prices).
"""

from __future__ import annotations

import math
import os
import stat
import tomllib
from dataclasses import fields, replace
from datetime import timedelta
from pathlib import Path

from cachemon.alerts.rules import parse_rules
from cachemon.argcheck import file_kind
from cachemon.clock import parse_duration
from cachemon.errors import ConfigError
from cachemon.pricing import parse as parse_pricing
from cachemon.settings import _SECTIONS, AlertsConfig, Config, CostsConfig
from cachemon.tuning.experiments import parse as parse_experiments


def load(path: str | os.PathLike | None = None, env: dict | None = None) -> Config:
    """Load the config file named by `path` or CACHEMON_CONFIG (if any)."""
    env = os.environ if env is None else env
    path = path or env.get("CACHEMON_CONFIG")
    cfg = Config()
    if path:
        cfg = _from_file(Path(path))
    if env.get("CACHEMON_DATASET"):
        try:
            cfg = replace(
                cfg, analytics_engine=replace(cfg.analytics_engine, dataset=env["CACHEMON_DATASET"])
            )
        except ConfigError as exc:
            raise ConfigError(f"CACHEMON_DATASET: {exc}") from None
    db = env.get("CACHEMON_DB")
    return cfg if db is None else with_db(cfg, db, "CACHEMON_DB")


# A configuration file is a few kilobytes; the cap keeps a mistaken path
# (a log, a disk image) from being read into memory whole.
MAX_CONFIG_BYTES = 1 << 20


def _read_config(path: Path) -> str:
    """The text of a regular file of at most MAX_CONFIG_BYTES. Opened without
    blocking (a FIFO would wait for a writer) and checked before reading (a
    device like /dev/zero never ends)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"config file {path} is {file_kind(st.st_mode)}, not a regular file")
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file {path} is larger than {MAX_CONFIG_BYTES:,} bytes; is it a config file?"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:  # grew while being read
        raise ConfigError(
            f"config file {path} is larger than {MAX_CONFIG_BYTES:,} bytes; is it a config file?"
        )
    return data.decode("utf-8")


def _from_file(path: Path) -> Config:
    try:
        data = tomllib.loads(_read_config(path))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a file") from None
    except OSError as exc:  # unreadable: permissions, a device, a path too long
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ConfigError(f"config file {path} nests arrays or tables too deeply") from None
    _refuse_non_finite(path, data)
    parts = {}
    for name, value in data.items():
        if name == "source":
            if value not in ("simulator", "analytics_engine"):
                raise ConfigError(
                    f"{path}: source = {value!r}: use 'simulator' or 'analytics_engine'"
                )
            parts["source"] = value
        elif name == "pricing":
            parts["pricing"] = parse_pricing(str(path), value)
        elif name == "experiments":
            continue  # needs the endpoints from [costs]; parsed below
        elif name in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{name}] must be a table")
            parts[name] = _section(path, name, _SECTIONS[name], value)
        else:
            raise ConfigError(f"{path}: unknown section or key {name!r}")
    if "alerts" in parts:
        parts["alerts"] = _alerts(path, data["alerts"], parts["alerts"])
    if "experiments" in data:
        endpoints = tuple(e for e, _ in parts.get("costs", CostsConfig()).kv_ttl)
        parts["experiments"] = parse_experiments(str(path), data["experiments"], endpoints)
    return Config(**parts)


def _refuse_non_finite(path: Path, value, where: str = "") -> None:
    """TOML allows nan and inf; no setting means either (a nan threshold
    never breaches, an inf price makes every cost inf). Checked on the raw
    document, so every float of every section, rule and experiment is."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: {where} = {value} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_non_finite(path, v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_non_finite(path, v, f"{where}[{i}]")


def _alerts(path: Path, raw: dict, scalars: AlertsConfig) -> AlertsConfig:
    """[alerts] with its rules: built-ins, overrides and the user's own."""

    rules = parse_rules(str(path), raw.get("rules", []), scalars.builtin_rules, scalars.disable)
    return (
        replace(scalars, rules=rules) if rules else replace(scalars, rules=(), builtin_rules=False)
    )


def _section(path: Path, name: str, cls, values: dict):
    known = {f.name: f for f in fields(cls)}
    default = cls()
    kwargs = {}
    for key, value in values.items():
        if name == "alerts" and key == "rules":
            continue  # parsed by _alerts
        if key not in known:
            raise ConfigError(f"{path}: [{name}] has unknown key {key!r}")
        kwargs[key] = _coerce(path, f"[{name}] {key}", getattr(default, key), value)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _coerce(path: Path, where: str, default, value):
    """Check a TOML value against the type of its default."""
    if isinstance(default, timedelta):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {where} must be a duration string like '1h', got {value!r}")
        try:
            return parse_duration(value, where)
        except Exception as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if isinstance(default, tuple) and default and isinstance(default[0], tuple):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(
                f'{path}: {where} must be a table of durations like {{ title = "24h" }}'
            )
        try:
            return tuple(sorted((k, parse_duration(v, f"{where}.{k}")) for k, v in value.items()))
        except Exception as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: {where} must be a list of strings, got {value!r}")
        return tuple(value)
    if isinstance(default, bool) or isinstance(value, bool):
        if type(value) is not type(default):
            raise ConfigError(f"{path}: {where} must be {type(default).__name__}, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, type(default)):
        raise ConfigError(f"{path}: {where} must be {type(default).__name__}, got {value!r}")
    return value


def with_db(cfg: Config, path: str, what: str = "--db") -> Config:
    """`cfg` with another store path (the --db flag). An empty one is
    refused: falling back to the default store would write somewhere else."""
    if not path.strip():
        raise ConfigError(f"{what} is empty: name the store file")
    return replace(cfg, store=replace(cfg.store, path=path))
