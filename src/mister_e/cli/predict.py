"""`predict`: emotions for conversations and recordings, as JSON (or CSV)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..configuration_mister_e import EMBEDDINGS
from ..conversations import read_conversation
from .arguments import output_file, plot_file, positive_float, positive_int, torch_device, user_path


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=user_path, required=True, help="End-to-end model folder (with its processor).")
    parser.add_argument("conversation", type=user_path,
                        help="A conversation JSON file, a folder of audio files with transcripts.txt, or a "
                             "recording (.wav/.flac/.ogg/.mp3), cut into utterances by voice activity "
                             "detection (extra `mister-e[recording]`).")
    add_encoder_arguments(parser)
    parser.add_argument("--top-k", type=positive_int)
    parser.add_argument("--device", type=torch_device)
    recording = parser.add_argument_group("recordings")
    recording.add_argument("--asr", metavar="MODEL", type=user_path,
                           help="Transcribe each utterance with this speech recognition model "
                                "(a Hub id such as openai/whisper-small, or a local folder); without it, speech alone.")
    recording.add_argument("--min-silence", type=positive_float, default=0.3, metavar="S",
                           help="A pause of at least S seconds ends an utterance (0.3).")
    recording.add_argument("--min-utterance", type=positive_float, default=0.25, metavar="S",
                           help="Drop speech shorter than S seconds (0.25).")
    recording.add_argument("--max-utterance", type=positive_float, default=20.0, metavar="S",
                           help="Split longer speech, at its quietest moment in the second half (20; at most the "
                                "processor's max_audio_seconds).")
    recording.add_argument("--vad-threshold", type=float, default=0.5, help="Speech probability threshold (0.5).")
    recording.add_argument("--csv", metavar="FILE", type=output_file, help="Also write the timeline as CSV.")
    recording.add_argument("--plot", metavar="FILE", type=plot_file,
                           help="Also draw the timeline (PNG, PDF, SVG or JPEG, by the file's suffix).")


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """`--encoder` and `--embedding`: what joins a stage-2 model to its encoders (`assembly.load_end_to_end`)."""
    parser.add_argument("--encoder", dest="encoders", action="append", metavar="DIR", type=user_path,
                        help="With a stage-2 model (a `mister-e train` run): a stage-1 encoder folder "
                             "(`train-encoder` output `merged/`) that made its embeddings, joined to it on the fly; "
                             "once per modality.")
    parser.add_argument("--embedding", choices=EMBEDDINGS,
                        help="With --encoder: the encoders' vectors the stage-2 model was trained on, as `extract "
                             "--embedding` made them. Default: the one recorded when it was trained (models trained "
                             "before it was recorded: projection; give backbone_mean / backbone_layers for those).")


def run_predict(args: argparse.Namespace) -> None:
    from transformers import pipeline

    from ..assembly import load_end_to_end
    from ..segmentation_mister_e import RECORDING_EXTENSIONS, MisterESegmentation

    recording = Path(args.conversation).suffix.lower() in RECORDING_EXTENSIONS and not Path(args.conversation).is_dir()
    if recording:
        if not Path(args.conversation).is_file():
            raise FileNotFoundError(f"Recording not found: {args.conversation}.")
        _refuse_overwrites(args.conversation, {"--csv": args.csv, "--plot": args.plot})
        segmentation = MisterESegmentation(args.min_silence, args.min_utterance, args.max_utterance,
                                           args.vad_threshold)
    else:
        if args.asr or args.csv or args.plot:
            raise ValueError("--asr, --csv and --plot are for a recording (.wav/.flac/.ogg/.mp3), not "
                             f"{args.conversation}.")
        source = Path(args.conversation)
        if source.is_file() and source.suffix.lower() != ".json":
            raise ValueError(f"{source} is neither a conversation (.json, or a folder of audio files) nor a recording "
                             f"({'/'.join(RECORDING_EXTENSIONS)}): convert other audio formats, e.g. to .wav.")
        conversation = read_conversation(args.conversation)
    # loaded here, not by `pipeline`, which folds a loading error into a traceback-laden message
    model, processor = load_end_to_end(args.model, args.encoders, args.embedding, "`predict --model`")
    pipe = pipeline("emotion-recognition-in-conversation", model=model, processor=processor, device=args.device)
    if recording:
        predict_recording(pipe, args, segmentation)
        return
    try:
        predictions = pipe(conversation, top_k=args.top_k)
    except (ValueError, FileNotFoundError) as error:  # they name the utterance (`conversation 0, utterance 2: ...`)
        raise type(error)(f"{args.conversation}: {error}") from None
    # `index`, the utterance's position, always; `id` where the conversation gives one (a position in its place
    # could equal another utterance's numeric id).
    ids = [{"id": u["id"]} if isinstance(u, dict) and u.get("id") is not None else {}
           for u in conversation["utterances"]]
    print(json.dumps([{"index": i, **given, **p} for i, (given, p) in enumerate(zip(ids, predictions))], indent=2))


def _refuse_overwrites(recording: str, outputs: dict[str, str | None]) -> None:
    """The files written must be neither the recording read nor each other (both would be lost silently)."""
    seen = {Path(recording).resolve(): "the recording"}
    for flag, path in outputs.items():
        if path is not None:
            resolved = Path(path).resolve()
            if resolved in seen:
                raise ValueError(f"{flag} {path} is {seen[resolved]}: name another file.")
            seen[resolved] = flag


def predict_recording(pipe, args: argparse.Namespace, segmentation) -> None:
    """A recording's timeline: JSON on stdout (`start`, `end`, `text` per utterance), optionally CSV and PNG."""
    from ..segmentation_mister_e import no_speech_found
    from ..timeline import save_timeline_plot, write_timeline_csv

    # The pipeline warns of a recording without speech through its logger; here it is said once, on stderr.
    pipeline_logger = logging.getLogger(type(pipe).__module__)
    level = pipeline_logger.level
    pipeline_logger.setLevel(logging.ERROR)
    try:
        predictions = pipe(args.conversation, top_k=args.top_k, segmentation=segmentation, asr=args.asr)
    finally:
        pipeline_logger.setLevel(level)
    if not predictions:
        print(no_speech_found(args.conversation, segmentation), file=sys.stderr)
    elif not args.asr:
        count = f"{len(predictions)} utterance{'s' if len(predictions) > 1 else ''}"
        print(f"{count}, answered from speech alone (no transcripts: --asr MODEL transcribes them).", file=sys.stderr)
    if args.csv:
        write_timeline_csv(predictions, args.csv)
    if args.plot:
        save_timeline_plot(predictions, list(pipe.model.config.id2label.values()), args.plot)
    print(json.dumps([{"index": index, **p} for index, p in enumerate(predictions)], indent=2))
