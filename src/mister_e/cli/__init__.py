"""`mister-e`: prepare datasets, train encoders, extract embeddings, train and evaluate MiSTER-E, predict, share on
the Hub, demo, plan paper-scale runs.

The parser and `main` live here, the verbs in `data.py` (prepare, extract), `training.py` (train-encoder, train,
evaluate, quickstart, plan), `predict.py` and `share.py`. Training, data and extraction code is imported only inside
the verb that runs, so `--help` and `predict` start without the Trainer, `datasets` or peft.
"""

from __future__ import annotations

import argparse
import os
import sys

from .arguments import Parser
from .data import add_extract_arguments, add_prepare_arguments, run_extract, run_prepare
from .predict import add_predict_arguments, run_predict
from .share import add_share_arguments, run_share
from .training import (
    add_evaluate_arguments, add_plan_arguments, add_quickstart_arguments, add_train_arguments,
    add_train_encoder_arguments, run_evaluate, run_plan, run_quickstart, run_train, run_train_encoder,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mister-e", description=__doc__.split("\n\n")[0])  # what it does; not the code layout
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of an error.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, add, run, summary in (
        ("quickstart", add_quickstart_arguments, run_quickstart, "Offline demo: build, train, reload, predict."),
        ("prepare", add_prepare_arguments, run_prepare, "Build a dialogue dataset from a release folder."),
        ("train-encoder", add_train_encoder_arguments, run_train_encoder,
         "Stage 1: LoRA-fine-tune one utterance encoder."),
        ("plan", add_plan_arguments, run_plan,
         "Paper-scale parameter counts and per-GPU training memory, without weights."),
        ("extract", add_extract_arguments, run_extract, "Add per-utterance embeddings to a dialogue dataset."),
        ("train", add_train_arguments, run_train, "Stage 2: train MiSTER-E (seeds, ablations)."),
        ("evaluate", add_evaluate_arguments, run_evaluate, "Metrics, plots, robustness curve."),
        ("predict", add_predict_arguments, run_predict, "Predict emotions for a conversation (JSON out)."),
        ("share", add_share_arguments, run_share, "Push a trained model and its card to the Hub (or to a folder)."),
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
    import sys
    import warnings

    from transformers.utils import logging as transformers_logging

    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:  # imported before `main` (it is called from Python): the variable came too late
        sys.modules["datasets"].disable_progress_bars()
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
    from safetensors import SafetensorError  # a weights file that cannot be read, or written (no OSError)

    try:
        args.run(args)
    except BrokenPipeError:  # `mister-e predict ... | head`: the reader has what it wanted; no error to report
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exit's flush raises no more
        except (OSError, ValueError):  # stdout is no file (captured)
            pass
        return 141  # as a shell reports a process ended by SIGPIPE
    # A user's input, or the machine's state.
    except (OSError, ImportError, ValueError, RuntimeError, StrictDataclassError, SafetensorError) as error:
        if args.debug:
            raise
        cause = error.__cause__ if isinstance(error, StrictDataclassError) and error.__cause__ else error
        print(f"mister-e {args.command}: error: {' '.join(str(cause).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        # Every verb writes through temporary names, training keeps checkpoints and extraction its cached shards.
        print(f"mister-e {args.command}: interrupted; nothing half-written is left, and the same command again "
              "resumes training and extraction from their last checkpoint or shard.", file=sys.stderr)
        return 130
    return 0


__all__ = ["build_parser", "main"]
