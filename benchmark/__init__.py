"""selfparam-bench: a harness for knowledge-injection methods (SELF-PARAM and its baselines).

The modules here are the foundations (the Method and Task interfaces, registries, settings, the LM,
metrics, result files and the runner); ``benchmark.app`` is what users call on top of them (the
``bench`` command line and its commands). Importing this package does nothing else.
"""

__version__ = "0.1.0"
