"""Per-utterance latency of online (causal) MiSTER-E as the conversation grows, at paper sizes.

    python bench/streaming_latency.py           # writes bench/results/streaming_latency.json
    python bench/streaming_latency.py --quick   # up to utterance 100, harness check, nothing written

Times `MisterEForEmotionRecognition.step` (the conversation model; utterance encoders excluded) at utterances 10, 100
and 1000 of one conversation, median of the 5 steps ending there, on 2048-d speech and text embeddings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mister_e import MisterEConfig, MisterEForEmotionRecognition

CHECKPOINTS = (10, 100, 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    checkpoints = CHECKPOINTS[:2] if args.quick else CHECKPOINTS
    torch.manual_seed(0)
    model = MisterEForEmotionRecognition(MisterEConfig(causal=True)).eval()
    state, timings, results = None, [], {}
    with torch.inference_mode():
        for t in range(1, max(checkpoints) + 1):
            speech, text = torch.randn(1, 2048), torch.randn(1, 2048)
            start = time.perf_counter()
            _, state = model.step(speech, text, state=state)
            timings.append(time.perf_counter() - start)
            if t in checkpoints:
                results[f"utterance_{t}_ms"] = 1000 * statistics.median(timings[-5:])
    last = max(checkpoints)
    results[f"ratio_{last}_to_10"] = results[f"utterance_{last}_ms"] / results["utterance_10_ms"]
    print(json.dumps(results, indent=2))
    if not args.quick:
        (Path(__file__).parent / "results" / "streaming_latency.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
