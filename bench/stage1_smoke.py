r"""Stage-1 smoke run at mid size: bf16 backbone, fp32 LoRA and heads, gradient checkpointing, on a GPU.

    python bench/stage1_smoke.py                      # CUDA: Qwen2-0.5B-sized text + WavLM-base-sized speech
    python bench/stage1_smoke.py --no-gradient-checkpointing --output bench/results/stage1_smoke_no_gc.json
    python bench/stage1_smoke.py --modalities text --text-backbone llama-3.1-8b \
        --output bench/results/stage1_smoke_llama8b.json   # the paper's text LLM architecture, 16 GB in bf16
    python bench/stage1_smoke.py --tiny               # tiny configs on CPU, seconds: checks the harness

Each encoder is trained alone, as in stage 1, on synthetic utterances whose label the model can learn (the text's
second token id, the pitch of a noisy tone): randomly initialised backbones built from configs (no weights, no Hub),
LoRA with the package's presets, AdamW. Reports steps/s, utterances/s, peak GPU memory, the first and last loss, the
dtypes of backbone, LoRA and head parameters, whether every LoRA parameter got a gradient in some step (WavLM's
LayerDrop skips layers in a given step), and, for the decoder text backbone, `mister_e.training.memory_plan`'s estimates of the
activations and of the peak beside the measured ones. Writes bench/results/stage1_smoke.json (stage1_smoke_tiny.json
with --tiny). Needs what the package needs: transformers >= 5.20 (5.17 lacks the `SubConfigSpec` the config uses).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import peft
import torch
import transformers
from transformers import Qwen2Config, WavLMConfig

from mister_e import MisterEConfig, MisterEForUtteranceClassification
from mister_e.training.lora import apply_lora
from mister_e.training.memory_plan import CUDA_CONTEXT_GIB, GIB, paper_backbone_config, parameter_sizes, training_memory

NUM_LABELS, SAMPLE_RATE = 6, 16000
# Qwen2-0.5B's architecture (494 M parameters) and WavLM-base-plus's (the package's default speech backbone).
TEXT_CONFIG = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                   num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                   tie_word_embeddings=True)
SPEECH_CONFIG = dict(num_buckets=320, max_bucket_distance=800)
TINY_TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1)
TINY_SPEECH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_dim=(8, 8),
                   conv_stride=(5, 4), conv_kernel=(10, 4), num_feat_extract_layers=2, num_conv_pos_embeddings=16,
                   num_conv_pos_embedding_groups=2, num_buckets=16, max_bucket_distance=20)


def utterances(modality: str, count: int, size: int, vocab: int, generator: torch.Generator) -> list[dict]:
    """Learnable synthetic utterances: `size` tokens (the last quarter padded in half of them) or samples."""
    rows = []
    for index in range(count):
        label = index % NUM_LABELS
        if modality == "text":
            ids = torch.randint(3, vocab, (size,), generator=generator)
            ids[1] = 3 + label
            mask = torch.ones(size, dtype=torch.long)
            mask[size - size // 4:] = index % 2 == 0
            rows.append({"input_ids": ids * mask, "text_attention_mask": mask, "label": label})
        else:
            tone = torch.sin(2 * torch.pi * 150 * (label + 1) * torch.arange(size) / SAMPLE_RATE)
            audio = 0.1 * tone + 0.05 * torch.randn(size, generator=generator)
            rows.append({"input_values": audio, "speech_attention_mask": torch.ones(size, dtype=torch.long),
                         "label": label})
    return rows


def collate(rows: list[dict], device: torch.device) -> dict[str, torch.Tensor]:
    """One-utterance conversations, the batch format of `MisterEDataCollator`."""
    batch = {key: torch.stack([row[key] for row in rows]).to(device) for key in rows[0] if key != "label"}
    batch["attention_mask"] = torch.ones(len(rows), 1, dtype=torch.long, device=device)
    batch["labels"] = torch.tensor([[row["label"]] for row in rows], device=device)
    return batch


def dtypes(named_parameters, keep) -> list[str]:
    return sorted({str(p.dtype).removeprefix("torch.") for name, p in named_parameters if keep(name)})


def run(modality: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    if modality == "speech":
        backbone_config = WavLMConfig(**(TINY_SPEECH if args.tiny else SPEECH_CONFIG))
    elif args.tiny or args.text_backbone == "qwen2-0.5b":
        backbone_config = Qwen2Config(**(TINY_TEXT if args.tiny else TEXT_CONFIG))
    else:
        backbone_config = paper_backbone_config("text")
    width = 16 if args.tiny else 2048
    config = MisterEConfig(**{f"{modality}_config": backbone_config, f"{modality}_embed_dim": width},
                           num_labels=NUM_LABELS)
    with device:  # initialised where it trains: an 8B backbone builds in seconds on a GPU
        model = MisterEForUtteranceClassification(config)
    model.to(device)  # what the device context does not reach (WavLM's `torch.Tensor(...)` parameter)
    encoder = getattr(model, f"{modality}_encoder")
    encoder.backbone.to(torch.bfloat16)
    backbone_parameters = sum(p.numel() for p in encoder.backbone.parameters())
    peft_model = apply_lora(model, modality)
    if args.gradient_checkpointing:
        # The transformers 5.17 spelling; later versions keep it as an alias of `activation_checkpointing_enable`.
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate)

    size = args.text_tokens if modality == "text" else int(args.speech_seconds * SAMPLE_RATE)
    if args.tiny:
        size = 16 if modality == "text" else 1600
    generator = torch.Generator().manual_seed(0)
    pool = utterances(modality, 8 * args.batch_size, size, backbone_config.vocab_size if modality == "text" else 0,
                      generator)
    batches = [collate(pool[i:i + args.batch_size], device) for i in range(0, len(pool), args.batch_size)]

    lora = {name: p for name, p in peft_model.named_parameters() if "lora_" in name}
    reached = torch.zeros(len(lora), dtype=torch.bool, device=device)  # on the device: no sync inside the timing
    unused = torch.zeros((), dtype=torch.bool, device=device)

    def step(batch) -> float:
        loss = peft_model(**batch).loss
        loss.backward()
        reached.logical_or_(torch.stack([unused if p.grad is None else p.grad.ne(0).any() for p in lora.values()]))
        optimizer.step()
        return loss.item()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    losses = [step(batches[0])]
    optimizer.zero_grad(set_to_none=True)
    synchronize()
    # Weights, optimizer states and the CUDA workspace: what stays between steps.
    resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for index in range(1, args.steps):
        losses.append(step(batches[index % len(batches)]))
        optimizer.zero_grad(set_to_none=True)
    synchronize()
    elapsed = time.perf_counter() - start
    silent = [name for name, got in zip(lora, reached.tolist()) if not got]
    result = {
        "backbone": backbone_config.model_type,
        "backbone_parameters": backbone_parameters,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "utterance_size": f"{size} {'tokens' if modality == 'text' else 'samples'}",
        "batch_size": args.batch_size,
        "gradient_checkpointing": args.gradient_checkpointing,
        "steps_measured": args.steps - 1,
        "steps_per_second": (args.steps - 1) / elapsed,
        "utterances_per_second": (args.steps - 1) * args.batch_size / elapsed,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "dtypes": {
            "backbone": dtypes(peft_model.named_parameters(), lambda n: ".backbone." in n and "lora_" not in n),
            "lora": dtypes(peft_model.named_parameters(), lambda n: "lora_" in n),
            "heads": dtypes(peft_model.named_parameters(), lambda n: "modules_to_save" in n),
        },
        "lora_parameters": len(lora),
        "lora_parameters_without_gradient": silent,
        "every_lora_parameter_got_a_gradient": not silent,
    }
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        result.update(peak_gpu_memory_gib=peak / GIB, resident_gpu_memory_gib=resident / GIB,
                      measured_activations_gib=(peak - resident) / GIB)
    if modality == "text":
        estimate = training_memory(parameter_sizes(peft_model, modality), backbone_config, args.batch_size * size,
                                   "bf16", args.gradient_checkpointing, 1, "single")
        result["estimated_activations_gib"] = estimate["activations"] / GIB
        result["estimated_peak_gib"] = estimate["total"] / GIB - CUDA_CONTEXT_GIB  # the allocator does not see it
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny configs (for CPU): checks the harness")
    parser.add_argument("--device", help="default: cuda when available (cpu with --tiny)")
    parser.add_argument("--modalities", nargs="+", choices=["text", "speech"], default=["text", "speech"])
    parser.add_argument("--text-backbone", choices=["qwen2-0.5b", "llama-3.1-8b"], default="qwen2-0.5b",
                        help="architecture of the random text backbone (the paper's Llama-3.1-8B: 16 GB of GPU memory)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=128)
    parser.add_argument("--speech-seconds", type=float, default=5.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--output", help="default: bench/results/stage1_smoke[_tiny].json")
    args = parser.parse_args()
    if args.tiny:
        args.steps = 6 if args.steps == parser.get_default("steps") else args.steps
        # Tiny matmuls gain nothing from threads, and on a busy CPU the checkpoint recomputation's OpenMP threads
        # were seen to stall each other (seconds per step instead of milliseconds).
        torch.set_num_threads(1)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    if device.type != "cuda" and not args.tiny:
        parser.error("the mid-size run needs a CUDA GPU; use --tiny to check the harness on CPU")
    results = {
        "machine": (torch.cuda.get_device_name(device) if device.type == "cuda"
                    else f"{platform.machine()}, {torch.get_num_threads()} threads"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "tiny": args.tiny,
        "runs": {modality: run(modality, args, device) for modality in args.modalities},
    }
    output = Path(args.output or Path(__file__).parent / "results" / f"stage1_smoke{'_tiny' if args.tiny else ''}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
