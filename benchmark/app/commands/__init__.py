"""``bench`` subcommands beyond run and list: each module defines ``register(subparsers)``.

A module adds its parser with ``subparsers.add_parser(...)`` and sets ``handler=function`` through
``set_defaults``; the handler takes the parsed arguments and returns the exit code.

Every module here is imported to build the parser, so a module imports at its top only what loads
quickly (settings, errors, the registries); the runner, models, methods, tasks, lm-eval and the
leaderboard's plotting wait for the handler that needs them.
"""
