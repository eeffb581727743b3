"""Stage-2 training speed at paper sizes on an IEMOCAP-sized synthetic set, against this machine's matmul rate.

    python bench/stage2_speed.py            # writes bench/results/stage2_speed.json
    python bench/stage2_speed.py --quick    # a few steps, to check the harness still runs

Measures seconds per training step (8 conversations, Adam, clip 1.0), extrapolates seconds per epoch and per
100-epoch run, counts the FLOPs of one step with torch's FlopCounterMode, and compares the achieved FLOP/s with a dense
fp32 matmul measured in the same run (the practical limit). Peak RSS is the process's maximum resident set.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mister_e import MisterEConfig, MisterEForEmotionRecognition

CONVERSATIONS, UTTERANCES, BATCH = 151, 7433, 8


def matmul_flops_per_second(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def conversation_lengths(generator: torch.Generator) -> list[int]:
    """151 lengths summing to 7433, spread like IEMOCAP's dialogues (about 20 to 110 utterances)."""
    raw = torch.rand(CONVERSATIONS, generator=generator) * 0.9 + 0.4
    lengths = (raw / raw.sum() * UTTERANCES).floor().long()
    lengths[: UTTERANCES - int(lengths.sum())] += 1
    return lengths.tolist()


def batch_of(lengths: list[int], config: MisterEConfig, generator: torch.Generator) -> dict:
    longest = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (longest - n) for n in lengths])
    labels = torch.randint(0, config.num_labels, mask.shape, generator=generator).masked_fill(mask == 0, -100)
    return dict(
        speech_embeds=torch.randn(len(lengths), longest, config.speech_embed_dim, generator=generator),
        text_embeds=torch.randn(len(lengths), longest, config.text_embed_dim, generator=generator),
        attention_mask=mask,
        labels=labels,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "stage2_speed.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    config = MisterEConfig()
    model = MisterEForEmotionRecognition(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    lengths = conversation_lengths(generator)
    batches = [lengths[i : i + BATCH] for i in range(0, CONVERSATIONS, BATCH)]

    def step(batch):
        optimizer.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    measured = batches[:2] if args.quick else batches
    step(batch_of(measured[0], config, generator))  # warm-up
    with FlopCounterMode(display=False) as counter:
        step(batch_of(measured[0], config, generator))
    flops_first_batch = counter.get_total_flops()
    start, utterances = time.perf_counter(), 0
    for lengths_of_batch in measured:
        step(batch_of(lengths_of_batch, config, generator))
        utterances += sum(lengths_of_batch)
    elapsed = time.perf_counter() - start
    seconds_per_epoch = elapsed / len(measured) * len(batches)
    step_flops_per_utterance = flops_first_batch / sum(measured[0])
    matmul_rate = matmul_flops_per_second()
    achieved = step_flops_per_utterance * utterances / elapsed
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "quick": args.quick,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps_measured": len(measured),
        "seconds_per_step": elapsed / len(measured),
        "seconds_per_epoch": seconds_per_epoch,
        "hours_per_100_epochs": seconds_per_epoch * 100 / 3600,
        "utterances_per_second": utterances / elapsed,
        "counted_flops_per_utterance": step_flops_per_utterance,
        "achieved_flops_per_second": achieved,
        "matmul_flops_per_second": matmul_rate,
        "fraction_of_matmul_rate": achieved / matmul_rate,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "note": "FlopCounterMode counts the ops it knows (matmuls, convolutions, attention); an op it does not count "
        "(a fused RNN kernel, say) makes the achieved FLOP/s a lower bound.",
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
