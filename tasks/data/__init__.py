"""Data-set loaders; importing this package registers the built-ins."""

from tasks.data import fictional, qa_jsonl  # noqa: F401
