"""`train-encoder`, `train`, `evaluate`, `quickstart`, `plan`: the two training stages and what surrounds them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..configuration_mister_e import MODALITIES
from ..recipes import ABLATIONS, check_training, load_recipe, parse_sets, route, training_fields
from ..utils import writing_into
from .arguments import (
    output_file, output_folder, positive_float, positive_int, probability, probe, seed, torch_device, user_path,
)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="Keep the Trainer checkpoints of finished runs (deleted by default to save disk).")
    parser.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help="Override a MisterEConfig or TrainingArguments field (e.g. kl_weight=0.0, learning_rate=3e-5).",
    )


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mister-e train` (stage 2)."""
    parser.add_argument("--recipe", type=user_path, required=True,
                        help="Packaged recipe (iemocap, meld, mosi, small) or a YAML file.")
    parser.add_argument("--dataset", type=user_path,
                        help="Dialogue DatasetDict folder with embedding columns (overrides the recipe).")
    parser.add_argument("--output-dir", type=output_folder, help="Where runs go (overrides the recipe).")
    parser.add_argument("--seeds", type=int, nargs="+", help="Seeds to train (default: the recipe's).")
    parser.add_argument("--ablation", nargs="+", choices=[*ABLATIONS, "all"],
                        help="Train these ablations (or all) into <output-dir>/<name> and write one table.")
    parser.add_argument("--modalities", nargs="+", choices=MODALITIES, help="Modalities to feed (default: both).")
    add_common_arguments(parser)


