"""Stage-2 training speed at paper sizes on an IEMOCAP-sized synthetic set, against this machine's matmul rate.

    python bench/stage2_speed.py                                 # bench/results/stage2_speed.json (CPU)
    python bench/stage2_speed.py --device cuda                   # bench/results/stage2_speed_cuda.json (fp32)
    python bench/stage2_speed.py --device cuda --dtype bfloat16  # bench/results/stage2_speed_cuda_bf16.json (autocast)
    python bench/stage2_speed.py --quick                         # a few steps, harness check, nothing written

Measures seconds per training step (8 conversations, Adam, clip 1.0), extrapolates seconds per epoch and per
100-epoch run, counts the FLOPs of one step with torch's FlopCounterMode, and compares the achieved FLOP/s with a dense
matmul of the same dtype measured in the same run (the practical limit). Peak RSS is the process's maximum resident
set; on a GPU, peak allocated GPU memory is reported too. With `--dtype bfloat16` the step runs under autocast (weights
and optimizer stay fp32).
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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    size, repeats = (8192, 50) if device.type == "cuda" else (size, repeats)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def conversation_lengths(generator: torch.Generator) -> list[int]:
    """151 lengths summing to 7433, spread like IEMOCAP's dialogues (about 20 to 110 utterances)."""
    raw = torch.rand(CONVERSATIONS, generator=generator) * 0.9 + 0.4
    lengths = (raw / raw.sum() * UTTERANCES).floor().long()
    lengths[: UTTERANCES - int(lengths.sum())] += 1
    return lengths.tolist()


def batch_of(lengths: list[int], config: MisterEConfig, generator: torch.Generator, device: torch.device) -> dict:
    longest = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (longest - n) for n in lengths])
    labels = torch.randint(0, config.num_labels, mask.shape, generator=generator).masked_fill(mask == 0, -100)
    batch = dict(
        speech_embeds=torch.randn(len(lengths), longest, config.speech_embed_dim, generator=generator),
        text_embeds=torch.randn(len(lengths), longest, config.text_embed_dim, generator=generator),
        attention_mask=mask,
        labels=labels,
    )
    return {key: value.to(device) for key, value in batch.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="autocast dtype")
    parser.add_argument("--output", help="results file (default: bench/results/stage2_speed[_<device>][_bf16].json)")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    name = "stage2_speed" + ("" if device.type == "cpu" else f"_{device.type}") + ("_bf16" if args.dtype != "float32" else "")
    output = args.output or (None if args.quick else Path(__file__).parent / "results" / f"{name}.json")
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    config = MisterEConfig()
    model = MisterEForEmotionRecognition(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    lengths = conversation_lengths(generator)
    batches = [lengths[i : i + BATCH] for i in range(0, CONVERSATIONS, BATCH)]

    def step(batch):
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    measured = batches[:2] if args.quick else batches
    step(batch_of(measured[0], config, generator, device))  # warm-up
    with FlopCounterMode(display=False) as counter:
        step(batch_of(measured[0], config, generator, device))
    flops_first_batch = counter.get_total_flops()
    inputs = [batch_of(lengths_of_batch, config, generator, device) for lengths_of_batch in measured]
    synchronize(device)
    start, utterances = time.perf_counter(), 0
    for lengths_of_batch, batch in zip(measured, inputs):
        step(batch)
        utterances += sum(lengths_of_batch)
    synchronize(device)
    elapsed = time.perf_counter() - start
    seconds_per_epoch = elapsed / len(measured) * len(batches)
    step_flops_per_utterance = flops_first_batch / sum(measured[0])
    matmul_rate = matmul_flops_per_second(device, dtype)
    achieved = step_flops_per_utterance * utterances / elapsed
    results = {
        "machine": (torch.cuda.get_device_name(device) if device.type == "cuda" else
                    f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
        + f", torch {torch.__version__}",
        "dtype": args.dtype,
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
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "note": "FlopCounterMode counts the ops it knows (matmuls, convolutions, attention); an op it does not count "
        "(a fused RNN kernel, say) makes the achieved FLOP/s a lower bound.",
    }
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
