"""The `mister-e` command line: argument wiring, conversation files, clear failures."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from huggingface_hub import HfApi
from safetensors import SafetensorError

from tiny import tiny_config
from tiny_end_to_end import tiny_processor
from transformers import BertConfig

from mister_e import MisterEForEmotionRecognition, MisterEForUtteranceClassification
from mister_e.assembly import conversation_fingerprint, folder_kind
from mister_e.cli import build_parser, main
from mister_e.conversations import read_conversation
from mister_e.utils import writing_into


VERBS = ("quickstart", "prepare", "train-encoder", "plan", "extract", "train", "evaluate", "predict", "share")


def test_every_command_is_wired():
    parser = build_parser()
    assert set(parser._subparsers._group_actions[0].choices) == set(VERBS)
    assert "share on the Hub" in parser.format_help() and "live here" not in parser.format_help()  # no code layout
    for command in VERBS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0


def test_help_does_not_import_the_training_stack():
    """`--help` of every verb, in a fresh process: no Trainer, `datasets` or peft (they cost seconds to import)."""
    code = (
        "import sys, contextlib, io\n"
        "from mister_e.cli import main\n"
        f"for argv in [['--help'], *[[verb, '--help'] for verb in {VERBS!r}]]:\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main(argv)\n"
        "print(sorted(m for m in ('transformers.trainer', 'datasets', 'peft') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_prepare_fails_cleanly_naming_the_missing_release(tmp_path, capsys):
    assert main(["prepare", "meld", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--text-only"]) == 2
    error = capsys.readouterr().err
    assert "nowhere" in error and "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError):  # --debug: the traceback, for a bug report
        main(["--debug", "prepare", "meld", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--text-only"])


def test_runtime_errors_a_user_can_cause_exit_2(tmp_path, capsys, monkeypatch):
    def stale_cache(args):
        raise RuntimeError(f"{tmp_path / 'cache'} was written by another extraction; delete it or pass --cache-dir.")

    monkeypatch.setattr("mister_e.cli.run_extract", stale_cache)
    assert main(["extract", "--dataset", "d", "--model", "m", "--output-dir", "o"]) == 2
    assert "another extraction" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("mister_e.cli.run_train", interrupted)
    assert main(["train", "--recipe", "small", "--dataset", "d", "--output-dir", "o"]) == 130
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "interrupted" in error and "resumes training" in error, error
    with pytest.raises(KeyboardInterrupt):  # --debug keeps the traceback
        main(["--debug", "train", "--recipe", "small", "--dataset", "d", "--output-dir", "o"])


def test_read_conversation_from_json_and_folders(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
    sf.write(tmp_path / "b.wav", np.zeros(1600, np.float32), 16000)
    (tmp_path / "c.json").write_text(json.dumps([{"audio": "a.wav", "text": "hi"}, {"text": "bye"}]))
    conversation = read_conversation(tmp_path / "c.json")
    assert conversation["utterances"][0]["audio"] == str(tmp_path / "a.wav")
    assert conversation["utterances"][1] == {"text": "bye"}

    assert [u["id"] for u in read_conversation(tmp_path)["utterances"]] == ["a", "b"]
    (tmp_path / "transcripts.txt").write_text("b\tsecond first\na\tthen this\nz\ttext only\n")
    utterances = read_conversation(tmp_path)["utterances"]
    assert [(u["id"], u["text"], u["audio"] is not None) for u in utterances] == [
        ("b", "second first", True), ("a", "then this", True), ("z", "text only", False)
    ]
    (tmp_path / "transcripts.txt").write_text("a.wav\tnamed with its file name\nb\t \n")
    utterances = read_conversation(tmp_path)["utterances"]
    assert [(u["id"], u["text"], u["audio"]) for u in utterances] == [
        ("a", "named with its file name", str(tmp_path / "a.wav")), ("b", None, str(tmp_path / "b.wav"))]
    (tmp_path / "transcripts.txt").write_text("utt1\tnames no file here\n")  # formerly: every WAV silently dropped
    with pytest.raises(ValueError, match="no line names one of the 2 audio files"):
        read_conversation(tmp_path)
    (tmp_path / "transcripts.txt").write_text("a\tfine\nbb\ta typo for b\n")  # formerly: b.wav silently dropped
    with pytest.raises(ValueError, match=r"no line names b\.wav; lines naming no audio file: \['bb'\]"):
        read_conversation(tmp_path)
    (tmp_path / "b.wav").rename(tmp_path / "B.WAV")  # upper-case extensions are WAVs too
    (tmp_path / "transcripts.txt").write_text("a\tfine\nB.wav\tshouted\n")
    assert [u["audio"] for u in read_conversation(tmp_path)["utterances"]] == [str(tmp_path / "a.wav"),
                                                                               str(tmp_path / "B.WAV")]
    sf.write(tmp_path / "b.flac", np.zeros(1600, np.float32), 16000)  # formerly: one of the two silently dropped
    with pytest.raises(ValueError, match=r"holds B\.WAV and b\.flac: one utterance name for two audio files"):
        read_conversation(tmp_path)


def test_a_transcripts_folder_is_named(tmp_path):
    """A `transcripts.txt` that is a folder was read as no transcripts: speech alone."""
    sf.write(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
    (tmp_path / "transcripts.txt").mkdir()
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'transcripts.txt'} is not a file")):
        read_conversation(tmp_path)


def test_a_folder_of_other_audio_formats_is_read_in_number_order(tmp_path):
    """FLAC/OGG files beside transcripts.txt were not read (text only, no warning); without it, names were ordered
    with their case (`Utt3` first) and equal names by the file system."""
    for name in ("utt10.flac", "utt2.ogg", "Utt3.wav", "utt01.wav", "utt1.flac"):
        sf.write(tmp_path / name, np.zeros(1600, np.float32), 16000)
    assert [u["id"] for u in read_conversation(tmp_path)["utterances"]] == ["utt01", "utt1", "utt2", "Utt3", "utt10"]
    (tmp_path / "transcripts.txt").write_text("utt2\tb\nutt10.flac\tc\nutt1\ta\nUtt3\td\nutt01\te\n")
    utterances = read_conversation(tmp_path)["utterances"]
    assert [Path(u["audio"]).name for u in utterances] == ["utt2.ogg", "utt10.flac", "utt1.flac", "Utt3.wav",
                                                           "utt01.wav"]


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ('{"turns": []}', "utterances")])
def test_read_conversation_rejects_bad_files(tmp_path, content, message):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_conversation(tmp_path / "bad.json")
    (tmp_path / "transcripts.txt").write_text("no tab here\n")
    with pytest.raises(ValueError, match="transcripts.txt:1"):
        read_conversation(tmp_path)
    (tmp_path / "transcripts.txt").write_bytes("a\tyes\rb\tno\rc\tcaf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"transcripts\.txt is not UTF-8 text \(line 3, byte 16: invalid"):
        read_conversation(tmp_path)


def test_a_transcript_holding_a_unicode_line_separator_stays_one_line(tmp_path):
    """`str.splitlines` cut a text at U+2028 or NEL (a cp1252 ellipsis read as latin-1): `expected name<TAB>text`, for
    the rest of the text, named by a line number the file does not have."""
    texts = ["Wait\u2028what?", "Well\x85 fine", "form\x0cfeed"]
    (tmp_path / "transcripts.txt").write_text("".join(f"u{i}\t{text}\r\n" for i, text in enumerate(texts)),
                                              encoding="utf-8", newline="")
    assert [u["text"] for u in read_conversation(tmp_path)["utterances"]] == texts
    (tmp_path / "transcripts.txt").write_text("u0\tyes\ru1\tno\r", encoding="utf-8", newline="")  # classic Mac OS
    assert [u["text"] for u in read_conversation(tmp_path)["utterances"]] == ["yes", "no"]


def test_predict_exits_non_zero_on_a_missing_conversation(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mister_e.cli", "predict", "--model", str(tmp_path), str(tmp_path / "missing.json")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "missing.json" in result.stderr


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path):
    from datasets import load_from_disk
    from sklearn.metrics import f1_score

    from mister_e.quickstart import quickstart

    summary = quickstart(tmp_path / "qs", epochs=3)
    labels = np.concatenate(load_from_disk(tmp_path / "qs" / "corpus" / "dataset")["test"]["labels"])
    majority = f1_score(labels, np.full_like(labels, np.bincount(labels).argmax()), average="weighted")
    assert summary["test"]["weighted_f1"] > majority + 0.2, (summary["test"], majority)  # it learned the demo
    assert (tmp_path / "qs" / "model" / "model.safetensors").is_file()
    assert all(abs(sum(p["expert_weights"].values()) - 1) < 1e-5 for p in summary["predictions"])
    # A rerun with another --epochs keeps the encoders and their extraction (it was refused as "another processor")
    # and trains its own stage 2 (it resumed or read back the earlier one's).
    encoder = tmp_path / "qs" / "text-encoder" / "merged" / "model.safetensors"
    trained = encoder.stat().st_mtime_ns
    rerun = quickstart(tmp_path / "qs", epochs=2)
    assert encoder.stat().st_mtime_ns == trained
    results = json.loads((tmp_path / "qs" / "conversation-model" / "results.json").read_text())
    assert results["best_epoch"] <= 2 and rerun["test"] == results["test"]
    # The same command again reads its stage 2 back (it was trained anew, as long as the first time).
    weights = tmp_path / "qs" / "conversation-model" / "model.safetensors"
    written = weights.stat().st_mtime_ns
    again = quickstart(tmp_path / "qs", epochs=2)
    assert weights.stat().st_mtime_ns == written and again["test"] == rerun["test"]


def test_each_verb_says_which_model_folder_it_needs(tmp_path, capsys):
    """A stage-1 encoder folder given to `predict` or `evaluate` used to run a random stage 2 and exit 0."""
    MisterEForEmotionRecognition(tiny_config()).save_pretrained(tmp_path / "stage2")
    encoder = MisterEForUtteranceClassification(tiny_config(text_config=BertConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, vocab_size=10)))
    encoder.save_pretrained(tmp_path / "stage1")
    assert folder_kind(tmp_path / "stage1") == "stage-1" and folder_kind(tmp_path / "stage2") == "stage-2"
    (tmp_path / "c.json").write_text(json.dumps([{"text": "hi"}]))
    capsys.readouterr()  # the saves' progress bars
    cases = [
        (["predict", "--model", str(tmp_path / "stage1"), str(tmp_path / "c.json")], "stage1", "stage-1 encoder"),
        (["predict", "--model", str(tmp_path / "stage2"), str(tmp_path / "c.json")], "stage2", "--encoder"),
        (["evaluate", "--model", str(tmp_path / "stage1"), "--dataset", str(tmp_path / "d")], "stage1", "stage-1"),
        (["extract", "--dataset", "d", "--model", str(tmp_path / "stage2"), "--output-dir", str(tmp_path / "o")],
         "stage2", "extract --model"),
        (["predict", "--model", str(tmp_path / "stage2"), "--encoder", str(tmp_path / "stage2"),
          str(tmp_path / "c.json")], "stage2", "`--encoder`"),
    ]
    for argv, folder, message in cases:
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert folder in error and message in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "o").exists() and not (tmp_path / "stage1" / "evaluation").exists()


def test_blank_text_is_no_text(tmp_path):
    processor = tiny_processor()
    batch = processor({"utterances": [{"text": "hello"}, {"text": "  ", "audio": np.zeros(8000, np.float32),
                                                          "sampling_rate": 16000}]})
    assert batch["modality_mask"][0].tolist() == [[False, True], [True, False]]
    with pytest.raises(ValueError, match="utterance 1.*its text is empty"):
        processor({"utterances": [{"text": "hello"}, {"text": " \t"}]})


def test_read_conversation_reads_files_as_people_write_them(tmp_path):
    """Numbered WAVs in number order, a UTF-8 byte-order mark dropped, audio dicts' paths relative to the JSON file;
    a line named twice and a file of several conversations refused by name."""
    for name in ("utt1", "utt2", "utt10"):
        sf.write(tmp_path / f"{name}.wav", np.zeros(1600, np.float32), 16000)
    assert [u["id"] for u in read_conversation(tmp_path)["utterances"]] == ["utt1", "utt2", "utt10"]
    (tmp_path / "transcripts.txt").write_text("\ufeffutt1\thi\nutt2\tyes\nutt10\tno\n", encoding="utf-8")
    assert read_conversation(tmp_path)["utterances"][0] == {"id": "utt1", "audio": str(tmp_path / "utt1.wav"),
                                                            "text": "hi"}
    (tmp_path / "transcripts.txt").write_text("utt1\thi\nutt2\tyes\nutt10\tno\nutt2\tagain\n")
    with pytest.raises(ValueError, match=r"transcripts\.txt:4: 'utt2' is named twice"):
        read_conversation(tmp_path)
    (tmp_path / "c.json").write_text("\ufeff" + json.dumps([{"audio": {"path": "utt1.wav"}, "text": "hi"}]),
                                     encoding="utf-8")
    assert read_conversation(tmp_path / "c.json")["utterances"][0]["audio"] == {"path": str(tmp_path / "utt1.wav")}
    (tmp_path / "batch.json").write_text(json.dumps([{"utterances": [{"text": "a"}]}, {"utterances": [{"text": "b"}]}]))
    with pytest.raises(ValueError, match="holds a list of conversations"):
        read_conversation(tmp_path / "batch.json")


@pytest.mark.parametrize("line", ["utt2\tthere", "utt2.M4A\tthere"])
def test_audio_that_a_folder_does_not_read_is_named_not_dropped(tmp_path, line):
    """An `utt2.m4a` (or AIFF, MP4, Opus...) beside the WAVs was left out: its line became a text-only utterance, and
    without transcripts.txt the file was skipped, both without a word."""
    sf.write(tmp_path / "utt1.wav", np.zeros(1600, np.float32), 16000)
    (tmp_path / "utt2.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    with pytest.raises(ValueError, match=r"holds utt2\.m4a, which predict does not read \(audio files: \.wav"):
        read_conversation(tmp_path)
    (tmp_path / "transcripts.txt").write_text(f"utt1\thi\n{line}\n")
    with pytest.raises(ValueError, match=r"transcripts\.txt:2: 'utt2' names utt2\.m4a, which predict does not read"):
        read_conversation(tmp_path)
    (tmp_path / "transcripts.txt").write_text("utt1\thi\nutt3\ttext only\n")  # a line naming no file stays text only
    (tmp_path / "utt2.m4a").unlink()
    assert [u["audio"] is None for u in read_conversation(tmp_path)["utterances"]] == [False, True]
    (tmp_path / "transcripts.txt").unlink()  # a video beside the WAV extracted from it is that WAV's source
    (tmp_path / "utt1.mp4").write_bytes(b"\x00\x00\x00\x20ftypisom")
    assert [u["id"] for u in read_conversation(tmp_path)["utterances"]] == ["utt1"]


def _trained_run(tmp_path: Path) -> tuple[Path, Path]:
    """A text-only stage-2 run folder as `mister-e train` leaves it (weights, results.json with their fingerprint) and
    the stage-1 text encoder folder that made its embeddings."""
    torch.manual_seed(0)
    stage_two = MisterEForEmotionRecognition(tiny_config(experts=["text"]))
    stage_two.save_pretrained(tmp_path / "run")
    scores = {"weighted_f1": 0.6, "accuracy": 0.7}
    (tmp_path / "run" / "results.json").write_text(json.dumps({
        "seed": 0, "validation": scores, "test": scores, "weights_sha256": conversation_fingerprint(stage_two)}))
    encoder = MisterEForUtteranceClassification(tiny_config(text_config=BertConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, vocab_size=13)))
    encoder.save_pretrained(tmp_path / "encoder")
    tiny_processor().save_pretrained(tmp_path / "encoder")
    return tmp_path / "run", tmp_path / "encoder"


def test_share_writes_a_loadable_folder_and_pushes_the_same_files(tmp_path, capsys, monkeypatch):
    from transformers import pipeline

    run, encoder = _trained_run(tmp_path)
    capsys.readouterr()
    share = ["share", str(run), "--encoder", str(encoder), "--license", "mit"]
    assert main([*share, "--folder", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert str(tmp_path / "out") in capsys.readouterr().out
    card = (tmp_path / "out" / "README.md").read_text()
    assert "license: mit" in card and "| test | weighted_f1 | 60.00 |" in card and "checked against" in card
    pipe = pipeline("emotion-recognition-in-conversation", model=str(tmp_path / "out"), device="cpu")
    assert conversation_fingerprint(pipe.model) == json.loads((run / "results.json").read_text())["weights_sha256"]
    assert pipe({"utterances": [{"text": "hello world"}, {"text": "oh no"}]})[1]["label"].startswith("emotion_")

    commits = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: commits.append(kwargs) or repo_id)
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kwargs: commits.append(
        sorted(op.path_in_repo for op in operations)) or type("CommitInfo", (), {"commit_url": "https://hub/c/1"})())
    assert main([*share, "--to", "you/tiny", "--private"]) == 2  # the tests run offline (conftest)
    error = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set" in error and len(error.strip().splitlines()) == 1 and not commits
    monkeypatch.setattr("mister_e.hub.is_offline_mode", lambda: False)
    assert main([*share, "--to", "you/tiny", "--private"]) == 0
    assert "you/tiny: https://hub/c/1" in capsys.readouterr().out
    assert commits[0]["private"] is True
    assert commits[1] == sorted(path.name for path in (tmp_path / "out").iterdir())


def test_share_refuses_what_it_cannot_share_in_one_line(tmp_path, capsys, caplog):
    run, encoder = _trained_run(tmp_path)
    other = tmp_path / "other" / "seed_3"
    other.mkdir(parents=True)
    (other / "results.json").write_text(json.dumps({"seed": 3, "test": {"accuracy": 0.9}, "weights_sha256": "0" * 64}))
    (tmp_path / "runs" / "seed_0").mkdir(parents=True)
    (tmp_path / "runs" / "summary.json").write_text("{}")
    stage_one = tmp_path / "text_encoder" / "results.json"  # what `train-encoder` writes
    stage_one.parent.mkdir()
    stage_one.write_text(json.dumps({"seed": 0, "modality": "text", "solver": "trainer", "test": {"accuracy": 0.5}}))
    MisterEForEmotionRecognition(tiny_config()).save_pretrained(tmp_path / "bare")
    (tmp_path / "empty").mkdir()
    out = ["--folder", str(tmp_path / "out")]
    cases = [
        (["share", str(tmp_path / "nowhere"), *out], "No model folder at"),
        (["share", str(tmp_path / "bare"), *out], "bare holds no results.json: give --results FILE"),
        (["share", str(tmp_path / "runs"), *out], "holds the runs of several seeds (summary.json)"),
        (["share", str(tmp_path / "empty"), *out], "No saved model (config.json) in"),
        (["share", str(encoder), *out], "is a stage-1 encoder folder"),
        (["share", str(run), *out], "is a stage-2 model"),
        (["share", str(run), "--encoder", str(encoder), "--to", "you/bad/id"], "'you/bad/id' is not a Hub repository"),
        (["share", str(run), "--encoder", str(encoder), "--private", *out], "--private is for --to"),
        (["share", str(run), "--encoder", str(encoder), "--results", str(other / "results.json"), *out],
         f"holds the scores of the run in {other} (seed 3), whose weights are not the model being shared"),
        # before the model is loaded: without --encoder, loading `run` would fail first
        (["share", str(run), "--results", str(tmp_path / "nowhere.json"), *out], "No results file at"),
        (["share", str(run), "--results", str(stage_one), *out],
         f"{stage_one} holds the scores of a text encoder (`train-encoder`), not of a conversation model"),
    ]
    capsys.readouterr()
    for argv, message in cases:
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "out").exists()

    (run / "results.json").write_text(json.dumps({"seed": 0, "test": {"accuracy": 0.7}}))  # an older run: no weights
    with caplog.at_level("WARNING"):
        assert main(["share", str(run), "--encoder", str(encoder), *out]) == 0
    assert "cannot be checked to be this model's" in caplog.text and (tmp_path / "out" / "README.md").is_file()


def test_paths_are_read_as_users_type_them(tmp_path, monkeypatch):
    """`~` that the shell leaves (`--model=~/m`, quoted) is the home folder: it made a folder named `~`, and the
    Trainer, which expands it, wrote half a run to the home folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    parser = build_parser()
    args = parser.parse_args(["predict", "--model=~/m", "--encoder", "~/e", "~/c.wav", "--csv=~/t.csv"])
    assert (args.model, args.encoders, args.conversation, args.csv) == (
        str(tmp_path / "m"), [str(tmp_path / "e")], str(tmp_path / "c.wav"), str(tmp_path / "t.csv"))
    args = parser.parse_args(["train", "--recipe", "~/r.yaml", "--dataset=~/d", "--output-dir=~/runs"])
    assert (args.recipe, args.dataset, args.output_dir) == (
        str(tmp_path / "r.yaml"), str(tmp_path / "d"), str(tmp_path / "runs"))
    args = parser.parse_args(["evaluate", "--model=~/m", "--dataset=~/d", "--output-dir=~/report"])
    assert args.output_dir == str(tmp_path / "report")
    args = parser.parse_args(["prepare", "emodb", "~/emodb", "~/out"])
    assert (args.root, args.output_dir) == (str(tmp_path / "emodb"), str(tmp_path / "out"))


