"""Per-utterance latency of online (causal) MiSTER-E as the conversation grows, at paper sizes.

    python bench/streaming_latency.py   # writes bench/results/streaming_latency.json

Times `MisterEForEmotionRecognition.step` (the conversation model; utterance encoders excluded) at utterances 10, 100
and 1000 of one conversation, median of the 5 steps ending there, on 2048-d speech and text embeddings.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from mister_e import MisterEConfig, MisterEForEmotionRecognition

CHECKPOINTS = (10, 100, 1000)


def main() -> None:
    torch.manual_seed(0)
    model = MisterEForEmotionRecognition(MisterEConfig(causal=True)).eval()
    state, timings, results = None, [], {}
    with torch.inference_mode():
        for t in range(1, max(CHECKPOINTS) + 1):
            speech, text = torch.randn(1, 2048), torch.randn(1, 2048)
            start = time.perf_counter()
            _, state = model.step(speech, text, state=state)
            timings.append(time.perf_counter() - start)
            if t in CHECKPOINTS:
                results[f"utterance_{t}_ms"] = 1000 * statistics.median(timings[-5:])
    results["ratio_1000_to_10"] = results["utterance_1000_ms"] / results["utterance_10_ms"]
    path = Path(__file__).parent / "results" / "streaming_latency.json"
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
