"""Data-set loaders. Every module here registers its data sets when imported."""

from benchmark.discovery import import_submodules

import_submodules(__name__)