def test_outputs_that_could_only_be_written_as_something_else_are_refused(tmp_path, capsys, monkeypatch):
    """A Windows path made a file or folder named `C:\\...`, `--csv out/` a file named `out`, and a broken link failed
    after the work with an errno naming a temporary folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    cases = [
        (["prepare", "emodb", "root", "C:\\data\\out"], "C:\\data\\out is a Windows path"),
        (["prepare", "emodb", "root", "broken"], f"broken is a broken symbolic link (to {tmp_path / 'nowhere'})"),
        (["prepare", "emodb", "root", "loop"], "loop is a broken symbolic link"),
        (["predict", "--model", "m", "r.wav", "--csv", "out/"], "out/ is a folder; name a file in it"),
        (["predict", "--model", "m", "r.wav", "--plot", "D:/plots/t.png"], "D:/plots/t.png is a Windows path"),
        (["extract", "--dataset", "d", "--model", "m", "--output-dir", "o", "--cache-dir", "broken"],
         "broken is a broken symbolic link"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken", "loop"]


def test_audio_a_folder_cannot_read_is_named_not_dropped(tmp_path):
    """A broken link, a link loop or a folder under an audio file's name was left out of the conversation silently."""
    sf.write(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
    for name, make, message in [("b.wav", lambda b: b.symlink_to(tmp_path / "gone.wav"), "a broken symbolic link"),
                                ("b.flac", lambda b: b.symlink_to(b), "a broken symbolic link"),
                                ("b.m4a", lambda b: b.mkdir(), "not a file")]:
        make(tmp_path / name)
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name} is {message}")):
            read_conversation(tmp_path)
        (tmp_path / name).rmdir() if name == "b.m4a" else (tmp_path / name).unlink()
    assert [u["id"] for u in read_conversation(tmp_path)["utterances"]] == ["a"]


