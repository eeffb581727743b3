"""Stage-2 speed at paper sizes on MELD's conversations: ours against the authors' released code on identical batches,
and against this machine's matmul rate.

    python bench/stage2_speed.py --authors PATH/hierarchical_moe.py  # side by side -> bench/results/stage2_speed.json
    python bench/stage2_speed.py                                     # ours alone (no authors' code at hand)
    python bench/stage2_speed.py --device cuda                       # -> bench/results/stage2_speed_cuda.json
    python bench/stage2_speed.py --quick                             # a few steps, harness check, nothing written

`--authors` is the authors' `hierarchical_moe.py` (github.com/iiscleap/MiSTER-E), loaded from where the user keeps it:
none of its code is in this project. Both models are paper size (2048-d speech and text embeddings, 7 classes) and see
the same batches: MELD-train's dialogue lengths (from `--data`, or a synthetic stand-in), shuffled once, 8 dialogues a
batch padded to the longest, as both training scripts batch them. A training step is forward, loss, backward, clip 1.0
and the optimizer: ours is what the paper recipe builds (fused AdamW, no weight decay), theirs is their script's (Adam,
lr 1e-5) with their objective (focal losses with exponent 3 on the mixture and each expert, SupCon weight 2 on the
co-attention vectors, symmetric KL weight 0.1), computed by this package's loss functions. Contenders alternate pass by
pass (`timing.py`) and keep their best pass. bfloat16 rows run under CPU/CUDA autocast (weights and optimizer fp32).

Also: inference (eval mode, no gradients) at 8 dialogues a batch and one at a time; FLOPs of our training step counted
by FlopCounterMode against a dense matmul of the same dtype; peak memory of each model's training in a fresh process;
our step over length-grouped batches of the same dialogues (Trainer's `group_by_length` grouping); the time to write
a checkpoint's weights and optimizer state, against a MELD epoch; and where the fp32 training step's time goes
(forward, backward, clipping, optimizer, for both; our GRUs' recurrences alone), with the ratio to the authors' code
that our step could reach at best if the rest of it ran at the dense matmul rate (`..._ceiling_...`).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.flop_counter import FlopCounterMode
from transformers.trainer_pt_utils import get_length_grouped_indices

from mister_e import MisterEConfig, MisterEForEmotionRecognition
from mister_e.losses_mister_e import focal_loss, supervised_contrastive_loss
from mister_e.training.trainer import clip_into_fused_step
from mister_e.utils import reuse_freed_memory

from timing import RESULTS, best_of_alternating

BATCH, LABELS, WIDTH, MEASURED_BATCHES = 8, 7, 2048, 24


def meld_lengths(data: Path) -> tuple[list[int], str]:
    """MELD-train's dialogue lengths (1038 dialogues, 9989 utterances), or a seeded stand-in of the same shape."""
    path = data / "meld" / "train_sent_emo.csv"
    if path.is_file():
        with path.open(encoding="utf-8") as file:
            return list(Counter(row["Dialogue_ID"] for row in csv.DictReader(file)).values()), "MELD train"
    uniform = torch.rand(1038, generator=torch.Generator().manual_seed(0))
    lengths = (torch.log1p(-uniform) / torch.log(torch.tensor(0.9))).ceil().clamp(1, 24)  # geometric, mean ~9.5
    return lengths.long().tolist(), "synthetic (no MELD CSV)"


