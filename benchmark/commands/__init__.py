"""``bench`` subcommands beyond run and list: each module defines ``register(subparsers)``.

A module adds its parser with ``subparsers.add_parser(...)`` and sets ``handler=function`` through
``set_defaults``; the handler takes the parsed arguments and returns the exit code.
"""
