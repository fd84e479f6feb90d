"""Knowledge-injection methods. Every module here registers its methods when imported."""

from benchmark.discovery import import_submodules
from methods.base import Method

import_submodules(__name__)

__all__ = ["Method"]