def batches_of(lengths: list[int], count: int, device: torch.device) -> list[dict]:
    """`count` batches of 8 dialogues, spread evenly over the shuffled set; random embeddings, zero at padding."""
    generator = torch.Generator().manual_seed(0)
    groups = in_batches(torch.randperm(len(lengths), generator=generator).tolist(), lengths)
    return [batch_of(group, generator, device) for group in groups[:: max(1, len(groups) // count)][:count]]


def in_batches(order: list[int], lengths: list[int]) -> list[list[int]]:
    """The dialogue lengths in `order`, 8 to a batch."""
    return [[lengths[i] for i in order[start:start + BATCH]] for start in range(0, len(order), BATCH)]


def batch_of(lengths: list[int], generator: torch.Generator, device: torch.device) -> dict:
    longest = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (longest - n) for n in lengths])
    embeds = [torch.randn(len(lengths), longest, WIDTH, generator=generator) * mask[..., None] for _ in range(2)]
    labels = torch.randint(0, LABELS, mask.shape, generator=generator).masked_fill(mask == 0, -100)
    batch = dict(speech_embeds=embeds[0], text_embeds=embeds[1], attention_mask=mask, labels=labels)
    return {key: value.to(device) for key, value in batch.items()}


def utterances(batches: list[dict]) -> int:
    return int(sum(batch["attention_mask"].sum() for batch in batches))


class Ours:
    def __init__(self, device):
        if device.type == "cpu":  # as MisterETrainer does; process-wide, so the authors' code gains from it too
            reuse_freed_memory()
        torch.manual_seed(0)
        self.model = MisterEForEmotionRecognition(MisterEConfig(num_labels=LABELS)).to(device)
        # What the paper recipe's `optim: adamw_torch_fused`, `weight_decay: 0` builds.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5, weight_decay=0.0, fused=True)

    def loss(self, batch):
        return self.model(**batch).loss

    def clip(self):
        # What MisterETrainer does with a fused Adam(W): the clipping factor goes into the optimizer's step.
        clip_into_fused_step(self.optimizer, self.model.parameters(), 1.0)

    def infer(self, batch):
        return self.model(batch["speech_embeds"], batch["text_embeds"], batch["attention_mask"]).logits


class Authors:
    """The authors' `AttentionMoE` with the optimiser and objective of their `train_moe.py`."""

    def __init__(self, device, path: Path):
        spec = importlib.util.spec_from_file_location("hierarchical_moe", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        torch.manual_seed(0)
        self.model = module.AttentionMoE(WIDTH, 768, LABELS).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-5)

    def loss(self, batch):
        mixture, speech, text, speech_logits, text_logits, fusion_logits, kl, _, _ = self.model(
            batch["speech_embeds"], batch["text_embeds"])
        rows, labels = batch["attention_mask"].bool(), batch["labels"].clamp(min=0)
        loss = sum(focal_loss(logits, labels, rows, 3.0) for logits in (mixture, speech_logits, text_logits, fusion_logits))
        features = torch.cat([speech[rows], text[rows]])
        return loss + 2.0 * supervised_contrastive_loss(features, torch.cat([labels[rows]] * 2), 1.0) + 0.1 * kl

    def infer(self, batch):
        return self.model(batch["speech_embeds"], batch["text_embeds"])[0]

    def clip(self):
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)


def train_step(contender, batch, dtype):
    contender.optimizer.zero_grad()
    device_type = batch["labels"].device.type
    with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
        loss = contender.loss(batch)
    loss.backward()
    contender.clip()
    contender.optimizer.step()


def step_parts(contender, batches, device) -> dict[str, float]:
    """Seconds of each part of the fp32 training step over `batches`: forward and loss, backward, clipping, optimizer."""
    parts = dict.fromkeys(("forward", "backward", "clip", "optimizer"), 0.0)

    def lap(part, work):
        synchronize(device)
        start = time.perf_counter()
        result = work()
        synchronize(device)
        parts[part] += time.perf_counter() - start
        return result

    for batch in batches:
        contender.optimizer.zero_grad()
        lap("backward", lap("forward", lambda: contender.loss(batch)).backward)
        lap("clip", contender.clip)
        lap("optimizer", contender.optimizer.step)
    return parts


def recurrence_seconds(ours: Ours, batches, device) -> float:
    """Seconds of our two context modules' GRUs alone, forward and backward, on the conversations of `batches` (their
    real lengths; the inputs they get in a step: the convolutions' output width): the part of the step that runs
    utterance after utterance, kept in fp32, already with its faster backward (`gru_packed`)."""
    modules = (ours.model.speech_expert, ours.model.text_expert)
    width = modules[0].gru.input_size
    start = time.perf_counter()
    for batch in batches:
        lengths = batch["attention_mask"].sum(1).cpu()
        for module in modules:
            inputs = torch.randn(len(lengths), int(lengths.max()), width, device=device, requires_grad=True)
            packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
            module._recur(packed)[0].data.sum().backward()
    synchronize(device)
    return time.perf_counter() - start


def timed(device):
    def run(work, items):
        synchronize(device)
        start = time.perf_counter()
        for item in items:
            work(item)
        synchronize(device)
        return time.perf_counter() - start
    return run


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype) -> float:
    size, repeats = (8192, 50) if device.type == "cuda" else (2048, 10)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def peak_memory(args, contender: str) -> tuple[float, float]:
    """Peak RSS (CPU) or allocated GPU memory, GiB, of training `contender` on the longest batches, in a fresh process;
    and that peak less the process's memory before the model is built (what the imports hold is not training's)."""
    command = [sys.executable, __file__, "--memory-of", contender, "--device", args.device, "--data", str(args.data)]
    if args.authors:
        command += ["--authors", str(args.authors)]
    peak, before = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-2:]
    return float(peak), float(peak) - float(before)


