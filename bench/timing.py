"""Timing shared by the speed benchmarks: alternate the contenders pass by pass (so drifting machine load hits them
alike) and keep each one's best pass."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PASSES = 2


def speed_arguments(description: str) -> argparse.Namespace:
    """`--data` (the shared benchmark data) and `--quick` (one pass, nothing written); progress bars off."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=RESULTS.parent.parent.parent / "shared" / "data")
    parser.add_argument("--quick", action="store_true")
    os.environ["TQDM_DISABLE"] = "1"
    from datasets import disable_progress_bars

    disable_progress_bars()
    return parser.parse_args()


def best_of_alternating(passes: int, **contenders: Callable[[], float]
                        ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Run every contender once per pass, in turn; each returns its own seconds. Returns all timings and the best."""
    timings = {name: [] for name in contenders}
    for _ in range(passes):
        for name, run in contenders.items():
            timings[name].append(run())
    return timings, {name: min(values) for name, values in timings.items()}


def speed_report(count: int, unit: str, best: dict[str, float], timings: dict[str, list[float]],
                 reference: str) -> dict:
    """`<name>_<unit>_per_s` for every contender, and each one's time over the `reference`'s."""
    return {"seconds": timings, **{f"{name}_{unit}_per_s": count / seconds for name, seconds in best.items()},
            **{f"{name}_over_{reference}": seconds / best[reference] for name, seconds in best.items()
               if name != reference}}


def publish(results: dict, name: str, quick: bool) -> None:
    """Print the results; a full run (not `--quick`) also writes them to `bench/results/<name>.json`."""
    print(json.dumps(results, indent=2))
    if not quick:
        (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))
