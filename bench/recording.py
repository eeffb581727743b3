"""Long conversations and long recordings through the pipeline: peak memory, throughput, segmentation time.

    python bench/recording.py           # bench/results/recording.json, docs/timeline.png
    python bench/recording.py --quick   # short inputs, nothing written

Model: the quickstart's (`mister-e quickstart`: openSMILE eGeMAPS speech encoder, LoRA-tuned MiniLM text encoder,
`small` conversation model), built once under `runs/bench-recording/quickstart` (reused when there). Inputs are the
demo corpus's utterances (WAV files + transcripts):

* pre-cut conversations of 20 and 300 utterances, audio + text: peak RSS of the process and utterances/s;
* a 30-minute recording assembled from the corpus's utterances with 0.5-1.5 s of silence between them: the pipeline on
  the file (speech alone: no ASR), peak RSS and utterances/s; and Silero VAD's segmentation alone: seconds per minute
  of audio, and the share of the recording's utterances found with both ends within 0.3 s.

Each case runs in a fresh process (its peak RSS is the process's `VmHWM`, model loading included), one after the
other; throughput is the median of repeated calls after a warm-up call. Targets (issue 15): 300 utterances within
2 GiB, 30 minutes within 3 GiB, throughput within 10% of the 20-utterance case.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
WORK = ROOT.parent / "runs" / "bench-recording"
SAMPLING_RATE = 16000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Short inputs, one repeat, nothing written.")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case in this process
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.model, args.input, 1 if args.quick else 3)))
        return
    model_dir, corpus = quickstart_model(args.quick)
    inputs = WORK / ("quick" if args.quick else "inputs")
    inputs.mkdir(parents=True, exist_ok=True)
    sizes = (5, 20) if args.quick else (20, 300)
    minutes = 0.5 if args.quick else 30.0
    cases = {}
    for size in sizes:
        path = inputs / f"conversation-{size}.json"
        path.write_text(json.dumps(conversation(corpus, size)))
        cases[f"conversation_{size}"] = ("conversation", path)
    recording_path = inputs / f"recording-{minutes:g}min.wav"
    write_recording(corpus, minutes, recording_path)
    cases["recording"] = ("recording", recording_path)
    cases["segmentation"] = ("segmentation", recording_path)
    results = {}
    for name, (case, path) in cases.items():
        command = [sys.executable, __file__, "--case", case, "--model", str(model_dir), "--input", str(path)]
        done = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    small, large = (results[f"conversation_{size}"] for size in sizes)
    results["throughput_ratio_large_to_small"] = large["utterances_per_s"] / small["utterances_per_s"]
    results["recording_minutes"] = minutes
    print(json.dumps(results, indent=2))
    if not args.quick:
        (ROOT / "results" / "recording.json").write_text(json.dumps(results, indent=2) + "\n")
        picture(model_dir, corpus)


def quickstart_model(quick: bool) -> tuple[Path, Path]:
    """The quickstart's model folder and demo corpus (trained once; `--quick` trains one stage-2 epoch)."""
    from mister_e.quickstart import quickstart

    folder = WORK / ("quickstart-quick" if quick else "quickstart")
    if not (folder / "model" / "model.safetensors").is_file():
        quickstart(folder, epochs=1 if quick else 30)
    return folder / "model", folder / "corpus"


def utterances(corpus: Path) -> list[dict]:
    """Every utterance of the demo corpus (all splits), as `{"audio": path, "text": ...}`."""
    from datasets import load_from_disk

    dataset = load_from_disk(str(corpus / "dataset"))
    return [{"audio": audio, "text": text} for split in dataset.values()
            for row in split for audio, text in zip(row["audio"], row["texts"])]


def conversation(corpus: Path, size: int) -> dict:
    pool = utterances(corpus)
    return {"utterances": [pool[index % len(pool)] for index in range(size)]}


def write_recording(corpus: Path, minutes: float, path: Path) -> None:
    """The corpus's utterances one after the other, 0.5-1.5 s of silence between them, up to `minutes`; their true
    (start, end) in seconds go to `<path>.json`."""
    import soundfile as sf

    truth_path = path.with_suffix(".json")
    if path.is_file() and truth_path.is_file():
        return
    rng = np.random.default_rng(0)
    pool, parts, truth, total, index = utterances(corpus), [], [], 0, 0
    length = int(minutes * 60 * SAMPLING_RATE)
    while total < length:
        audio, rate = sf.read(pool[index % len(pool)]["audio"], dtype="float32")
        assert rate == SAMPLING_RATE, rate
        parts += [np.zeros(int(rng.uniform(0.5, 1.5) * SAMPLING_RATE), np.float32), audio]
        total += len(parts[-2])
        if total + len(audio) <= length:
            truth.append((total / SAMPLING_RATE, (total + len(audio)) / SAMPLING_RATE))
        total += len(audio)
        index += 1
    sf.write(path, np.concatenate(parts)[:length], SAMPLING_RATE)
    truth_path.write_text(json.dumps(truth))


def run_case(case: str, model_dir: Path, path: Path, repeats: int) -> dict:
    """One case in this process: peak RSS (model loading included) and timings."""
    import mister_e  # noqa: F401  (registers the pipeline task)
    from transformers import pipeline
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    if case == "segmentation":
        from mister_e.segmentation_mister_e import load_recording, segment_recording

        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            waveform = load_recording(path)
            segments = segment_recording(waveform)
            seconds.append(time.perf_counter() - start)
        minutes = len(waveform) / SAMPLING_RATE / 60
        truth = json.loads(path.with_suffix(".json").read_text())
        found = sum(any(abs(s["start"] - start) < 0.3 and abs(s["end"] - end) < 0.3 for s in segments)
                    for start, end in truth)
        return {"segments": len(segments), "utterances_in_recording": len(truth),
                "found_within_0_3_s": found / len(truth), "audio_minutes": minutes,
                "seconds_per_audio_minute": statistics.median(seconds) / minutes, **peak()}
    from mister_e import feature_extraction_mister_e

    pipe = pipeline("emotion-recognition-in-conversation", model=str(model_dir))
    inputs = str(path) if case == "recording" else json.loads(path.read_text())
    count = len(pipe(inputs))  # warm-up
    seconds = []
    for _ in range(repeats):
        feature_extraction_mister_e._cache.clear()  # each call computes its functionals, as for new audio
        start = time.perf_counter()
        pipe(inputs)
        seconds.append(time.perf_counter() - start)
    return {"utterances": count, "seconds": statistics.median(seconds),
            "utterances_per_s": count / statistics.median(seconds), **peak()}


def peak() -> dict:
    """This process's peak resident memory: `VmHWM`, which exec resets (Linux's `ru_maxrss` keeps the parent's
    peak across fork + exec, so a child started by a large parent would report the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return {"peak_rss_gib": int(line.split()[1]) / 2**20}
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def picture(model_dir: Path, corpus: Path) -> None:
    """README's picture: the timeline of a 1-minute demo recording through `mister-e predict --plot`."""
    path = WORK / "inputs" / "recording-1min.wav"
    write_recording(corpus, 1.0, path)
    import contextlib
    import io

    from mister_e.cli import main as cli

    (ROOT.parent / "docs").mkdir(exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):  # the JSON; the picture is what is kept
        cli(["predict", "--model", str(model_dir), str(path), "--plot", str(ROOT.parent / "docs" / "timeline.png")])


if __name__ == "__main__":
    main()
