"""The catalogue of bad inputs: each is one line on stderr that names the file, folder or field at fault, exit status
2, no traceback, and nothing half-written (`--debug` gives the traceback instead)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
from safetensors.torch import load_file, save_file

from datasets import DatasetDict, List, Value
from transformers import BertConfig

from tiny import tiny_config
from tiny_end_to_end import SR, tiny_model, tiny_processor
from mister_e import MisterEForEmotionRecognition
from mister_e.cli import main
from mister_e.data import make_dialogue_dataset


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
    shutil.copytree(root / "model", root / "lacking-tensor")
    weights = load_file(root / "lacking-tensor" / "model.safetensors")
    del weights["text_expert.classifier.weight"]
    save_file(weights, root / "lacking-tensor" / "model.safetensors", metadata={"format": "pt"})
    shutil.copytree(root / "model", root / "edited-labels")
    config = json.loads((root / "edited-labels" / "config.json").read_text())
    config["id2label"] = {str(i): f"class {i}" for i in range(len(config["id2label"]) + 1)}
    config.pop("label2id", None)
    (root / "edited-labels" / "config.json").write_text(json.dumps(config))
    shutil.copytree(root / "model", root / "no-vocabulary")
    (root / "no-vocabulary" / "tokenizer.json").unlink()
    shutil.copytree(root / "model", root / "no-weights")
    (root / "no-weights" / "model.safetensors").unlink()
    (root / "bad-config").mkdir()
    (root / "bad-config" / "config.json").write_text("{oops")
    (root / "other-model").mkdir()
    (root / "other-model" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (root / "empty").mkdir()
    (root / "hello.json").write_text(json.dumps([{"text": "hello"}]))
    (root / "bare.yaml").write_text("config:\n  focal_gamma: 1.0\n")
    (root / "not-json.json").write_text("{not json")
    (root / "not-a-pickle.pkl").write_text("not a pickle")
    (root / "no-utterances.json").write_text(json.dumps({"turns": []}))
    (root / "blank.json").write_text(json.dumps([{"text": "hello"}, {"text": "  "}]))
    (root / "one-id-twice.json").write_text(json.dumps([{"id": 7, "text": "hello"}, {"text": "oh"}, {"id": 7, "text": "no"}]))
    (root / "broken.wav").write_bytes(b"RIFF but not audio")
    (root / "phone.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    (root / "broken-audio.json").write_text(json.dumps([{"audio": "broken.wav", "text": "hello"}]))
    (root / "missing-audio.json").write_text(json.dumps([{"audio": "gone.wav", "text": "hello"}]))
    for name in ("latin-1", "names-no-file", "no-tab"):
        (root / name).mkdir()
        sf.write(root / name / "clip.wav", np.zeros(SR // 2, np.float32), SR)
    (root / "latin-1" / "transcripts.txt").write_bytes("clip\tcaf\u00e9\n".encode("latin-1"))
    (root / "open-quote").mkdir()  # a quote left open, no quote after it: the rest of the file is one field (> 128 KB)
    rows = ["Utterance,Emotion,Dialogue_ID,Utterance_ID", '"Hi there,joy,0,0',
            *(f"fine number {i},neutral,{i},0" for i in range(1, 10000))]
    (root / "open-quote" / "train_sent_emo.csv").write_text("\n".join(rows) + "\n")
    for name, size in (("open-quote-header", 10000), ("open-quote-short-header", 10)):  # past 128 KB, and short
        (root / name).mkdir()
        (root / name / "train_sent_emo.csv").write_text("\n".join(['"' + rows[0], *rows[2 : size + 1]]) + "\n")
    (root / "names-no-file" / "transcripts.txt").write_text("utt1\tnames no file here\n")
    (root / "no-tab" / "transcripts.txt").write_text("clip without a tab\n")
    MisterEForEmotionRecognition(tiny_config()).save_pretrained(root / "stage-2")
    MisterEForEmotionRecognition(tiny_config(experts=["text"])).save_pretrained(root / "stage-2-text")
    stage_one = tiny_config(text_config=BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=8, vocab_size=20),
                            architectures=["MisterEForUtteranceClassification"])
    stage_one.save_pretrained(root / "stage-1-text")  # its config alone: what `extract` reads first
    for name, labels, nan_split in [("embedded", LABELS, None), ("nan-train", LABELS, "train"),
                                    ("nan-test", LABELS, "test"), ("other-labels", LABELS[::-1], None)]:
        embedded_dialogues(labels, nan_split).save_to_disk(root / name)
    embedded_dialogues(LABELS).remove_columns(["speech_embeds", "text_embeds"]).save_to_disk(root / "raw")
    embedded_dialogues(LABELS, speech_width=9).save_to_disk(root / "wide")
    no_text_first = lambda row, i: {"text_embeds": [None] + row["text_embeds"][1:] if i == 0 else row["text_embeds"]}
    text_missing = embedded_dialogues(LABELS)
    DatasetDict({**text_missing, "test": text_missing["test"].map(no_text_first, with_indices=True)}).save_to_disk(
        root / "text-missing")
    misaligned = embedded_dialogues(LABELS)
    short_text = lambda row, i: {"text_embeds": row["text_embeds"][:2] if i == 1 else row["text_embeds"]}
    DatasetDict({**misaligned, "test": misaligned["test"].map(short_text, with_indices=True)}).save_to_disk(
        root / "misaligned")
    no_train = embedded_dialogues(LABELS)
    DatasetDict({"validation": no_train["validation"], "test": no_train["test"]}).save_to_disk(root / "no-train")
    plain = embedded_dialogues(LABELS)
    DatasetDict({split: part.cast_column("labels", List(Value("int64"))) for split, part in plain.items()}).save_to_disk(
        root / "plain-labels")
    empty = embedded_dialogues(LABELS)
    DatasetDict({**empty, "validation": empty["validation"].select([])}).save_to_disk(root / "empty-split")
    same_id = embedded_dialogues(LABELS)  # saved by hand: the builders' own check (`validate_dialogues`) never ran
    renamed = lambda row, i: {"dialogue_id": "test0" if i == 1 else row["dialogue_id"]}
    DatasetDict({**same_id, "test": same_id["test"].map(renamed, with_indices=True)}).save_to_disk(root / "same-id")
    repeated = lambda row, i: {"utterance_ids": [row["utterance_ids"][0]] * 2 + row["utterance_ids"][2:]
                               if i == 0 else row["utterance_ids"]}
    DatasetDict({**same_id, "train": same_id["train"].map(repeated, with_indices=True)}).save_to_disk(
        root / "utterance-twice")
    return root


LABELS = ["emotion_0", "emotion_1", "emotion_2"]


def embedded_dialogues(labels, nan_split=None, speech_width=6) -> DatasetDict:
    """Three tiny conversations a split with `tiny_config`'s widths; `nan_split`'s first utterance holds a NaN."""
    rng = np.random.default_rng(0)
    splits = {}
    for split in ("train", "validation", "test"):
        rows = [{"dialogue_id": f"{split}{d}", "labels": [0, 1, 2], "texts": ["a", "b", "c"],
                 "speech_embeds": rng.standard_normal((3, speech_width)).tolist(), "text_embeds": rng.standard_normal((3, 5)).tolist()}
                for d in range(3)]
        splits[split] = make_dialogue_dataset(rows, labels)
        if split == nan_split:
            nan_first = lambda row, i: {"speech_embeds": [[float("nan")] * 6] + row["speech_embeds"][1:] if i == 0
                                        else row["speech_embeds"]}
            splits[split] = splits[split].map(nan_first, with_indices=True)
    return DatasetDict(splits)


CASES = {  # name -> (arguments, culprit the line must name, what it must say)
    "truncated weights": (["predict", "--model", "{root}/truncated", "{root}/hello.json"], "truncated", "truncated"),
    "not a weights file": (["predict", "--model", "{root}/not-safetensors", "{root}/hello.json"], "not-safetensors",
                           "safetensors"),
    "weights lacking a tensor": (["predict", "--model", "{root}/lacking-tensor", "{root}/hello.json"], "lacking-tensor",
                                 "text_expert.classifier.weight"),
    "--embedding without --encoder (predict)": (["predict", "--model", "{root}/model", "{root}/hello.json",
                                                 "--embedding", "projection"], "--embedding", "give the encoders"),
    "negative seed (evaluate)": (["evaluate", "--model", "{root}/model", "--dataset", "{root}/embedded", "--seed", "-1"],
                                 "--seed", "from 0 to 2**32 - 1"),
    "config edited off its weights": (["predict", "--model", "{root}/edited-labels", "{root}/hello.json"],
                                      "edited-labels", "do not fit its config.json"),
    "tokenizer without its vocabulary": (["predict", "--model", "{root}/no-vocabulary", "{root}/hello.json"],
                                         "tokenizer.json", "tokenizer knows"),
    "no weights file": (["predict", "--model", "{root}/no-weights", "{root}/hello.json"], "no-weights", "model"),
    "empty model folder (predict)": (["predict", "--model", "{root}/empty", "{root}/hello.json"], "empty",
                                     "config.json"),
    "empty model folder (extract)": (["extract", "--dataset", "{root}/model", "--model", "{root}/empty",
                                      "--output-dir", "{out}"], "empty", "config.json"),
    "unreadable config": (["predict", "--model", "{root}/bad-config", "{root}/hello.json"], "config.json",
                          "not a readable config"),
    "not a MiSTER-E folder": (["predict", "--model", "{root}/other-model", "{root}/hello.json"], "other-model",
                              "BertModel"),
    "audio in a format not read (predict)": (["predict", "--model", "{root}/model", "{root}/phone.m4a"], "phone.m4a",
                                             "neither a conversation"),
    "missing conversation": (["predict", "--model", "{root}/model", "{root}/gone.json"], "gone.json", ""),
    "conversation not JSON": (["predict", "--model", "{root}/model", "{root}/not-json.json"], "not-json.json",
                              "not valid JSON"),
    "conversation without utterances": (["predict", "--model", "{root}/model", "{root}/no-utterances.json"],
                                        "no-utterances.json", "utterances"),
    "two utterances with one id": (["predict", "--model", "{root}/model", "{root}/one-id-twice.json"],
                                   "one-id-twice.json", "utterances 0 and 2 have the same id, 7"),
    # the conversation file, then the utterance (the pipeline names only the utterance)
    "blank text only": (["predict", "--model", "{root}/model", "{root}/blank.json"],
                        "blank.json: conversation 0, utterance 1", "empty"),
    "broken audio file": (["predict", "--model", "{root}/model", "{root}/broken-audio.json"],
                          "broken-audio.json: conversation 0, utterance 0", "broken.wav"),
    "missing audio file": (["predict", "--model", "{root}/model", "{root}/missing-audio.json"],
                           "missing-audio.json: conversation 0, utterance 0", "gone.wav"),
    "transcripts not UTF-8": (["predict", "--model", "{root}/model", "{root}/latin-1"], "transcripts.txt", "UTF-8"),
    "transcripts name no file": (["predict", "--model", "{root}/model", "{root}/names-no-file"], "transcripts.txt",
                                 "audio files"),
    "transcript line without a tab": (["predict", "--model", "{root}/model", "{root}/no-tab"], "transcripts.txt:1",
                                      "tab"),
    "missing data set (evaluate)": (["evaluate", "--model", "{root}/model", "--dataset", "{root}/no-data"], "no-data",
                                    ""),
    "an option of another data set (prepare)": (["prepare", "meld", "{root}/no-release", "{out}", "--seed", "3"],
                                                "--seed", "meld takes no --seed"),
    "no train split (train)": (["train", "--recipe", "small", "--dataset", "{root}/no-train", "--output-dir", "{out}"],
                               "no-train", "training needs ['train']"),
    "no train split (train-encoder)": (["train-encoder", "--dataset", "{root}/no-train", "--modality", "speech",
                                       "--backbone", "opensmile:eGeMAPSv02", "--output-dir", "{out}"], "no-train",
                                      "training needs ['train']"),
    "embeddings not one per utterance (evaluate)": (["evaluate", "--model", "{root}/stage-2", "--dataset",
                                                     "{root}/misaligned", "--output-dir", "{out}"], "test1",
                                                    "text_embeds has 2 entries for 3 labels"),
    "labels without class names (evaluate)": (["evaluate", "--model", "{root}/stage-2", "--dataset",
                                               "{root}/plain-labels", "--output-dir", "{out}"], "labels",
                                              "not class labels"),
    "two encoders of one modality (predict)": (["predict", "--model", "{root}/stage-2", "--encoder",
                                                "{root}/stage-1-text", "--encoder", "{root}/stage-1-text",
                                                "{root}/hello.json"], "--encoder", "both encode text"),
    "missing release (prepare)": (["prepare", "meld", "{root}/no-release", "{out}", "--text-only"], "no-release", ""),
    "a quote left open in a long release CSV (prepare)": (["prepare", "meld", "{root}/open-quote", "{out}",
                                                           "--text-only"], "train_sent_emo.csv row 1",
                                                          "a quote left open"),
    "a quote left open in a long release CSV's header (prepare)": (["prepare", "meld", "{root}/open-quote-header",
                                                                    "{out}", "--text-only"],
                                                                   "train_sent_emo.csv header", "a quote left open"),
    "a quote left open in a short release CSV's header (prepare)": (["prepare", "meld",
                                                                     "{root}/open-quote-short-header", "{out}",
                                                                     "--text-only"], "train_sent_emo.csv header runs "
                                                                    "over several lines", "a quote left open"),
    "unknown config field (train)": (["train", "--recipe", "small", "--dataset", "{root}/model", "--output-dir", "{out}",
                                      "--set", "no_such_field=1"], "no_such_field", ""),
    "wrong config value (train)": (["train", "--recipe", "small", "--dataset", "{root}/model", "--output-dir", "{out}",
                                    "--set", "focal_gamma=-1"], "focal_gamma", ""),
    "wrong training value (train)": (["train", "--recipe", "small", "--dataset", "{root}/model", "--output-dir", "{out}",
                                      "--set", "checkpoint_budget=1.5"], "checkpoint_budget", ""),
    "selection on a metric never computed (train)": (["train", "--recipe", "small", "--dataset", "{root}/model",
                                                      "--output-dir", "{out}", "--set", "metric_for_best_model=wf1"],
                                                     "metric_for_best_model", "log_loss"),
    "no expert given what it reads (train)": (["train", "--recipe", "small", "--dataset", "{root}/embedded",
                                                "--output-dir", "{out}", "--seeds", "0", "--modalities", "speech",
                                                "--set", "experts=[text]"], "'text': ['text']", "No enabled expert"),
    "NaN in a training embedding": (["train", "--recipe", "small", "--dataset", "{root}/nan-train", "--output-dir",
                                     "{out}", "--seeds", "0"], "train0", "non-finite"),
    "no expert given what it reads (evaluate)": (["evaluate", "--model", "{root}/stage-2-text", "--dataset",
                                                   "{root}/embedded", "--output-dir", "{out}", "--modalities",
                                                   "speech"], "'text': ['text']", "No enabled expert"),
    "an utterance no expert can read (evaluate)": (["evaluate", "--model", "{root}/stage-2-text", "--dataset",
                                                     "{root}/text-missing", "--output-dir", "{out}"], "test0",
                                                    "lacks every modality an enabled expert reads (1 such"),
    "two models for one modality (extract)": (["extract", "--dataset", "{root}/raw", "--model", "{root}/stage-1-text",
                                               "{root}/stage-1-text", "--output-dir", "{out}"], "stage-1-text",
                                              "both encode text"),
    "backbone folder not found (train-encoder)": (["train-encoder", "--dataset", "{root}/raw", "--modality", "text",
                                                   "--backbone", "{root}/no-backbone", "--output-dir", "{out}"],
                                                  "no-backbone", "not found"),
    "a Hub backbone not in the cache, offline (train-encoder)": (["train-encoder", "--dataset", "{root}/raw",
                                                                  "--modality", "speech", "--backbone",
                                                                  "microsoft/wavlm-base-plus", "--output-dir", "{out}"],
                                                                 "microsoft/wavlm-base-plus", "HF_HUB_OFFLINE"),
    "LoRA targets matching nothing (train-encoder)": (["train-encoder", "--dataset", "{root}/raw", "--modality",
                                                       "text", "--lora-targets", "nosuchmodule", "--output-dir",
                                                       "{out}"], "nosuchmodule", "--lora-targets"),
    "not a pickle (prepare cosmic)": (["prepare", "cosmic", "{root}/not-a-pickle.pkl", "{out}", "--trust-pickle"],
                                      "not-a-pickle.pkl", "not a readable pickle"),
    "CSV in a folder that does not exist (predict)": (["predict", "--model", "{root}/model", "{root}/hello.json",
                                                       "--csv", "{root}/no-folder/timeline.csv"], "no-folder",
                                                      "does not exist"),
    "plot in a format it cannot be drawn in (predict)": (["predict", "--model", "{root}/model", "{root}/hello.json",
                                                          "--plot", "{root}/timeline.txt"], "timeline.txt", "by its suffix"),
    "CSV where no file can be made (predict)": (["predict", "--model", "{root}/model", "{root}/hello.json", "--csv",
                                                 "/proc/timeline.csv"], "/proc", "takes no new files"),
    "plan onto a folder": (["plan", "--json", "{root}"], "--json", "is a folder"),
    "plot onto a folder (predict)": (["predict", "--model", "{root}/model", "{root}/hello.json", "--plot", "{root}"],
                                     "--plot", "is a folder"),
    "output folder is a file (train)": (["train", "--recipe", "small", "--dataset", "{root}/embedded", "--output-dir",
                                         "{root}/hello.json"], "hello.json", "is a file, not a folder"),
    "output folder is a file (quickstart)": (["quickstart", "--output-dir", "{root}/hello.json"], "hello.json",
                                             "is a file, not a folder"),
    "a device that cannot compute (predict)": (["predict", "--model", "{root}/model", "{root}/hello.json", "--device",
                                                "meta"], "--device", "not a device this machine can compute on"),
    "NaN in a test embedding (evaluate)": (["evaluate", "--model", "{root}/stage-2", "--dataset", "{root}/nan-test",
                                            "--output-dir", "{out}"], "test0", "non-finite"),
    "labels not the model's (evaluate)": (["evaluate", "--model", "{root}/stage-2", "--dataset", "{root}/other-labels",
                                           "--output-dir", "{out}"], "emotion_2", "labels"),
    "embeddings of another width (evaluate)": (["evaluate", "--model", "{root}/stage-2", "--dataset", "{root}/wide",
                                                "--output-dir", "{out}"], "speech_embeds are 9-d", "6-d"),
    "no such split (evaluate)": (["evaluate", "--model", "{root}/stage-2", "--dataset", "{root}/embedded", "--split",
                                  "dev", "--output-dir", "{out}"], "dev", "splits"),
    "batch size 0 (evaluate)": (["evaluate", "--model", "{root}/stage-2", "--dataset", "{root}/embedded",
                                 "--batch-size", "0", "--output-dir", "{out}"], "--batch-size", "positive"),
    "drop probability above 1 (evaluate)": (["evaluate", "--model", "{root}/stage-2", "--dataset", "{root}/embedded",
                                             "--probabilities", "1.5", "--output-dir", "{out}"], "--probabilities",
                                            "[0, 1]"),
    "output folder is a file (evaluate)": (["evaluate", "--model", "{root}/stage-2", "--dataset", "{root}/embedded",
                                            "--output-dir", "{root}/hello.json"], "hello.json", "file"),
    "shard size 0 (extract)": (["extract", "--dataset", "{root}/embedded", "--model", "{root}/model", "--shard-size",
                                "0", "--output-dir", "{out}"], "--shard-size", "positive"),
    "stage-2 model, no embeddings (evaluate)": (["evaluate", "--model", "{root}/stage-2", "--dataset",
                                                 "{root}/raw", "--output-dir", "{out}"], "extract", "stage-2"),
    "a backbone in a recipe (train)": (["train", "--recipe", "small", "--set", "text_config={{model_type: bert}}",
                                        "--dataset", "{root}/embedded", "--output-dir", "{out}", "--seeds", "0"],
                                       "config.text_config", "random weights"),
    "recipe without a dataset (train)": (["train", "--recipe", "{root}/bare.yaml", "--output-dir", "{out}"],
                                         "--dataset", "bare.yaml"),
    "a split saved empty (train)": (["train", "--recipe", "small", "--dataset", "{root}/empty-split", "--output-dir",
                                     "{out}", "--seeds", "0"], "empty-split", "no rows"),
    "a split saved empty (evaluate)": (["evaluate", "--model", "{root}/stage-2", "--dataset", "{root}/empty-split",
                                        "--output-dir", "{out}"], "empty-split", "no rows"),
    "no GPU in the plan (plan)": (["plan", "--gpus", "0"], "--gpus", "positive"),
    "a dialogue id twice in a split (evaluate)": (["evaluate", "--model", "{root}/stage-2", "--dataset",
                                                   "{root}/same-id", "--output-dir", "{out}"], "split 'test'",
                                                  "dialogue 'test0' appears twice"),
    "a dialogue id twice in a split (train)": (["train", "--recipe", "small", "--dataset", "{root}/same-id",
                                                "--output-dir", "{out}", "--seeds", "0"], "split 'test'",
                                               "dialogue 'test0' appears twice"),
    "an utterance id twice in a dialogue (train)": (["train", "--recipe", "small", "--dataset",
                                                     "{root}/utterance-twice", "--output-dir", "{out}", "--seeds",
                                                     "0"], "split 'train': dialogue 'train0'", "appears twice"),
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


def test_evaluate_into_a_model_folder_that_takes_no_files_says_to_pass_output_dir(root, tmp_path, capsys):
    """The default report folder is inside the model folder (MODEL/evaluation/SPLIT), which may be read-only or another
    user's: refused before the data is read, saying what to do, where the write failed after the predictions with an
    errno line. As root, permissions do not bind: `evaluation` a file is a folder that takes no files too."""
    model = tmp_path / "stage-2"
    shutil.copytree(root / "stage-2", model)
    (model / "evaluation").write_text("")
    blocked = [(model, model / "evaluation", "Not a directory")]
    if os.geteuid() != 0:
        shutil.copytree(root / "stage-2", tmp_path / "read-only")
        (tmp_path / "read-only").chmod(0o555)
        blocked.append((tmp_path / "read-only", tmp_path / "read-only", "Permission denied"))
    for model, folder, reason in blocked:
        capsys.readouterr()
        assert main(["evaluate", "--model", str(model), "--dataset", str(tmp_path / "no-data")]) == 2  # before reading
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and f"{folder} takes no new files ({reason})" in error, error
        assert "pass --output-dir" in error, error
    assert (tmp_path / "stage-2" / "evaluation").is_file() and not list(tmp_path.rglob("*.probe"))


def test_debug_gives_the_traceback_instead(root):
    with pytest.raises(OSError, match="truncated"):
        main(["--debug", "predict", "--model", str(root / "truncated"), str(root / "hello.json")])


def test_a_folder_of_the_other_model_or_without_config_is_refused_in_python(root, tmp_path):
    """What `from_pretrained` would otherwise load with random weights (a stage-1 encoder as a conversation model, the
    auto class `pipeline` uses) or fail on deep inside transformers (no config.json) is one clear error."""
    from transformers import AutoModel

    from mister_e import MisterEForUtteranceClassification

    MisterEForUtteranceClassification(tiny_model().config).save_pretrained(tmp_path / "stage-1")
    for load in (AutoModel.from_pretrained, MisterEForEmotionRecognition.from_pretrained):
        with pytest.raises(ValueError, match="holds a MisterEForUtteranceClassification.*from_stages"):
            load(tmp_path / "stage-1")
    with pytest.raises(ValueError, match="holds a MisterEForEmotionRecognition"):
        MisterEForUtteranceClassification.from_pretrained(root / "model")
    shutil.copytree(root / "model", tmp_path / "no-config")
    (tmp_path / "no-config" / "config.json").unlink()
    with pytest.raises(OSError, match="No config.json in .*no-config"):
        MisterEForEmotionRecognition.from_pretrained(tmp_path / "no-config")
    model, info = MisterEForEmotionRecognition.from_pretrained(root / "model", output_loading_info=True)
    assert not info["missing_keys"] and isinstance(model, MisterEForEmotionRecognition)


def test_a_reader_that_stops_early_is_no_error(root):
    """`mister-e predict ... | head`: the closed pipe ends the command quietly, with a shell's SIGPIPE status."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "mister_e.cli", "predict", "--model", str(root / "model"),
                                str(root / "hello.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before anything is written
    assert process.wait(timeout=300) == 141
    assert process.stderr.read().decode().strip() == ""
