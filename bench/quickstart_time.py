"""Wall time of `mister-e quickstart` (the README's first command, less its install), and of the same command again.

    python bench/quickstart_time.py           # bench/results/quickstart_time.json
    python bench/quickstart_time.py --quick   # the same two runs, nothing written

Each run is the CLI in a fresh process (imports included, as a user types it), offline, into a new folder and a new
HF_HOME: the first run trains both encoders, extracts and trains stage 2; the second, the same command again, reuses
all of it and prints the same predictions. Run it on otherwise idle cores: the figure is a wall time.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from timing import publish, speed_arguments


def timed_quickstart(output_dir: Path, hf_home: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)}
    command = [sys.executable, "-m", "mister_e.cli", "quickstart", "--output-dir", str(output_dir)]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    args = speed_arguments(__doc__.splitlines()[0])
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        first = timed_quickstart(work / "quickstart", work / "hf-home")
        again = timed_quickstart(work / "quickstart", work / "hf-home")
    publish({"first_run_s": first, "same_command_again_s": again, "torch_threads": torch.get_num_threads(),
             "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine()},
            "quickstart_time", args.quick)


if __name__ == "__main__":
    main()
