"""The `mister-e` command line: argument wiring, conversation files, clear failures."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from mister_e.cli import build_parser, main, read_conversation


VERBS = ("quickstart", "prepare", "train-encoder", "plan", "extract", "train", "evaluate", "predict")


def test_every_command_is_wired():
    parser = build_parser()
    assert set(parser._subparsers._group_actions[0].choices) == set(VERBS)
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

    monkeypatch.setattr("mister_e.cli._run_extract", stale_cache)
    assert main(["extract", "--dataset", "d", "--model", "m", "--output-dir", "o"]) == 2
    assert "another extraction" in capsys.readouterr().err


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


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ('{"turns": []}', "utterances")])
def test_read_conversation_rejects_bad_files(tmp_path, content, message):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_conversation(tmp_path / "bad.json")
    (tmp_path / "transcripts.txt").write_text("no tab here\n")
    with pytest.raises(ValueError, match="transcripts.txt:1"):
        read_conversation(tmp_path)


def test_predict_exits_non_zero_on_a_missing_conversation(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mister_e.cli", "predict", "--model", str(tmp_path), str(tmp_path / "missing.json")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2 and "missing.json" in result.stderr


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path):
    from mister_e.quickstart import quickstart

    summary = quickstart(tmp_path / "qs", epochs=3)
    assert 0.0 <= summary["test"]["weighted_f1"] <= 1.0
    assert (tmp_path / "qs" / "model" / "model.safetensors").is_file()
    assert all(abs(sum(p["expert_weights"].values()) - 1) < 1e-5 for p in summary["predictions"])