def memory_probe(args) -> None:
    device = torch.device(args.device)
    name, _, precision = args.memory_of.partition(":")
    before = 0.0 if device.type == "cuda" else int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf(
        "SC_PAGE_SIZE") / 2**30
    contender = Ours(device) if name == "ours" else Authors(device, args.authors)
    lengths, _ = meld_lengths(args.data)
    batches = sorted(batches_of(lengths, MEASURED_BATCHES, device), key=lambda b: -b["labels"].numel())[:3]
    for batch in batches:
        train_step(contender, batch, getattr(torch, precision or "float32"))
    if device.type == "cuda":
        print(torch.cuda.max_memory_allocated(device) / 2**30, before)
    else:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors", type=Path, help="the authors' hierarchical_moe.py (side-by-side mode)")
    parser.add_argument("--data", type=Path, default=RESULTS.parent.parent.parent / "shared" / "data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.authors is not None and not args.authors.is_file():
        raise SystemExit(f"--authors {args.authors}: no such file (the authors' hierarchical_moe.py).")
    if args.memory_of:
        return memory_probe(args)
    # First, while this process is small: a child's peak RSS counts the memory it was forked with.
    memory = {} if args.quick else {name: peak_memory(args, name) for name in
                                    ("ours", "ours:bfloat16", *(("authors",) if args.authors else ()))}
    device = torch.device(args.device)
    lengths, source = meld_lengths(args.data)
    batches = batches_of(lengths, 2 if args.quick else MEASURED_BATCHES, device)
    count = utterances(batches)
    passes = 1 if args.quick else 2
    bf16 = torch.bfloat16
    ours = Ours(device)
    contenders = {"ours": (ours, torch.float32), "ours_bf16": (ours, bf16)}
    if args.authors:
        authors = Authors(device, args.authors)
        contenders |= {"authors": (authors, torch.float32), "authors_bf16": (authors, bf16)}
    else:
        print("No --authors path given: measuring ours alone (side-by-side figures skipped).")
    run = timed(device)

    for contender, dtype in contenders.values():  # warm-up
        train_step(contender, batches[0], dtype)
    training = {name: (lambda c=c, d=d: run(lambda b: train_step(c, b, d), batches))
                for name, (c, d) in contenders.items()}
    train_seconds, train_best = best_of_alternating(passes, **training)
    grouped = batches_of_grouped(lengths, count, device, args.quick)
    grouped_seconds = min(run(lambda b: train_step(ours, b, torch.float32), grouped) for _ in range(passes))
    grouped_rate = utterances(grouped) / grouped_seconds

    def inference(contender, dtype, one_at_a_time):
        contender.model.eval()
        items = [single for batch in batches for single in split(batch)] if one_at_a_time else batches
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            seconds = run(contender.infer, items)
        contender.model.train()
        return seconds

    infer = {f"{name}_batch{size}": (lambda c=c, d=d, s=size: inference(c, d, s == 1))
             for name, (c, d) in contenders.items() for size in (8, 1)}
    infer_seconds, infer_best = best_of_alternating(passes, **infer)

    checkpoint_seconds = min(checkpoint_write(ours) for _ in range(passes))

    # Where our fp32 step's time goes, and the parts no rewrite of the rest can remove: the GRUs' recurrences and the
    # optimizer (fused AdamW reads and writes every parameter and both its moments: bound by memory bandwidth).
    parts = {name: step_parts(contender, batches, device) for name, (contender, dtype) in contenders.items()
             if dtype == torch.float32}
    recurrences = min(recurrence_seconds(ours, batches, device) for _ in range(passes))

    with FlopCounterMode(display=False) as counter:
        train_step(ours, batches[0], torch.float32)
    flops_per_utterance = counter.get_total_flops() / utterances(batches[:1])
    with FlopCounterMode(display=False) as counter:
        recurrence_seconds(ours, batches[:1], device)
    recurrence_flops_per_utterance = counter.get_total_flops() / utterances(batches[:1])
    rates = {"float32": matmul_flops_per_second(device, torch.float32),
             "bfloat16": matmul_flops_per_second(device, bf16)}

    results = {
        "machine": (torch.cuda.get_device_name(device) if device.type == "cuda" else
                    f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
        + f", torch {torch.__version__}",
        "quick": args.quick,
        "dialogues": source,
        "batches_measured": len(batches),
        "utterances_measured": count,
        "padded_slots_measured": sum(batch["labels"].numel() for batch in batches),
        "parameters": {"ours": sum(p.numel() for p in ours.model.parameters()),
                       **({"authors": sum(p.numel() for p in authors.model.parameters())} if args.authors else {})},
        "training_utterances_per_second": {name: count / s for name, s in train_best.items()},
        "training_utterances_per_second_length_grouped_batches": {"ours": grouped_rate},
        "inference_utterances_per_second": {name: count / s for name, s in infer_best.items()},
        "seconds_per_meld_epoch": {name: sum(lengths) / (count / s) for name, s in train_best.items()},
        "step_part_seconds_fp32": parts,
        "ours_gru_recurrences_seconds": recurrences,
        "checkpoint_write_seconds": checkpoint_seconds,
        "checkpoint_write_over_meld_epoch": checkpoint_seconds / (sum(lengths) / (count / train_best["ours"])),
        "counted_training_flops_per_utterance": flops_per_utterance,
        "counted_gru_recurrence_flops_per_utterance": recurrence_flops_per_utterance,
        "matmul_flops_per_second": rates,
        "fraction_of_matmul_rate": {
            "ours": flops_per_utterance * count / train_best["ours"] / rates["float32"],
            "ours_bf16": flops_per_utterance * count / train_best["ours_bf16"] / rates["bfloat16"],
        },
        "seconds": {"training": train_seconds, "inference": infer_seconds},
        "note": "FlopCounterMode counts matmuls, convolutions and attention, not the GRU's recurrent kernel on every "
                "backend: the fractions are lower bounds.",
    }
    if args.authors:
        results["ratios"] = {
            "training_fp32_over_authors_fp32": train_best["authors"] / train_best["ours"],
            "training_bf16_over_authors_fp32": train_best["authors"] / train_best["ours_bf16"],
            "training_bf16_over_authors_bf16": train_best["authors_bf16"] / train_best["ours_bf16"],
            # What our fp32 step would reach if its GRUs, clipping and optimizer took what they take, every other
            # counted FLOP ran at the dense matmul rate, and nothing else cost anything.
            "training_fp32_ceiling_over_authors_fp32": sum(parts["authors"].values()) / (
                recurrences + parts["ours"]["clip"] + parts["ours"]["optimizer"]
                + (flops_per_utterance - recurrence_flops_per_utterance) * count / rates["float32"]),
            **{f"inference_batch{size}_{precision}_over_authors_fp32":
               infer_best[f"authors_batch{size}"] / infer_best[f"ours{suffix}_batch{size}"]
               for size in (8, 1) for precision, suffix in (("fp32", ""), ("bf16", "_bf16"))},
        }
    if memory:
        results["peak_memory_gib"] = {name: peak for name, (peak, _) in memory.items()}
        results["training_memory_gib"] = {name: grown for name, (_, grown) in memory.items()}
    print(json.dumps(results, indent=2))
    if not args.quick:
        name = "stage2_speed" + ("" if device.type == "cpu" else f"_{device.type}")
        (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))


def checkpoint_write(contender) -> float:
    """Seconds to write what a Trainer checkpoint holds at this size: the weights (safetensors) and the optimizer
    state, to a temporary folder on the results' disk."""
    with tempfile.TemporaryDirectory(dir=RESULTS) as folder:
        start = time.perf_counter()
        contender.model.save_pretrained(folder)
        torch.save(contender.optimizer.state_dict(), Path(folder) / "optimizer.pt")
        os.sync()
        return time.perf_counter() - start


def split(batch: dict) -> list[dict]:
    """The batch's dialogues one at a time, unpadded."""
    lengths = batch["attention_mask"].sum(1).tolist()
    return [{key: value[i : i + 1, :n] for key, value in batch.items()} for i, n in enumerate(lengths)]


def batches_of_grouped(lengths: list[int], count: int, device: torch.device, quick: bool) -> list[dict]:
    """Batches of the same shuffled dialogues grouped by length as Trainer's `group_by_length` does, as many as it
    takes to hold about `count` utterances."""
    generator = torch.Generator().manual_seed(0)
    # Without the first batch: the longest of all, which Trainer puts first to fail early on memory.
    groups = in_batches(get_length_grouped_indices(lengths, BATCH, generator=generator), lengths)[1:]
    picked, total = [], 0
    for group in groups[:: max(1, len(groups) // (2 if quick else MEASURED_BATCHES))]:
        if total >= count:
            break
        picked.append(batch_of(group, generator, device))
        total += sum(group)
    return picked


if __name__ == "__main__":
    main()
