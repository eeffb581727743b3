"""`mister-e`: prepare datasets, train encoders, extract embeddings, train and evaluate MiSTER-E, predict, demo, plan
paper-scale runs.

Every verb lives here. Training, data and extraction code is imported only inside the verb that runs, so `--help`
and `predict` start without the Trainer, `datasets` or peft.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .configuration_mister_e import MODALITIES
from .conversations import read_conversation, read_utf8
from .data import PREPARE_DATASETS
from .recipes import ABLATIONS, check_training, load_recipe, parse_sets, route, training_fields


class _Parser(argparse.ArgumentParser):
    """Usage errors (a wrong option value) as one line naming the option, exit status 2, as every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _device(text: str) -> str:
    """A torch device this machine has: asking for CUDA without it is an input error, not a crash mid-run."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA device (use cpu)")
    return text



def _add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=PREPARE_DATASETS)
    parser.add_argument("root", help="Release folder (for `cosmic`: the pickle file).")
    parser.add_argument("output_dir", help="Where the dialogue DatasetDict is saved.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing saved dataset.")
    parser.add_argument("--allow-missing-audio", action="store_true", help="Keep utterances without audio as text-only.")
    parser.add_argument("--validation-dialogues", type=_positive_int, help="IEMOCAP/COSMIC-IEMOCAP: held-out dialogues (12).")
    parser.add_argument("--seed", type=int, help="Seed of the held-out validation dialogues (0).")
    parser.add_argument("--validation-ids", help="DialogueRNN IEMOCAP pickle: a file of validation dialogue ids, one "
                                                 "per line (instead of holding out --validation-dialogues).")
    parser.add_argument("--audio-dir", help="MELD/MOSI: folder of pre-extracted WAVs.")
    parser.add_argument("--extract-to", help="MELD: where WAVs extracted from the mp4 clips go (needs FFmpeg).")
    parser.add_argument("--num-workers", type=_positive_int, help="MELD: parallel FFmpeg jobs.")
    parser.add_argument("--text-only", action="store_true", help="MELD: ignore audio (official CSVs alone).")
    parser.add_argument("--label-rule", choices=["nonnegative", "nonzero"], help="MOSI binary rule for scores.")
    parser.add_argument("--folds", help="MOSI: standard-folds JSON (default ROOT/mosi_standard_folds.json).")
    parser.add_argument("--acoustic", action="store_true", help="MOSI: attach the 73-d acoustic vectors as speech.")
    parser.add_argument("--source", dest="cosmic_dataset", choices=["meld", "iemocap"], help="COSMIC: which pickle.")
    parser.add_argument("--trust-pickle", action="store_true", help="COSMIC: allow unpickling (runs code from it).")
    parser.add_argument("--test-speaker", help="EmoDB: the held-out test speaker, e.g. 03 (the first one).")
    parser.add_argument("--validation-speaker", help="EmoDB: the validation speaker (the one after the test speaker).")
    parser.add_argument("--conversation-size", type=_positive_int, help="EmoDB: utterances per conversation (10); 1 = no context")


def _read_lines(path: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file."""
    return [line.strip() for line in read_utf8(Path(path)).splitlines() if line.strip()]


def _run_prepare(args: argparse.Namespace) -> None:
    from .data import prepare

    options = {
        "allow_missing_audio": args.allow_missing_audio or None,
        "validation_dialogues": args.validation_dialogues,
        "validation_ids": _read_lines(args.validation_ids) if args.validation_ids else None,
        "seed": args.seed,
        "audio_dir": args.audio_dir,
        "extract_to": args.extract_to,
        "num_workers": args.num_workers,
        "audio": False if args.text_only else None,
        "label_rule": args.label_rule,
        "folds": args.folds,
        "acoustic": args.acoustic or None,
        "dataset": args.cosmic_dataset,
        "trust_pickle": args.trust_pickle or None,
        "test_speaker": args.test_speaker,
        "validation_speaker": args.validation_speaker,
        "conversation_size": args.conversation_size,
    }
    options = {key: value for key, value in options.items() if value is not None}
    prepare(args.dataset, args.root, args.output_dir, overwrite=args.overwrite, **options)


