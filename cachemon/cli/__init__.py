"""The command line (`python -m cachemon`), one module per command group.

`main` holds the global options, the error policy and `build_parser()`; each
other module (`ingest`, `metrics`, `alerts`, `ttl`, `store`, `costs`,
`experiments`) has a `register(subparsers)` that adds its commands and sets
`func=` on each: a short function `(args, cfg, now) -> exit code` that calls
into the library and prints. A new command goes into the module of its group
(or a new module listed in `main.GROUPS`).
"""
