"""The harness's tasks as lm-evaluation-harness tasks (YAML files and ``utils.py`` in this folder).

Use them with ``lm_eval --include_path <this folder> --tasks selfparam_fictional`` or from Python
through ``lm_eval.tasks.TaskManager(include_path=TASKS_DIR)``. The data they read is written by the
harness (``export``) to local JSON files, so nothing is fetched from a hub. ``bench lm-eval``
evaluates a model after injection on them.
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent

# lm-eval task name -> the harness data set it reads.
QA_TASKS = {"selfparam_fictional": "fictional", "selfparam_squad": "squad", "selfparam_pwc": "pwc"}
CQ_SUFFIX = "_cq"  # the same questions with the gold context in the prompt (the C+Q oracle)
REC_TASKS = {"selfparam_inspired": "inspired", "selfparam_redial": "redial"}
# The harness task whose first episode injects before each kind of lm-eval task is asked.
INJECTING_TASK = {"qa": "batch", "crs": "recommendation"}


def task_names() -> list[str]:
    """Every task name the YAML files here define."""
    return sorted([*QA_TASKS, *(t + CQ_SUFFIX for t in QA_TASKS), *REC_TASKS])
