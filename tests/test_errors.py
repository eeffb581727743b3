"""The catalogue of bad inputs: each is one line on stderr that names the file, folder or field at fault, exit status
2, no traceback, and nothing half-written (`--debug` gives the traceback instead)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from tiny_end_to_end import SR, tiny_model, tiny_processor
from mister_e.cli import main


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """An end-to-end model folder, damaged copies of it, and bad conversations."""
    root = tmp_path_factory.mktemp("bad-inputs")
    tiny_model().save_pretrained(root / "model")
    tiny_processor().save_pretrained(root / "model")
    for name, damage in [("truncated", lambda data: data[: len(data) // 2]), ("not-safetensors", lambda _: b"weights")]:
        shutil.copytree(root / "model", root / name)
        weights = root / name / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
    shutil.copytree(root / "model", root / "no-weights")
    (root / "no-weights" / "model.safetensors").unlink()
    (root / "bad-config").mkdir()
    (root / "bad-config" / "config.json").write_text("{oops")
    (root / "other-model").mkdir()
    (root / "other-model" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (root / "empty").mkdir()
    (root / "hello.json").write_text(json.dumps([{"text": "hello"}]))
    (root / "not-json.json").write_text("{not json")
    (root / "no-utterances.json").write_text(json.dumps({"turns": []}))
    (root / "blank.json").write_text(json.dumps([{"text": "hello"}, {"text": "  "}]))
    (root / "broken.wav").write_bytes(b"RIFF but not audio")
    (root / "broken-audio.json").write_text(json.dumps([{"audio": "broken.wav", "text": "hello"}]))
    (root / "missing-audio.json").write_text(json.dumps([{"audio": "gone.wav", "text": "hello"}]))
    for name in ("latin-1", "names-no-file", "no-tab"):
        (root / name).mkdir()
        sf.write(root / name / "clip.wav", np.zeros(SR // 2, np.float32), SR)
    (root / "latin-1" / "transcripts.txt").write_bytes("clip\tcaf\u00e9\n".encode("latin-1"))
    (root / "names-no-file" / "transcripts.txt").write_text("utt1\tnames no file here\n")
    (root / "no-tab" / "transcripts.txt").write_text("clip without a tab\n")
    return root


CASES = {  # name -> (arguments, culprit the line must name, what it must say)
    "truncated weights": (["predict", "--model", "{root}/truncated", "{root}/hello.json"], "truncated", "truncated"),
    "not a weights file": (["predict", "--model", "{root}/not-safetensors", "{root}/hello.json"], "not-safetensors",
                           "safetensors"),
    "no weights file": (["predict", "--model", "{root}/no-weights", "{root}/hello.json"], "no-weights", "model"),
    "empty model folder (predict)": (["predict", "--model", "{root}/empty", "{root}/hello.json"], "empty",
                                     "config.json"),
    "empty model folder (extract)": (["extract", "--dataset", "{root}/model", "--model", "{root}/empty",
                                      "--output-dir", "{out}"], "empty", "config.json"),
    "unreadable config": (["predict", "--model", "{root}/bad-config", "{root}/hello.json"], "config.json",
                          "not a readable config"),
    "not a MiSTER-E folder": (["predict", "--model", "{root}/other-model", "{root}/hello.json"], "other-model",
                              "BertModel"),
    "missing conversation": (["predict", "--model", "{root}/model", "{root}/gone.json"], "gone.json", ""),
    "conversation not JSON": (["predict", "--model", "{root}/model", "{root}/not-json.json"], "not-json.json",
                              "not valid JSON"),
    "conversation without utterances": (["predict", "--model", "{root}/model", "{root}/no-utterances.json"],
                                        "no-utterances.json", "utterances"),
    "blank text only": (["predict", "--model", "{root}/model", "{root}/blank.json"], "utterance 1", "empty"),
    "broken audio file": (["predict", "--model", "{root}/model", "{root}/broken-audio.json"], "broken.wav", ""),
    "missing audio file": (["predict", "--model", "{root}/model", "{root}/missing-audio.json"], "gone.wav", ""),
    "transcripts not UTF-8": (["predict", "--model", "{root}/model", "{root}/latin-1"], "transcripts.txt", "UTF-8"),
    "transcripts name no file": (["predict", "--model", "{root}/model", "{root}/names-no-file"], "transcripts.txt",
                                 "WAV"),
    "transcript line without a tab": (["predict", "--model", "{root}/model", "{root}/no-tab"], "transcripts.txt:1",
                                      "tab"),
    "missing data set (evaluate)": (["evaluate", "--model", "{root}/model", "--dataset", "{root}/no-data"], "no-data",
                                    ""),
    "missing release (prepare)": (["prepare", "meld", "{root}/no-release", "{out}", "--text-only"], "no-release", ""),
    "unknown config field (train)": (["train", "--recipe", "small", "--dataset", "{root}/model", "--output-dir", "{out}",
                                      "--set", "no_such_field=1"], "no_such_field", ""),
    "wrong config value (train)": (["train", "--recipe", "small", "--dataset", "{root}/model", "--output-dir", "{out}",
                                    "--set", "focal_gamma=-1"], "focal_gamma", ""),
    "wrong training value (train)": (["train", "--recipe", "small", "--dataset", "{root}/model", "--output-dir", "{out}",
                                      "--set", "checkpoint_budget=1.5"], "checkpoint_budget", ""),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_named_line_and_exit_2(case, root, tmp_path, capsys):
    arguments, culprit, says = CASES[case]
    out = tmp_path / "out"
    argv = [argument.format(root=root, out=out) for argument in arguments]
    capsys.readouterr()
    assert main(argv) == 2, argv
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    assert culprit in error and says in error, error
    assert not out.exists()  # nothing half-written
    assert not list(root.rglob("*.tmp*")) and not (root / "model" / "evaluation").exists()


def test_debug_gives_the_traceback_instead(root):
    with pytest.raises(OSError, match="truncated"):
        main(["--debug", "predict", "--model", str(root / "truncated"), str(root / "hello.json")])
