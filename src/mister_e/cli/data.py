"""`prepare` and `extract`: dialogue datasets from releases, embeddings added to them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..configuration_mister_e import EMBEDDINGS
from ..conversations import read_utf8
from ..data import PREPARE_DATASETS
from ..utils import writing_into
from .arguments import output_folder, positive_int, seed, torch_device, user_path


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=PREPARE_DATASETS)
    parser.add_argument("root", type=user_path, help="Release folder (for `cosmic`: the pickle file).")
    parser.add_argument("output_dir", type=output_folder, help="Where the dialogue DatasetDict is saved.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing saved dataset.")
    parser.add_argument("--allow-missing-audio", action="store_true", help="Keep utterances without audio as text-only.")
    parser.add_argument("--validation-dialogues", type=positive_int,
                        help="IEMOCAP, DialogueRNN IEMOCAP pickle: held-out dialogues (12).")
    parser.add_argument("--seed", type=seed, help="Seed of the held-out validation dialogues; EmoDB: of each "
                                                  "speaker's recording order (0).")
    parser.add_argument("--validation-ids", type=user_path,
                        help="DialogueRNN IEMOCAP pickle: a file of validation dialogue ids, one "
                             "per line (instead of holding out --validation-dialogues).")
    parser.add_argument("--audio-dir", type=user_path,
                        help="MELD/MOSI: folder of pre-extracted audio (WAV, FLAC, OGG or MP3).")
    parser.add_argument("--extract-to", type=user_path,
                        help="MELD/MOSI: where WAVs extracted from the mp4 clips go (needs FFmpeg).")
    parser.add_argument("--num-workers", type=positive_int, help="MELD/MOSI: parallel FFmpeg jobs.")
    parser.add_argument("--text-only", action="store_true", help="MELD/MOSI: ignore audio (text-only).")
    parser.add_argument("--label-rule", choices=["nonnegative", "nonzero"], help="MOSI binary rule for scores.")
    parser.add_argument("--folds", type=user_path,
                        help="MOSI: folds JSON (default ROOT/mosi_standard_folds.json; MMSA: mode column).")
    parser.add_argument("--acoustic", action="store_true", help="MOSI: attach the 73-d acoustic vectors as speech.")
    parser.add_argument("--source", dest="cosmic_dataset", choices=["meld", "iemocap", "emorynlp", "dailydialog"],
                        help="COSMIC: which data set the pickle holds (meld).")
    parser.add_argument("--trust-pickle", action="store_true", help="COSMIC: allow unpickling (runs code from it).")
    parser.add_argument("--test-speaker", help="EmoDB: the held-out test speaker, e.g. 03 (the first one).")
    parser.add_argument("--validation-speaker", help="EmoDB: the validation speaker (the one after the test speaker).")
    parser.add_argument("--conversation-size", type=positive_int, help="EmoDB: utterances per conversation (10); 1 = no context")


def read_lines(path: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file."""
    return [line.strip() for line in read_utf8(Path(path)).splitlines() if line.strip()]


def run_prepare(args: argparse.Namespace) -> None:
    from ..data import prepare

    options = {
        "allow_missing_audio": args.allow_missing_audio or None,
        "validation_dialogues": args.validation_dialogues,
        "validation_ids": read_lines(args.validation_ids) if args.validation_ids else None,
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
    with writing_into(args.output_dir):
        prepare(args.dataset, args.root, args.output_dir, overwrite=args.overwrite, **options)


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=user_path, required=True,
                        help="Dialogue dataset folder (from `mister-e prepare`).")
    parser.add_argument("--model", type=user_path, required=True, nargs="+",
                        help="Stage-1 model folder(s) (`train-encoder` output `merged/`), one per modality.")
    parser.add_argument("--output-dir", type=output_folder, required=True,
                        help="Where the dataset with embedding columns is saved.")
    parser.add_argument("--cache-dir", type=output_folder,
                        help="Shard cache; rerun with the same folder to resume (default OUTPUT.cache).")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--shard-size", type=positive_int, default=512, help="Utterances per cached shard.")
    parser.add_argument("--embedding", choices=EMBEDDINGS, default="projection",
                        help="projection: the trained encoder's embedding; backbone_mean: the backbone's last hidden "
                             "states, mean-pooled; backbone_layers: every layer's, mean-pooled and concatenated "
                             "(frozen-backbone baselines).")
    parser.add_argument("--device", type=torch_device, help="e.g. cuda, cpu (default: cuda when available).")
    parser.add_argument("--overwrite", action="store_true")


def run_extract(args: argparse.Namespace) -> None:
    from ..assembly import encoders_by_modality
    from ..data.storage import load_dialogues

    encodes = encoders_by_modality(args.model, "extract --model")
    dataset = load_dialogues(args.dataset)
    output, cache = Path(args.output_dir), args.cache_dir or f"{args.output_dir.rstrip('/')}.cache"
    with writing_into(output), writing_into(cache):  # a --cache-dir shared by two outputs is written by one at a time
        _extract(args, encodes, dataset, output, cache)


def _extract(args: argparse.Namespace, encodes: dict, dataset, output: Path, cache: str) -> None:
    """`run_extract` once its output and cache folders are held."""
    import torch

    from ..data import describe
    from ..data.storage import check_save_target, save_dialogues
    from ..extraction import extract_embeddings, holds_every_shard
    from ..modeling_mister_e import MisterEForUtteranceClassification
    from ..processing_mister_e import MisterEProcessor
    from ..utils import process_state

    names = ["+".join(m for m in ("speech", "text") if encodes.get(m) == folder) for folder in args.model]
    # The same command again, after it finished: its cache answers without an encoder, and the saved data set is
    # checked against that answer below (anything else into an existing folder needs --overwrite, checked now).
    again = (output / "dataset_dict.json").is_file() and not args.overwrite and all(
        holds_every_shard(dataset, f"{cache}/{name}", args.shard_size) for name in names)
    if not again:
        check_save_target(output, args.overwrite)  # before the extraction, not after
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for model_dir, name in zip(args.model, names):
        model = MisterEForUtteranceClassification.from_pretrained(model_dir)
        processor = MisterEProcessor.from_pretrained(model_dir)
        dataset = extract_embeddings(dataset, model, processor, f"{cache}/{name}", args.batch_size, args.shard_size,
                                     args.embedding, device)
    if again and _saved_fingerprints(output) != {split: part._fingerprint for split, part in dataset.items()}:
        check_save_target(output, overwrite=False)  # another extraction's data: "exists; pass --overwrite"
    if not process_state().is_main_process:  # under torchrun every process holds the whole dataset; one saves it
        return
    if again:
        print(f"{output} already holds this extraction (read back from {cache})\n{describe(dataset)}")
    else:
        save_dialogues(dataset, output, overwrite=args.overwrite)
        print(f"Saved {args.output_dir}\n{describe(dataset)}")


def _saved_fingerprints(folder: Path) -> dict[str, str]:
    """Each split's `datasets` fingerprint as `save_to_disk` recorded it (`load_from_disk` derives a new one from it):
    an extraction's follows from its input's and its cache's manifests, so the same extraction again has the same."""
    splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
    return {split: json.loads((folder / split / "state.json").read_text())["_fingerprint"] for split in splits}
