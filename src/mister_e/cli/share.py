"""`share`: a trained model with its card and scores, pushed to the Hub (`--to`) or written as a Hub folder
(`--folder`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import output_folder, user_path
from .predict import add_encoder_arguments


def add_share_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=user_path,
                        help="A `mister-e train` run folder (seed_<k>: a stage-2 model, joined to its "
                             "encoders with --encoder) or an end-to-end model folder.")
    add_encoder_arguments(parser)
    parser.add_argument("--results", metavar="FILE", type=user_path,
                        help="The card's scores: the results.json of the run whose weights these are, or the "
                             "summary.json of its seeds (default: MODEL/results.json). Scores recorded for other "
                             "weights are refused.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="REPO", help="Push to this Hub model repository (you/name; created if needed).")
    where.add_argument("--folder", metavar="OUT", type=output_folder,
                       help="Write the same files to this new or empty folder instead (no network).")
    parser.add_argument("--license", help="Hub license id for the card, e.g. apache-2.0 (default: none written).")
    parser.add_argument("--private", action="store_true", help="With --to: create the repository private.")
    parser.add_argument("--dataset-name", metavar="NAME", help="The training corpus, named in the card (e.g. IEMOCAP).")


def run_share(args: argparse.Namespace) -> None:
    from ..assembly import load_end_to_end
    from ..hub import check_pushable, push_to_hub, save_for_hub
    from ..model_card import read_results
    from ..utils import writing_into

    if args.private and not args.to:
        raise ValueError("--private is for --to: a folder written locally has no visibility.")
    if args.to:
        check_pushable(args.to)  # before the model is loaded
    card = {"results": args.results or run_results(args.model), "license": args.license,
            "dataset_name": args.dataset_name}
    read_results(card["results"])  # a missing or unreadable file, or an encoder's scores, before the model is loaded
    model, processor = load_end_to_end(args.model, args.encoders, args.embedding, "`share`")
    if args.to:
        commit = push_to_hub(model, processor, args.to, private=args.private, **card)
        print(f"Shared {args.model} as {args.to}: {commit.commit_url}")
    else:
        with writing_into(args.folder):
            print(f"Wrote the Hub folder {save_for_hub(model, processor, args.folder, **card)}")


def run_results(model: str) -> str:
    """The `results.json` of the run in `model`, which the card reports; a folder of several seeds' runs is refused
    (which one's weights to share?); a folder without results that holds no model to share is refused as such."""
    from ..assembly import require_kind

    folder = Path(model)
    if not folder.is_dir():
        raise FileNotFoundError(f"No model folder at {model}.")
    if (folder / "results.json").is_file():
        return str(folder / "results.json")
    if (folder / "summary.json").is_file() and not (folder / "config.json").is_file():
        raise ValueError(f"{model} holds the runs of several seeds (summary.json): share one run's model, "
                         f"{folder / 'seed_<k>'}, with --results {folder / 'summary.json'} for the mean ± std.")
    require_kind(model, ("stage-2", "end-to-end"), "`share`")
    raise FileNotFoundError(f"{model} holds no results.json: give --results FILE (the results.json of the run whose "
                            "weights these are, or the summary.json of its seeds).")