def _add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="Dialogue dataset folder (from `mister-e prepare`).")
    parser.add_argument("--model", required=True, nargs="+",
                        help="Stage-1 model folder(s) (`train-encoder` output `merged/`), one per modality.")
    parser.add_argument("--output-dir", required=True, help="Where the dataset with embedding columns is saved.")
    parser.add_argument("--cache-dir", help="Shard cache; rerun with the same folder to resume (default OUTPUT.cache).")
    parser.add_argument("--batch-size", type=_positive_int, default=16)
    parser.add_argument("--shard-size", type=_positive_int, default=512, help="Utterances per cached shard.")
    parser.add_argument("--embedding", choices=["projection", "backbone_mean"], default="projection")
    parser.add_argument("--device", type=_device, help="e.g. cuda, cpu (default: cuda when available).")
    parser.add_argument("--overwrite", action="store_true")


def _run_extract(args: argparse.Namespace) -> None:
    import torch
    from datasets import load_from_disk

    from .assembly import require_kind
    from .data import describe, save_dialogues
    from .data.schema import check_save_target
    from .extraction import extract_embeddings
    from .modeling_mister_e import MisterEForUtteranceClassification
    from .processing_mister_e import MisterEProcessor
    from .utils import process_state

    for model_dir in args.model:
        require_kind(model_dir, ("stage-1",), "`extract --model`")
    check_save_target(Path(args.output_dir), args.overwrite)  # before the extraction, not after
    dataset = load_from_disk(args.dataset)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for model_dir in args.model:
        model = MisterEForUtteranceClassification.from_pretrained(model_dir)
        processor = MisterEProcessor.from_pretrained(model_dir)
        cache = args.cache_dir or f"{args.output_dir.rstrip('/')}.cache"
        name = "+".join(m for m in ("speech", "text") if getattr(model, f"{m}_encoder") is not None)
        dataset = extract_embeddings(dataset, model, processor, f"{cache}/{name}", args.batch_size, args.shard_size,
                                     args.embedding, device)
    if process_state().is_main_process:  # under torchrun every process holds the whole dataset; one saves it
        save_dialogues(dataset, args.output_dir, overwrite=args.overwrite)
        print(f"Saved {args.output_dir}\n{describe(dataset)}")


def _add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="End-to-end model folder (with its processor).")
    parser.add_argument("conversation", help="A conversation JSON file, a folder of WAVs with transcripts.txt, or a "
                                             "recording (.wav/.flac/.ogg/.mp3), cut into utterances by voice activity "
                                             "detection (extra `mister-e[recording]`).")
    parser.add_argument("--encoder", dest="encoders", action="append", metavar="DIR",
                        help="With a stage-2 `--model` (from `mister-e train`): a stage-1 encoder folder "
                             "(`train-encoder` output `merged/`) that made its embeddings, joined to it on the fly; "
                             "once per modality.")
    parser.add_argument("--top-k", type=_positive_int)
    parser.add_argument("--device", type=_device)
    recording = parser.add_argument_group("recordings")
    recording.add_argument("--asr", metavar="MODEL", help="Transcribe each utterance with this speech recognition model "
                           "(a Hub id such as openai/whisper-small, or a local folder); without it, speech alone.")
    recording.add_argument("--min-silence", type=_positive_float, default=0.3, metavar="S",
                           help="A pause of at least S seconds ends an utterance (0.3).")
    recording.add_argument("--min-utterance", type=_positive_float, default=0.25, metavar="S",
                           help="Drop speech shorter than S seconds (0.25).")
    recording.add_argument("--max-utterance", type=_positive_float, default=20.0, metavar="S",
                           help="Split longer speech, at its quietest moment in the second half (20).")
    recording.add_argument("--vad-threshold", type=float, default=0.5, help="Speech probability threshold (0.5).")
    recording.add_argument("--csv", metavar="FILE", help="Also write the timeline as CSV.")
    recording.add_argument("--plot", metavar="FILE", help="Also draw the timeline as a PNG.")