def test_a_conversation_file_reads_audio_paths_under_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "c.json").write_text(json.dumps([{"audio": "~/a.wav"}, {"audio": {"path": "~/b.wav"}}]))
    utterances = read_conversation(tmp_path / "c.json")["utterances"]
    assert utterances == [{"audio": str(tmp_path / "home" / "a.wav")}, {"audio": {"path": str(tmp_path / "home" /
                                                                                               "b.wav")}}]


# --- shared machines: one writer per output folder, disk errors named ---------------------------------------------


def test_weights_written_by_a_verb_follow_the_umask(tmp_path):
    """safetensors writes owner-only files (0600) whatever the umask: another user of the folder could not read the
    weights. A verb's output folder gets them in the umask's mode; other files keep theirs."""
    from safetensors.torch import save_file

    out = tmp_path / "out"
    mask = os.umask(0o022)
    try:
        with writing_into(out):
            (out / "seed_0").mkdir(parents=True)
            save_file({"w": torch.zeros(2)}, str(out / "seed_0" / "model.safetensors"))
            (out / "secret.txt").write_text("x")
            (out / "secret.txt").chmod(0o600)
            (out / "seed_0" / "model.safetensors").chmod(0o600)  # as safetensors 0.8 writes it, whatever the umask
    finally:
        os.umask(mask)
    assert (out / "seed_0" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (out / "secret.txt").stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file to another user")
def test_weights_of_another_user_in_the_output_folder_are_left_as_they_are(tmp_path):
    """Only the owner may change a file's mode: another user's owner-only weights in a shared output folder failed a
    finished command with a PermissionError (root, who may, made another user's private file readable)."""
    out = tmp_path / "out"
    with writing_into(out):
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"x")
        (out / "model.safetensors").chmod(0o600)
        os.chown(out / "model.safetensors", 12345, 12345)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),  # datasets' and Python's writes: no file named
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),  # no OSError
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7936 vs 7828"),  # torch.save's
])
def test_a_full_disk_is_one_line_naming_the_output_folder(tmp_path, error):
    with pytest.raises(OSError, match=re.escape(str(tmp_path / "out"))) as raised:
        with writing_into(tmp_path / "out"):
            assert (tmp_path / ".out.lock").read_text() == f"{os.getpid()}@{socket.gethostname()}"
            raise error
    assert "full" in str(raised.value) or "No space left on device" in str(raised.value)
    with pytest.raises(ValueError, match="^other$"), writing_into(tmp_path / "out"):  # other errors pass as they are
        raise ValueError("other")
    assert not (tmp_path / ".out.lock").exists()


