"""selfparam-bench: a harness for knowledge-injection methods (SELF-PARAM and its baselines)."""

from benchmark.threads import choose_omp_wait_policy

# Before torch is imported: OpenMP reads its wait policy once, when it loads.
choose_omp_wait_policy()

__version__ = "0.1.0"
