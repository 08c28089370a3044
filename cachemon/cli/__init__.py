"""The command line (`python -m cachemon`), one module per command group.

`main` holds the global options, the error policy, `build_parser()` and
`GROUPS`: each command's group module and its one-line help. Each other
module (`ingest`, `serve`, `metrics`, `alerts`, `ttl`, `store`, `costs`,
`experiments`) has a `register(subparsers)` that adds its commands and sets
`func=` on each: a short function `(args, cfg, now) -> exit code` that calls
into the library and prints. A group's module is imported only when one of
its commands runs (start-up time). A new command goes into the module of its
group (or a new module), with its line in `main.GROUPS`.
"""
