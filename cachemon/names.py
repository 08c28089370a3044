"""The names of the event contract: tiers, endpoints, statuses and kinds.

Plain tuples with no numpy or pyarrow behind them: the configuration and the
command line read them at start-up. `cachemon.events` (the contract itself)
re-exports them, so `events.TIERS` is this `TIERS`, the one definition.
"""

# The tier that served a request (`index1`), in lookup order: the Worker
# tries the edge cache, then Workers KV, then the R2 cold store, then the
# origin API.
TIERS = ("edge", "kv", "r2", "api")
# BooksTrack's endpoints (key families, `blob2`) as its Worker names them: the
# keys of its `config:kv-ttls` and of the TTL tables. Events may carry other
# endpoints; these are the ones the Worker has TTLs for.
ENDPOINTS = ("title", "isbn", "author")
STATUSES = ("ok", "error")
GAUGES = ("queue_depth", "kv_storage_bytes", "r2_storage_bytes")
KINDS = ("request",) + GAUGES
