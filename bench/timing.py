"""Timing shared by the speed benchmarks: alternate the contenders pass by pass (so drifting machine load hits them
alike) and keep each one's best pass."""

from __future__ import annotations

from collections.abc import Callable


def best_of_alternating(passes: int, **contenders: Callable[[], float]
                        ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Run every contender once per pass, in turn; each returns its own seconds. Returns all timings and the best."""
    timings = {name: [] for name in contenders}
    for _ in range(passes):
        for name, run in contenders.items():
            timings[name].append(run())
    return timings, {name: min(values) for name, values in timings.items()}
