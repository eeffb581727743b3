"""Multi-process runs: stage 2, stage 1 and `mister-e extract` under `torchrun` with 2 CPU processes (gloo).

The module fixture makes the inputs and the single-process references in this process, then launches this file under
`python -m torch.distributed.run --standalone --nproc_per_node 2`; `_worker` is what each of the two processes runs
(`_locked_worker` for the locked output folder's test).
Each process records (audit hook) the file operations it made under the run folder, in a report of its own outside it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from datasets import DatasetDict, load_from_disk
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

from mister_e import (
    MisterEConfig,
    MisterEForEmotionRecognition,
    MisterEForUtteranceClassification,
    MisterEProcessor,
)
import mister_e.extraction as extraction
from mister_e.cli import main
from mister_e.data import make_dialogue_dataset
from mister_e.extraction import extract_embeddings
from mister_e.training import load_recipe, train_encoder, train_seeds


sys.path.insert(0, str(Path(__file__).resolve().parent))  # the worker runs this file as a script
from tiny_corpus import LABELS, SIZES, SPEECH_DIM, TEXT_DIM, WORDS, dialogues  # noqa: E402
from tiny_end_to_end import tiny_model, tiny_processor, write_clips  # noqa: E402


# Stage 2 with nothing that couples utterances across processes: no dropout, no SupCon (its positives span the
# batch), and training dialogues of one length, so each process averages its loss over as many utterances and DDP's
# mean of the two means is the global mean. SGD without clipping: the update is the gradient itself, so a loss-scale
# error shows (Adam's first step is scale-free). Validation and test dialogues have mixed lengths: evaluation pads and
# gathers them across processes.
STAGE_TWO_CONFIG = {**SIZES, "supcon_weight": 0.0, "attention_dropout": 0.0, "residual_dropout": 0.0}
STAGE_TWO_TRAINING = dict(
    max_steps=4, optim="sgd", learning_rate=0.5, max_grad_norm=0.0, eval_strategy="steps", save_strategy="steps",
    eval_steps=2, save_steps=2, per_device_eval_batch_size=4, disable_tqdm=True, use_cpu=True,
)
GLOBAL_BATCH = 4
SHARD_SIZE = 2
KEPT_SHARD = "shard-000000004.safetensors"  # left by an "interrupted" single-process run; the others are missing


def _recipe(root: Path, processes: int) -> dict:
    training = {**STAGE_TWO_TRAINING, "per_device_train_batch_size": GLOBAL_BATCH // processes}
    overrides = {**{f"config.{key}": value for key, value in STAGE_TWO_CONFIG.items()},
                 **{f"training.{key}": value for key, value in training.items()}}
    return load_recipe("iemocap", {**overrides, "seeds": [0], "dataset": str(root / "inputs" / "dialogues")})


def _train_stage_one(root: Path, output_dir: Path) -> dict:
    data = load_from_disk(root / "inputs" / "dialogues")
    small = DatasetDict({split: part.select(range(3)) for split, part in data.items()})
    return train_encoder(small, "text", output_dir, tiny_processor(), backbone=root / "inputs" / "bert",
                         config_overrides={"text_embed_dim": 16},
                         training_overrides={"num_train_epochs": 1, "per_device_train_batch_size": 2,
                                             "learning_rate": 1e-3, "disable_tqdm": True})


def _audit_hook(root: Path, log: list[str]):
    """Record file writes, renames, removals and new folders under `root`.

    Audit events see Python-level calls only: `torch.save` and safetensors write from C++. Every writer here also
    makes Python-level calls (a folder, `config.json`, the rename of an atomic write), so a stray writer still shows.
    """
    prefix = str(root) + os.sep
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if not (set(mode) & set("wax+") if isinstance(mode, str) else flags & writing):
                return
        elif event in ("os.rename", "shutil.copyfile"):
            path = args[1]
        elif event in ("os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree"):
            path = args[0]
        else:
            return
        path = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
        if path.startswith(prefix):
            log.append(f"{event} {os.path.relpath(path, root)}")

    return hook


def _worker(root: Path) -> None:
    writes, shards = [], []
    sys.addaudithook(_audit_hook(root / "dist", writes))
    embed = extraction._embed  # note the first utterance of each shard this process embeds
    extraction._embed = lambda rows, *args: shards.append(rows[0]["id"]) or embed(rows, *args)

    # Extraction first, in a fresh process: nothing but `process_state` tells accelerate it runs on CPU. Stage 1
    # leaves `use_cpu` to `build_trainer`; stage 2 sets it, as its single-process reference must run on CPU too.
    code = main(["extract", "--dataset", str(root / "inputs" / "raw"), "--model", str(root / "inputs" / "encoder"),
                 "--output-dir", str(root / "dist" / "embedded"), "--batch-size", "3", "--shard-size",
                 str(SHARD_SIZE), "--device", "cpu"])
    stage_one = _train_stage_one(root, root / "dist" / "encoder")
    stage_two = train_seeds(_recipe(root, processes=2), output_dir=root / "dist" / "stage2")
    evaluated = main(["evaluate", "--model", str(root / "dist" / "stage2" / "seed_0"), "--dataset",
                      str(root / "inputs" / "dialogues"), "--output-dir", str(root / "dist" / "evaluation"),
                      "--no-robustness", "--device", "cpu"])
    report = {"stage_two": stage_two, "stage_one": stage_one, "extract": code, "evaluate": evaluated,
              "shards": shards, "writes": writes}
    (root / "reports" / f"rank{os.environ['RANK']}.json").write_text(json.dumps(report, indent=2))


def _raw_dialogues(folder: Path) -> DatasetDict:
    """11 utterances (6 shards of 2) with a missing text and a missing clip."""
    clips = write_clips(folder, 4)
    conversations = []
    for d, size in enumerate((2, 3, 3, 3)):
        texts = [None if (d, u) == (1, 0) else " ".join(WORDS[(d + u) % 8 : (d + u) % 8 + 2]) for u in range(size)]
        audio = [None if (d, u) == (2, 1) else clips[(d + u) % 4] for u in range(size)]
        conversations.append(dict(dialogue_id=f"d{d}", texts=texts, audio=audio, labels=[u % 2 for u in range(size)]))
    return DatasetDict(test=make_dialogue_dataset(conversations, LABELS))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Inputs, single-process references, then the 2-process run; returns the root folder and both reports."""
    root = tmp_path_factory.mktemp("distributed")
    inputs, cache = root / "inputs", root / "dist" / "embedded.cache" / "speech+text" / "test"
    # 9 and 7 dialogues in evaluation batches of 4 a process: accelerate fills each process's last batch up with
    # dialogues from the split's start (rank 0's in validation, rank 1's in test), which gathering then drops.
    DatasetDict(train=dialogues(8, 0, "train", lengths=(5, 6)), validation=dialogues(9, 1, "validation"),
                test=dialogues(7, 2, "test")).save_to_disk(inputs / "dialogues")
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                         vocab_size=len(WORDS) + 5)).save_pretrained(inputs / "bert")
    _raw_dialogues(inputs).save_to_disk(inputs / "raw")
    MisterEForUtteranceClassification(tiny_model().config).save_pretrained(inputs / "encoder")
    tiny_processor().save_pretrained(inputs / "encoder")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1): CPU kernels split their sums by thread count
    try:
        train_seeds(_recipe(root, processes=1), output_dir=root / "single" / "stage2")
        model = MisterEForUtteranceClassification.from_pretrained(inputs / "encoder")
        processor = MisterEProcessor.from_pretrained(inputs / "encoder")
        reference = extract_embeddings(load_from_disk(inputs / "raw"), model, processor, cache.parent, batch_size=3,
                                       shard_size=SHARD_SIZE)
    finally:
        torch.set_num_threads(threads)
    for shard in cache.glob("shard-*"):  # an interrupted run: one whole shard in the middle survives
        if shard.name != KEPT_SHARD:
            shard.unlink()
    kept = (cache / KEPT_SHARD).stat().st_mtime_ns

    reports = _launch(root)
    return {"root": root, "reports": reports, "reference": reference, "kept": kept}