def test_a_refused_command_removes_the_parent_folders_its_lock_created(tmp_path):
    """The lock sits beside the output folder, so it creates the folder's missing parents (`runs/`): a command refused
    inside it left them behind, empty. Folders that were there, or that hold something now, stay."""
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError), writing_into(tmp_path / "kept" / "runs" / "a" / "out"):
        raise ValueError("a data check inside training")
    assert list(tmp_path.iterdir()) == [tmp_path / "kept"] and not list((tmp_path / "kept").iterdir())
    with pytest.raises(ValueError), writing_into(tmp_path / "runs" / "a" / "out"):
        (tmp_path / "runs" / "notes.txt").write_text("written meanwhile")
        raise ValueError("refused")
    assert not (tmp_path / "runs" / "a").exists() and (tmp_path / "runs" / "notes.txt").exists()
    with writing_into(tmp_path / "done" / "out"):  # a command that finished keeps its folders
        pass
    assert (tmp_path / "done").is_dir()


def test_a_write_through_a_temporary_name_fails_naming_the_file_written(tmp_path):
    """`atomic_path`'s errors named `.summary.json.<pid>.<random>.tmp`, a file no user asked for (nor can find)."""
    from mister_e.utils import atomic_path

    with pytest.raises(FileNotFoundError) as raised, atomic_path(tmp_path / "gone" / "summary.json") as tmp:
        tmp.write_text("{}")
    assert raised.value.filename == str(tmp_path / "gone" / "summary.json") and ".tmp" not in str(raised.value)
    (tmp_path / "summary.json").mkdir()  # the rename onto it fails
    with pytest.raises(IsADirectoryError) as raised, atomic_path(tmp_path / "summary.json") as tmp:
        tmp.write_text("{}")
    assert raised.value.filename == str(tmp_path / "summary.json") and ".tmp" not in str(raised.value)
    with pytest.raises(OSError, match="^other$"), atomic_path(tmp_path / "other.json"):  # none named: as it was
        raise OSError("other")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["summary.json"]


