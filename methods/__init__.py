"""Knowledge-injection methods; importing this package registers the built-ins."""

from methods import base  # noqa: F401
from methods.base import Method

__all__ = ["Method"]