def _launch(root: Path, *arguments: str) -> list[dict]:
    """Run this file under torchrun with 2 gloo CPU processes (`__main__` below: `_worker`, or the worker that
    `arguments` name) and return their reports."""
    (root / "reports").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               str(root), *arguments]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # a deadlock: take down the launcher and both workers
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the 2-process run hung:\n{output[-4000:]}")
    lines = output.splitlines()  # a failure shows where it happened: the progress lines, then the end in full
    assert process.returncode == 0, "\n".join(line[:200] for line in lines[:-40]) + "\n" + "\n".join(lines[-40:])
    return [json.loads((root / "reports" / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def test_two_processes_train_stage_two_like_one_with_the_same_global_batch(runs):
    single, dist = (runs["root"] / name / "stage2" / "seed_0" for name in ("single", "dist"))
    # float32 sums in another order (DDP averages two per-process means; one process takes one mean), over 4 SGD
    # steps: a few ulps (6e-8 at most seen). A wrong loss scale, data order or gradient sync moves weights by ~1e-2.
    expected, found = load_file(single / "model.safetensors"), load_file(dist / "model.safetensors")
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, rtol=1e-4, atol=1e-6)
    torch.manual_seed(0)
    config = MisterEConfig(**_recipe(runs["root"], 1)["config"], speech_embed_dim=SPEECH_DIM, text_embed_dim=TEXT_DIM,
                           num_labels=len(LABELS))
    initial = MisterEForEmotionRecognition(config).state_dict()
    assert any(not torch.allclose(initial[key], value) for key, value in expected.items()), "training moved nothing"
    one, two = (json.loads((folder / "results.json").read_text()) for folder in (single, dist))
    for split in ("validation", "test"):  # evaluation gathered from two processes scores the same predictions
        gates = two[split].pop("gate", None), one[split].pop("gate", None)
        assert two[split] == pytest.approx(one[split], rel=1e-4)
        assert gates[0] == pytest.approx(gates[1], rel=1e-4) if gates[1] else gates[0] is None
    assert (two["best_step"], two["best_epoch"]) == (one["best_step"], one["best_epoch"])
    assert runs["reports"][0]["stage_two"] == runs["reports"][1]["stage_two"]  # both processes return the summary


def test_evaluate_under_a_launcher_lists_every_utterance_once_in_order(runs):
    root = runs["root"]
    predicted, reported = (list(csv.DictReader((folder / "predictions.csv").open(encoding="utf-8")))
                           for folder in (root / "dist" / "evaluation", root / "single" / "stage2" / "seed_0" / "test"))
    test = load_from_disk(root / "inputs" / "dialogues")["test"]
    expected = [(dialogue, utterance) for dialogue, ids in zip(test["dialogue_id"], test["utterance_ids"])
                for utterance in ids]
    assert [(row["dialogue_id"], row["utterance_id"]) for row in predicted] == expected
    assert [row["label"] for row in predicted] == [row["label"] for row in reported]


def test_two_processes_extract_exactly_the_single_process_dataset(runs):
    root, reference = runs["root"], runs["reference"]["test"]
    extracted = load_from_disk(root / "dist" / "embedded")["test"]
    assert extracted["dialogue_id"] == reference["dialogue_id"]
    for column in ("speech_embeds", "text_embeds"):
        assert extracted[column] == reference[column]
    cache = root / "dist" / "embedded.cache" / "speech+text" / "test"
    assert (cache / KEPT_SHARD).stat().st_mtime_ns == runs["kept"]  # a finished shard is never recomputed
    # Shards in rounds of one per process, the last round short: rank 0 the 1st, 3rd, 5th missing shard.
    starts = [0, 2, 6, 8, 10]
    flat = [f"{d}/{u}" for d, ids in zip(reference["dialogue_id"], reference["utterance_ids"]) for u in ids]
    assert [report["shards"] for report in runs["reports"]] == [[flat[s] for s in starts[0::2]],
                                                                 [flat[s] for s in starts[1::2]]]


def test_only_the_main_process_writes(runs):
    assert [report["extract"] for report in runs["reports"]] == [0, 0]  # `mister-e extract` succeeded in both
    assert [report["evaluate"] for report in runs["reports"]] == [0, 0]
    rank0, rank1 = (report["writes"] for report in runs["reports"])
    # Trainer's own: every process saves its random state (`rng_state_<rank>.pth`) into the checkpoint folder.
    assert rank1 and all(re.fullmatch(r"os.mkdir (stage2/seed_0|encoder)/checkpoint-\d+", write) for write in rank1)
    for name in ("stage2/seed_0/results.json", "stage2/summary.json", "encoder/results.json",
                 "encoder/merged.tmp/config.json", "stage2/seed_0/test/metrics.json",  # merged/: written whole
                 "evaluation/metrics.json"):
        assert any(write.endswith(name) for write in rank0), name
    assert (runs["root"] / "dist" / "encoder" / "merged" / "config.json").is_file()
    root = runs["root"] / "dist"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("results.json")) == [
        "encoder/results.json", "stage2/seed_0/results.json"]
    assert runs["reports"][0]["stage_one"] == runs["reports"][1]["stage_one"]  # rank 1 gets the merged config too
    assert not list(root.rglob("checkpoint-*"))


def _locked_worker(root: Path) -> None:
    """`mister-e train` into a folder another mister-e holds: the command's exit status and error line, per rank."""
    error = io.StringIO()
    with contextlib.redirect_stderr(error):
        code = main(["train", "--recipe", "small", "--dataset", str(root / "data"), "--output-dir",
                     str(root / "locked"), "--seeds", "0"])
    report = {"code": code, "error": error.getvalue().strip().splitlines()}
    (root / "reports" / f"rank{os.environ['RANK']}.json").write_text(json.dumps(report))


def test_a_locked_output_folder_refuses_every_process_in_one_line(tmp_path):
    """The main process alone checked the output folder's lock: refused there, it exited with status 2, while the
    others went on into the work (training into the locked folder) until torchrun stopped them. The main process's
    verdict is now shared: every process exits with status 2 and the same line, and nothing is written."""
    data = DatasetDict(train=dialogues(2, 0, "train"), validation=dialogues(2, 1, "validation"))
    data.save_to_disk(tmp_path / "data")
    holder = f"{os.getpid()}@{socket.gethostname()}"  # this process: alive, so the lock is not taken over
    (tmp_path / ".locked.lock").write_text(holder)
    reports = _launch(tmp_path, "locked")
    line = (f"mister-e train: error: another mister-e (pid {os.getpid()} on {socket.gethostname()}) is writing into "
            f"{tmp_path / 'locked'}; wait for it to finish, or remove {tmp_path / '.locked.lock'} if that process is "
            "gone.")
    assert reports == [{"code": 2, "error": [line]}] * 2
    assert not (tmp_path / "locked").exists() and (tmp_path / ".locked.lock").read_text() == holder


def test_the_process_group_is_destroyed_before_the_interpreter_tears_down(tmp_path):
    # The handler registered first runs last (atexit is last in, first out): it sees what mister_e left behind.
    script = textwrap.dedent(f"""
        import atexit, torch.distributed as dist
        atexit.register(lambda: print("initialized at exit:", dist.is_initialized()))
        dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
        import mister_e.utils
        print("initialized:", dist.is_initialized())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:2] == ["initialized: True", "initialized at exit: False"]


if __name__ == "__main__":
    (_locked_worker if sys.argv[2:] == ["locked"] else _worker)(Path(sys.argv[1]))
