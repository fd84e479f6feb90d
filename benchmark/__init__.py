"""selfparam-bench: a harness for knowledge-injection methods (SELF-PARAM and its baselines)."""

__version__ = "0.1.0"