def run_train(args: argparse.Namespace) -> None:
    from ..data.splits import require_splits
    from ..data.storage import load_dialogues
    from ..summaries import format_seed_table
    from ..training import run_ablations, train_seeds
    from ..training.stage_two import SUMMARY_METRICS

    overrides = parse_sets(args.overrides)
    for key in ("dataset", "output_dir", "seeds", "modalities"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    recipe = load_recipe(args.recipe, overrides)
    missing = [key for key in ("dataset", "output_dir", "seeds") if key not in recipe]
    if missing:  # a recipe file may leave them to the command line
        options = " ".join(f"--{key.replace('_', '-')}" for key in missing)
        raise ValueError(f"Recipe {args.recipe} names no {', '.join(missing)}: give {options}.")
    dataset = load_dialogues(recipe["dataset"])  # before the lock: a refused run creates no output folder
    require_splits(dataset, recipe["dataset"])
    with writing_into(recipe["output_dir"]):
        if args.ablation:
            names = list(ABLATIONS) if "all" in args.ablation else args.ablation
            summaries = run_ablations(recipe, names, dataset=dataset, keep_checkpoints=args.keep_checkpoints)
        else:
            summaries = train_seeds(recipe, dataset=dataset, keep_checkpoints=args.keep_checkpoints)
    print_once(format_seed_table(summaries, SUMMARY_METRICS))


def add_train_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mister-e train-encoder` (stage 1)."""
    parser.add_argument("--dataset", type=user_path, required=True,
                        help="Dialogue DatasetDict folder (audio paths and texts).")
    parser.add_argument("--modality", required=True, choices=MODALITIES)
    parser.add_argument("--backbone", type=user_path,
                        help="Backbone folder or Hub id (default: the package's default per modality); "
                             "for speech also opensmile:ComParE_2016 or opensmile:eGeMAPSv02 "
                             "(openSMILE functionals, extra `mister-e[opensmile]`).")
    parser.add_argument("--processor", type=user_path,
                        help="Saved MisterEProcessor folder (default: built from the backbone).")
    parser.add_argument("--tokenizer", type=user_path,
                        help="Text tokenizer stored in the processor of a speech encoder "
                             "(default: the default text backbone's).")
    parser.add_argument("--output-dir", type=output_folder, required=True)
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--lora-r", type=positive_int, help="LoRA rank (default: 16 speech, 8 text).")
    parser.add_argument("--lora-alpha", type=positive_float, help="LoRA alpha (default: 8 speech, 32 text).")
    parser.add_argument("--lora-dropout", type=probability, help="LoRA dropout (default: 0.05 speech, 0.1 text).")
    parser.add_argument("--lora-targets", nargs="+", help="LoRA target modules (default: the family's preset).")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="dtype the backbone loads in (default float32; the compute dtype of a quantized one, "
                             "default bfloat16); heads and LoRA weights train in float32 whatever it is. Autocast is "
                             "the Trainer's: --set bf16=true (or fp16=true).")
    parser.add_argument("--load-in-bits", type=int, choices=[4, 8],
                        help="Quantize the backbone (4: QLoRA, NF4); needs bitsandbytes and a CUDA GPU.")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="Recompute the backbone's layer activations in backward: less memory, slower steps.")
    parser.add_argument("--solver", choices=["lbfgs", "trainer"],
                        help="lbfgs (default for opensmile: backbones): the functionals head fitted full batch to "
                             "convergence with an L2 penalty; trainer: epochs of the Trainer, best validation epoch "
                             "kept (the only one for neural backbones; takes the --set training fields).")
    parser.add_argument("--l2", type=float, help="L2 strength of --solver lbfgs (default 0.03).")
    parser.add_argument("--frozen", action="store_true",
                        help="No training: save the pretrained backbone with untrained heads to OUTPUT_DIR/merged, "
                             "for `extract --embedding backbone_mean` or backbone_layers (frozen-feature baselines).")
    add_common_arguments(parser)


def run_train_encoder(args: argparse.Namespace) -> None:
    import torch

    from ..backbones import DEFAULT_SPEECH_BACKBONE, DEFAULT_TEXT_BACKBONE, resolve_backbone
    from ..data.splits import require_splits
    from ..data.storage import load_dialogues
    from ..processing_mister_e import MisterEProcessor
    from ..training import check_run, data_identity, finished_results, record_run, save_frozen_encoder, train_encoder
    from ..training.stage_one import processor_for

    if args.load_in_bits:  # before the processor (a Hub download) and the data load
        from ..training.quantization import require_quantization

        require_quantization(args.load_in_bits)
    default = DEFAULT_SPEECH_BACKBONE if args.modality == "speech" else DEFAULT_TEXT_BACKBONE
    backbone = resolve_backbone(args.backbone or default)
    processor = (MisterEProcessor.from_pretrained(args.processor) if args.processor
                 else processor_for(args.modality, backbone, args.tokenizer))
    lora = {key: value for key, value in (("r", args.lora_r), ("lora_alpha", args.lora_alpha),
                                          ("lora_dropout", args.lora_dropout), ("target_modules", args.lora_targets))
            if value is not None}
    sections = {"config": {}, "training": {}}
    for key, value in parse_sets(args.overrides).items():
        section = route(key)
        if section[0] not in sections:
            raise ValueError(f"--set {key}: train-encoder takes MisterEConfig and TrainingArguments fields only.")
        sections[section[0]][section[1]] = value
    sections["training"] = check_training(sections["training"])  # before any data or folder is touched
    if args.gradient_checkpointing:
        # transformers 5.2x renamed it `activation_checkpointing`, keeping the old name as a deprecated alias.
        new = "activation_checkpointing" in training_fields()
        sections["training"]["activation_checkpointing" if new else "gradient_checkpointing"] = True
    if args.frozen:
        # a folder's run record stands for what its merged/ holds: a trained run's is not replaced by frozen heads
        settings = {"modality": args.modality, "backbone": args.backbone or default, "frozen": True, **sections,
                    "seed": args.seed}
        with writing_into(args.output_dir):
            check_run(args.output_dir, settings)
            merged = save_frozen_encoder(load_dialogues(args.dataset), args.modality, args.output_dir, processor,
                                         backbone, sections["config"], args.seed)
            record_run(args.output_dir, settings)
        print_once(f"Saved the frozen {args.modality} encoder to {merged}")
        return
    dataset = load_dialogues(args.dataset)
    require_splits(dataset, args.dataset)
    settings = {"modality": args.modality, "backbone": args.backbone or default, "processor": args.processor,
                "tokenizer": args.tokenizer, "lora": lora, **sections, "seed": args.seed, "dtype": args.dtype,
                "load_in_bits": args.load_in_bits, "solver": args.solver, "l2": args.l2, "data": data_identity(dataset)}
    with writing_into(args.output_dir):
        check_run(args.output_dir, settings)
        results = finished_results(args.output_dir, args.seed) or train_encoder(
            dataset, args.modality, args.output_dir, processor, backbone=backbone, lora=lora,
            config_overrides=sections["config"], training_overrides=sections["training"], seed=args.seed,
            dtype=args.dtype and getattr(torch, args.dtype), keep_checkpoints=args.keep_checkpoints,
            load_in_bits=args.load_in_bits, solver=args.solver, l2=args.l2, run_settings=settings,
        )
    print_once(json.dumps({split: results[split] for split in ("validation", "test") if split in results}, indent=2))


def print_once(text: str) -> None:
    """Print from the main process only: under a launcher every process holds the same results."""
    from ..utils import process_state

    if process_state().is_main_process:
        print(text)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mister-e evaluate`."""
    parser.add_argument("--model", type=user_path, required=True, help="Folder of a trained conversation model.")
    parser.add_argument("--dataset", type=user_path, required=True, help="Dialogue DatasetDict folder.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output-dir", type=output_folder,
                        help="Where the report goes (default: <model>/evaluation/<split>).")
    parser.add_argument("--no-robustness", dest="robustness", action="store_false",
                        help="Skip the missing-modality robustness curve.")
    parser.add_argument("--probabilities", type=probability, nargs="+",
                        help="Drop probabilities of the robustness curve (default: 0.0, 0.1, ..., 0.9).")
    parser.add_argument("--modalities", nargs="+", choices=MODALITIES, default=list(MODALITIES))
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--seed", type=seed, default=0, help="Seed of the robustness curve's random drops.")
    parser.add_argument("--device", type=torch_device, help="Where to run the model (default: cuda when available, else cpu).")


def run_evaluate(args: argparse.Namespace) -> None:
    import torch
    from datasets import DatasetDict

    from ..assembly import require_kind
    from ..data.splits import check_unique_ids
    from ..data.storage import load_dialogues
    from ..robustness import DEFAULT_DROP_PROBABILITIES
    from ..summaries import SCALAR_METRICS
    from ..training import evaluate_model
    from ..utils import process_state

    require_kind(args.model, ("stage-2", "end-to-end"), "`evaluate --model`")
    output_dir = Path(args.output_dir or Path(args.model) / "evaluation" / args.split)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output-dir {output_dir} is a file, not a folder.")
    if args.output_dir is None:  # inside the model folder, which may be read-only or another user's
        existing = next(folder for folder in (output_dir, *output_dir.parents) if folder.exists())
        try:
            probe(existing, output_dir.name)
        except OSError as error:
            raise OSError(f"{existing} takes no new files ({error.strerror}), and evaluate writes its report into "
                          f"the model folder ({output_dir}) by default: pass --output-dir DIR to write it "
                          "elsewhere.") from None
    dataset = load_dialogues(args.dataset)
    if not isinstance(dataset, DatasetDict) or args.split not in dataset:
        splits = list(dataset) if isinstance(dataset, DatasetDict) else "none (a single Dataset)"
        raise ValueError(f"--split {args.split!r}: {args.dataset} has splits {splits}.")
    check_unique_ids(DatasetDict({args.split: dataset[args.split]}))  # as `evaluate_model` does, naming the split
    with writing_into(output_dir):  # under a launcher every process checks the input and shares the lock's verdict,
        if not process_state().is_main_process:  # then the main one alone scores the split (the others would score
            return  # it again and write the same report into the folder the main process has locked)
        result = evaluate_model(
            args.model, dataset[args.split], output_dir, robustness=args.robustness,
            probabilities=args.probabilities or DEFAULT_DROP_PROBABILITIES, modalities=args.modalities,
            batch_size=args.batch_size, seed=args.seed,
            device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        )
    print(json.dumps({metric: result["metrics"][metric] for metric in SCALAR_METRICS}, indent=2))


def add_quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", type=output_folder, default="mister-e-quickstart",
                        help="Corpus, model and reports go here.")
    parser.add_argument("--epochs", type=positive_int, default=30)
    parser.add_argument("--seed", type=seed, default=0)


def run_quickstart(args: argparse.Namespace) -> None:
    from ..quickstart import quickstart

    with writing_into(args.output_dir):
        quickstart(args.output_dir, epochs=args.epochs, seed=args.seed)


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=8, help="Utterances per GPU and step.")
    parser.add_argument("--text-tokens", type=positive_int, default=128, help="Tokens per text utterance (the spec's maximum).")
    parser.add_argument("--speech-seconds", type=positive_float, default=5.0, help="Training crop of a speech utterance.")
    parser.add_argument("--gpus", type=positive_int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--json", type=output_file,
                        help="Also write the plan, with per-kind memory breakdowns, to this JSON file.")


def run_plan(args: argparse.Namespace) -> None:
    from ..training.memory_plan import format_plan, paper_scale_plan
    from ..utils import atomic_path

    plan = paper_scale_plan(args.batch_size, args.text_tokens, args.speech_seconds, gpus=tuple(args.gpus))
    print(format_plan(plan))
    if args.json:
        with atomic_path(Path(args.json)) as partial:  # a cut-short write leaves no file that looks whole
            partial.write_text(json.dumps(plan, indent=2))
