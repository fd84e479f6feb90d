"""Tasks. Every module here registers its tasks when imported (data loaders live in tasks.data)."""

from benchmark.discovery import import_submodules

import_submodules(__name__)
