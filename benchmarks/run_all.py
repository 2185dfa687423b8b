"""Run every benchmark in this folder and print their tables (``make bench``)."""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
for script in ("models_throughput.py", "train_step.py", "projection_matching.py", "simulate_throughput.py"):
    print(f"\n## {script}\n", flush=True)
    subprocess.run([sys.executable, str(here / script)], check=True)
