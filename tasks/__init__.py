"""Tasks; importing this package registers the built-ins."""

from tasks import batch  # noqa: F401
