"""vlaprune: how much of a VLA policy do you need?"""

import os

__version__ = "0.1.0"

# OpenMP threads that wait for work sleep instead of spinning. With spinning (libgomp's default), two torch
# processes on the same cores (an evaluation beside a test run, two sweep shards) slowed each other down
# 8x; with passive waiting 1.2x (benchmarks/parallel_eval.py, results/parallel_eval.json). Takes effect
# when vlaprune is imported before torch (the CLI); set OMP_WAIT_POLICY yourself to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