def _run_predict(args: argparse.Namespace) -> None:
    from transformers import pipeline

    from .assembly import join_stages, require_kind
    from .modeling_mister_e import MisterEForEmotionRecognition
    from .processing_mister_e import MisterEProcessor
    from .segmentation_mister_e import RECORDING_EXTENSIONS, MisterESegmentation

    recording = Path(args.conversation).suffix.lower() in RECORDING_EXTENSIONS
    if recording:
        if not Path(args.conversation).is_file():
            raise FileNotFoundError(f"Recording not found: {args.conversation}.")
        segmentation = MisterESegmentation(args.min_silence, args.min_utterance, args.max_utterance,
                                           args.vad_threshold)
    else:
        if args.asr or args.csv or args.plot:
            raise ValueError("--asr, --csv and --plot are for a recording (.wav/.flac/.ogg/.mp3), not "
                             f"{args.conversation}.")
        conversation = read_conversation(args.conversation)
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"No model folder at {args.model}.")
    if args.encoders:
        model, processor = join_stages(args.model, args.encoders)
    else:  # loaded here, not by `pipeline`, which folds a loading error into a traceback-laden message
        require_kind(args.model, ("end-to-end",), "`predict --model` (without `--encoder`)")
        model = MisterEForEmotionRecognition.from_pretrained(args.model)
        processor = MisterEProcessor.from_pretrained(args.model)
    pipe = pipeline("emotion-recognition-in-conversation", model=model, processor=processor, device=args.device)
    if recording:
        _predict_recording(pipe, args, segmentation)
        return
    predictions = pipe(conversation, top_k=args.top_k)
    ids = [u.get("id", i) for i, u in enumerate(conversation["utterances"])]
    print(json.dumps([{"id": i, **p} for i, p in zip(ids, predictions)], indent=2))