def test_prepare_on_a_full_disk_leaves_nothing_and_runs_again(tmp_path, capsys, monkeypatch):
    from datasets import DatasetDict

    from test_data_releases import make_meld

    root, out = make_meld(tmp_path / "MELD"), tmp_path / "out" / "prepared"
    save = DatasetDict.save_to_disk

    def full(self, path, **kwargs):
        save(self, path, **kwargs)  # written, then the disk ran out (as pyarrow says it: no file named)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DatasetDict, "save_to_disk", full)
    assert main(["prepare", "meld", str(root), str(out), "--text-only"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"mister-e prepare: error: [Errno 28] No space left on device: '{out}'"
    assert not (tmp_path / "out").exists()  # no staging folder, no lock, nor the parent the lock created
    monkeypatch.setattr(DatasetDict, "save_to_disk", save)
    assert main(["prepare", "meld", str(root), str(out), "--text-only"]) == 0
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["prepared"]


def test_one_folder_named_two_ways_or_twice_is_locked_as_one(tmp_path):
    """The lock sits beside the folder itself, however it is named: `runs/x/..` locked `runs/x/....lock` and a
    symbolic link its own, so two commands writing one folder both ran. A folder this command already writes (e.g.
    `extract --cache-dir` naming its --output-dir) is said so, not as another mister-e of this very process id."""
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    for other in (tmp_path / "runs" / "x" / "..", tmp_path / "link"):
        with writing_into(tmp_path / "runs"), pytest.raises(RuntimeError, match="this command writes into .* twice"):
            with writing_into(other):
                pass
    with writing_into(tmp_path / "out"), pytest.raises(RuntimeError) as caught:
        with writing_into(tmp_path / "out"):
            pass
    assert str(caught.value) == f"this command writes into {tmp_path / 'out'} twice: give each output its own folder."
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link", "runs"]


def test_two_commands_writing_one_folder_one_is_refused(tmp_path):
    """Two `train` into one run folder both trained it, over the same checkpoints; two `extract` sharing a cache could
    mix two encoders' shards. The second writer is now refused in one line; a lock its process left when killed is
    taken over."""
    from test_data_releases import make_meld

    root, out = make_meld(tmp_path / "MELD"), tmp_path / "prepared"
    holder = subprocess.Popen(  # another mister-e, writing into the folder
        [sys.executable, "-c",
         "import sys; from mister_e.utils import writing_into\n"
         f"with writing_into({str(out)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    prepare = [sys.executable, "-m", "mister_e.cli", "prepare", "meld", str(root), str(out), "--text-only"]
    refused = subprocess.run(prepare, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"mister-e prepare: error: another mister-e (pid {holder.pid} on {socket.gethostname()}) is writing into {out}; "
        f"wait for it to finish, or remove {tmp_path / '.prepared.lock'} if that process is gone."]
    assert not out.exists()
    holder.communicate("")
    assert subprocess.run(prepare, capture_output=True).returncode == 0  # its lock went with it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".again.lock").write_text(f"{dead.stdout.strip()}@{socket.gethostname()}")  # killed, lock left
    assert subprocess.run([*prepare[:-2], str(tmp_path / "again"), "--text-only"]).returncode == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["MELD", "again", "prepared"]


def test_a_train_refused_for_its_missing_data_creates_no_folder(tmp_path, capsys, monkeypatch):
    """`train --recipe small` without --dataset reads the recipe's placeholder `data/embedded`: it created the lock's
    parent, the placeholder output folder's `runs/`, before the data set was found missing."""
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", "--recipe", "small"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "data/embedded" in error, error
    assert list(tmp_path.iterdir()) == []
