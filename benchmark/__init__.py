"""selfparam-bench: a harness for knowledge-injection methods (SELF-PARAM and its baselines)."""

import os

# Idle OpenMP worker threads sleep instead of spinning. On a CPU shared with other jobs, spinning
# threads starve each other: a batched LoRA training step of SmolLM2-135M on 2 cores at load ~8 took
# 24-64 s with the default policy and 7 s with PASSIVE. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