def _predict_recording(pipe, args: argparse.Namespace, segmentation) -> None:
    """A recording's timeline: JSON on stdout (`start`, `end`, `text` per utterance), optionally CSV and PNG."""
    from .timeline import save_timeline_plot, write_timeline_csv

    predictions = pipe(args.conversation, top_k=args.top_k, segmentation=segmentation, asr=args.asr)
    if not predictions:
        print(f"No speech found in {args.conversation}: no utterance to predict.", file=sys.stderr)
    elif not args.asr:
        print(f"{len(predictions)} utterances, answered from speech alone (no transcripts: --asr MODEL transcribes "
              "them).", file=sys.stderr)
    if args.csv:
        write_timeline_csv(predictions, args.csv)
    if args.plot:
        save_timeline_plot(predictions, list(pipe.model.config.id2label.values()), args.plot)
    print(json.dumps([{"id": index, **p} for index, p in enumerate(predictions)], indent=2))


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="Keep the Trainer checkpoints of finished runs (deleted by default to save disk).")
    parser.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help="Override a MisterEConfig or TrainingArguments field (e.g. kl_weight=0.0, learning_rate=3e-5).",
    )


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mister-e train` (stage 2)."""
    parser.add_argument("--recipe", required=True, help="Packaged recipe (iemocap, meld, mosi, small) or a YAML file.")
    parser.add_argument("--dataset", help="Dialogue DatasetDict folder with embedding columns (overrides the recipe).")
    parser.add_argument("--output-dir", help="Where runs go (overrides the recipe).")
    parser.add_argument("--seeds", type=int, nargs="+", help="Seeds to train (default: the recipe's).")
    parser.add_argument("--ablation", nargs="+", choices=[*ABLATIONS, "all"],
                        help="Train these ablations (or all) into <output-dir>/<name> and write one table.")
    parser.add_argument("--modalities", nargs="+", choices=MODALITIES, help="Modalities to feed (default: both).")
    _add_common_arguments(parser)


def _run_train(args: argparse.Namespace) -> None:
    from .evaluation import format_seed_table
    from .training import run_ablations, train_seeds
    from .training.stage_two import SUMMARY_METRICS

    overrides = parse_sets(args.overrides)
    for key in ("dataset", "output_dir", "seeds", "modalities"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    recipe = load_recipe(args.recipe, overrides)
    if args.ablation:
        names = list(ABLATIONS) if "all" in args.ablation else args.ablation
        summaries = run_ablations(recipe, names, keep_checkpoints=args.keep_checkpoints)
        _print_once(format_seed_table(summaries, SUMMARY_METRICS))
        return
    _print_once(format_seed_table(train_seeds(recipe, keep_checkpoints=args.keep_checkpoints), SUMMARY_METRICS))


def _add_train_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mister-e train-encoder` (stage 1)."""
    parser.add_argument("--dataset", required=True, help="Dialogue DatasetDict folder (audio paths and texts).")
    parser.add_argument("--modality", required=True, choices=MODALITIES)
    parser.add_argument("--backbone", help="Backbone folder or Hub id (default: the package's default per modality); "
                                           "for speech also opensmile:ComParE_2016 or opensmile:eGeMAPSv02 "
                                           "(openSMILE functionals, extra `mister-e[opensmile]`).")
    parser.add_argument("--processor", help="Saved MisterEProcessor folder (default: built from the backbone).")
    parser.add_argument("--tokenizer", help="Text tokenizer stored in the processor of a speech encoder "
                                            "(default: the default text backbone's).")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-r", type=_positive_int, help="LoRA rank (default: 16 speech, 8 text).")
    parser.add_argument("--lora-alpha", type=_positive_float, help="LoRA alpha (default: 8 speech, 32 text).")
    parser.add_argument("--lora-dropout", type=_probability, help="LoRA dropout (default: 0.05 speech, 0.1 text).")
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
                             "for `extract --embedding backbone_mean` (frozen-feature baselines).")
    _add_common_arguments(parser)


def _run_train_encoder(args: argparse.Namespace) -> None:
    import torch
    from datasets import load_from_disk

    from .backbones import DEFAULT_SPEECH_BACKBONE, DEFAULT_TEXT_BACKBONE, resolve_backbone
    from .processing_mister_e import MisterEProcessor
    from .training import finished_results, save_frozen_encoder, train_encoder
    from .training.stage_one import processor_for

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
        merged = save_frozen_encoder(load_from_disk(args.dataset), args.modality, args.output_dir, processor, backbone,
                                     sections["config"], args.seed)
        _print_once(f"Saved the frozen {args.modality} encoder to {merged}")
        return
    results = finished_results(args.output_dir, args.seed) or train_encoder(
        load_from_disk(args.dataset), args.modality, args.output_dir, processor, backbone=backbone, lora=lora,
        config_overrides=sections["config"], training_overrides=sections["training"], seed=args.seed,
        dtype=args.dtype and getattr(torch, args.dtype), keep_checkpoints=args.keep_checkpoints,
        load_in_bits=args.load_in_bits, solver=args.solver, l2=args.l2,
    )
    _print_once(json.dumps({split: results[split] for split in ("validation", "test") if split in results}, indent=2))


def _print_once(text: str) -> None:
    """Print from the main process only: under a launcher every process holds the same results."""
    from .utils import process_state

    if process_state().is_main_process:
        print(text)


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mister-e evaluate`."""
    parser.add_argument("--model", required=True, help="Folder of a trained conversation model.")
    parser.add_argument("--dataset", required=True, help="Dialogue DatasetDict folder.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output-dir", help="Where the report goes (default: <model>/evaluation/<split>).")
    parser.add_argument("--no-robustness", dest="robustness", action="store_false",
                        help="Skip the missing-modality robustness curve.")
    parser.add_argument("--probabilities", type=_probability, nargs="+",
                        help="Drop probabilities of the robustness curve (default: 0.0, 0.1, ..., 0.9).")
    parser.add_argument("--modalities", nargs="+", choices=MODALITIES, default=list(MODALITIES))
    parser.add_argument("--batch-size", type=_positive_int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the robustness curve's random drops.")
    parser.add_argument("--device", type=_device, help="Where to run the model (default: cuda when available, else cpu).")


def _run_evaluate(args: argparse.Namespace) -> None:
    import torch
    from datasets import DatasetDict, load_from_disk

    from .assembly import require_kind
    from .evaluation import DEFAULT_DROP_PROBABILITIES, SCALAR_METRICS
    from .training import evaluate_model

    require_kind(args.model, ("stage-2", "end-to-end"), "`evaluate --model`")
    output_dir = Path(args.output_dir or Path(args.model) / "evaluation" / args.split)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output-dir {output_dir} is a file, not a folder.")
    dataset = load_from_disk(args.dataset)
    if not isinstance(dataset, DatasetDict) or args.split not in dataset:
        splits = list(dataset) if isinstance(dataset, DatasetDict) else "none (a single Dataset)"
        raise ValueError(f"--split {args.split!r}: {args.dataset} has splits {splits}.")
    result = evaluate_model(
        args.model, dataset[args.split], output_dir, robustness=args.robustness,
        probabilities=args.probabilities or DEFAULT_DROP_PROBABILITIES, modalities=args.modalities,
        batch_size=args.batch_size, seed=args.seed,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
    )
    print(json.dumps({metric: result["metrics"][metric] for metric in SCALAR_METRICS}, indent=2))
    if args.robustness and result["robustness"] is None:
        print("No robustness curve: no utterance of this split has both speech and text to drop one of.",
              file=sys.stderr)


def _add_quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="mister-e-quickstart", help="Corpus, model and reports go here.")
    parser.add_argument("--epochs", type=_positive_int, default=30)
    parser.add_argument("--seed", type=int, default=0)


def _run_quickstart(args: argparse.Namespace) -> None:
    from .quickstart import quickstart

    quickstart(args.output_dir, epochs=args.epochs, seed=args.seed)


def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=_positive_int, default=8, help="Utterances per GPU and step.")
    parser.add_argument("--text-tokens", type=_positive_int, default=128, help="Tokens per text utterance (the spec's maximum).")
    parser.add_argument("--speech-seconds", type=_positive_float, default=5.0, help="Training crop of a speech utterance.")
    parser.add_argument("--gpus", type=_positive_int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--json", help="Also write the plan, with per-kind memory breakdowns, to this JSON file.")


def _run_plan(args: argparse.Namespace) -> None:
    from .training.memory_plan import format_plan, paper_scale_plan
    from .utils import atomic_path

    plan = paper_scale_plan(args.batch_size, args.text_tokens, args.speech_seconds, gpus=tuple(args.gpus))
    print(format_plan(plan))
    if args.json:
        with atomic_path(Path(args.json)) as partial:  # a cut-short write leaves no file that looks whole
            partial.write_text(json.dumps(plan, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mister-e", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of an error.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, add, run, summary in (
        ("quickstart", _add_quickstart_arguments, _run_quickstart, "Offline demo: build, train, reload, predict."),
        ("prepare", _add_prepare_arguments, _run_prepare, "Build a dialogue dataset from a release folder."),
        ("train-encoder", _add_train_encoder_arguments, _run_train_encoder,
         "Stage 1: LoRA-fine-tune one utterance encoder."),
        ("plan", _add_plan_arguments, _run_plan,
         "Paper-scale parameter counts and per-GPU training memory, without weights."),
        ("extract", _add_extract_arguments, _run_extract, "Add per-utterance embeddings to a dialogue dataset."),
        ("train", _add_train_arguments, _run_train, "Stage 2: train MiSTER-E (seeds, ablations)."),
        ("evaluate", _add_evaluate_arguments, _run_evaluate, "Metrics, plots, robustness curve."),
        ("predict", _add_predict_arguments, _run_predict, "Predict emotions for a conversation (JSON out)."),
    ):
        sub = commands.add_parser(name, help=summary, description=summary)
        add(sub)
        sub.set_defaults(run=run)
    return parser


def _quiet_libraries(debug: bool) -> None:
    """Keep library chatter that is not the user's concern off the terminal: bars for loading and saving weights and
    for every `datasets` map, transformers' advisory warnings and deprecation notices (`--debug` keeps the warnings).
    Training shows one bar and a line per epoch; extraction and evaluation one bar each, on a terminal only."""
    import os
    import warnings

    from transformers.utils import logging as transformers_logging

    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    transformers_logging.disable_progress_bar()
    if not debug:
        transformers_logging.set_verbosity_error()
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")  # torch's advice to library code


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error already printed
        return stop.code
    _quiet_libraries(args.debug)
    from huggingface_hub.errors import StrictDataclassError  # a config field with a wrong value (`--set`)

    try:
        args.run(args)
    except (OSError, ImportError, ValueError, RuntimeError, StrictDataclassError) as error:  # a user's input or machine
        if args.debug:
            raise
        cause = error.__cause__ if isinstance(error, StrictDataclassError) and error.__cause__ else error
        print(f"mister-e {args.command}: error: {' '.join(str(cause).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
