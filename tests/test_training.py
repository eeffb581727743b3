"""Training: the collator, stage-2 and stage-1 Trainer runs, accumulation, resumption, evaluation, seeds, recipes."""

from __future__ import annotations

import csv
import errno
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers
from datasets import Dataset, DatasetDict, List, Value, concatenate_datasets, load_from_disk
from safetensors.torch import load_file
from transformers import BertConfig, BertModel, BertTokenizerFast, TrainerCallback, Wav2Vec2FeatureExtractor
from transformers.testing_utils import CaptureLogger

from mister_e import MisterEConfig, MisterEForEmotionRecognition, MisterEForUtteranceClassification
from mister_e.assembly import conversation_fingerprint, folder_kind
from mister_e.configuration_mister_e import EXPERTS
from mister_e.experts_mister_e import mix_experts
from mister_e.data import make_dialogue_dataset
from mister_e.data.checks import check_experts_can_answer, check_finite_embeddings
from mister_e.data.schema import embedding_feature
from mister_e.data.splits import warn_of_shared_dialogues
from mister_e.evaluation import REPORT_FILES, load_erc_metric
from mister_e.cli import main
from mister_e.processing_mister_e import MisterEProcessor
from mister_e.recipes import parse_sets
from mister_e.training.checkpoints import BEST_WEIGHTS
from mister_e.training.stage_two import warn_of_unseen_classes
import mister_e.training.evaluate as evaluate_module
import mister_e.training.trainer as trainer_module
from mister_e.training.trainer import data_config
from mister_e.training import (
    ABLATIONS,
    MisterEDataCollator,
    apply_ablation,
    build_trainer,
    drop_modalities,
    evaluate_model,
    flatten_utterances,
    load_recipe,
    predict_split,
    train_conversation_model,
    train_encoder,
    train_seeds,
    useful_modality_dropout,
)

from tiny import tiny_sizes

LABELS = ["calm", "happy", "sad", "angry"]
SPEECH_DIM, TEXT_DIM = 10, 6
SIZES = tiny_sizes(layers=2, attention_dim=6)
# Fast settings: the paper's lr 1e-5 over 100 epochs would take too long here.
FAST = dict(learning_rate=3e-3, num_train_epochs=2, disable_tqdm=True, use_cpu=True)
WORDS = ["hello", "world", "yes", "no", "oh", "okay", "really", "fine"]


def conversations(count: int, seed: int, prefix: str, lengths=(3, 8), missing: bool = False) -> list[dict]:
    """Conversations whose label is the argmax of a fixed projection of the text embedding plus half the previous
    utterance's score (context). Speech embeddings are noise; with `missing`, the first utterance lacks speech and
    the last lacks text."""
    projection = np.random.default_rng(123).standard_normal((len(LABELS), TEXT_DIM))
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        size = int(rng.integers(*lengths))
        text = rng.standard_normal((size, TEXT_DIM)).astype(np.float32)
        scores = text @ projection.T
        scores[1:] += 0.5 * scores[:-1]
        rows.append(dict(
            dialogue_id=f"{prefix}{index}", labels=scores.argmax(1).tolist(),
            speakers=[("A", "B")[i % 2] for i in range(size)],
            texts=[" ".join(rng.choice(WORDS, 3)) for _ in range(size)],
            text_embeds=list(text), speech_embeds=list(rng.standard_normal((size, SPEECH_DIM)).astype(np.float32)),
        ))  # fmt: skip
        if missing:
            rows[-1]["speech_embeds"][0] = rows[-1]["text_embeds"][-1] = None
    return rows


def dialogues(count: int, seed: int, prefix: str, lengths=(3, 8)):
    return make_dialogue_dataset(conversations(count, seed, prefix, lengths), LABELS)


def corpus(train=32, validation=12, test=12, **kwargs) -> DatasetDict:
    return DatasetDict(
        train=dialogues(train, 0, "train", **kwargs),
        validation=dialogues(validation, 1, "validation", **kwargs),
        test=dialogues(test, 2, "test", **kwargs),
    )


@pytest.fixture(scope="module")
def data() -> DatasetDict:
    return corpus()


@pytest.fixture(scope="module")
def tokenizer():
    # a vocabulary dict: transformers 5 ignores `vocab_file=` here, leaving only the special tokens (every word [UNK])
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizerFast(vocab={token: index for index, token in enumerate(tokens)})


@pytest.fixture(scope="module")
def processor(tokenizer):
    return MisterEProcessor(Wav2Vec2FeatureExtractor(return_attention_mask=True), tokenizer)


# --- collator ------------------------------------------------------------------------------------------------------


def test_collator_pads_embeddings_and_masks():
    rows = conversations(2, 0, "d", lengths=(3, 6), missing=True)
    lengths = [len(row["labels"]) for row in rows]
    batch = MisterEDataCollator()(rows)

    assert set(batch) == {"attention_mask", "modality_mask", "labels", "speech_embeds", "text_embeds"}
    assert batch["speech_embeds"].shape == (2, max(lengths), SPEECH_DIM)
    assert batch["speech_embeds"].dtype == torch.float32
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for b, (row, size) in enumerate(zip(rows, lengths)):
        assert batch["labels"][b, :size].tolist() == row["labels"] and (batch["labels"][b, size:] == -100).all()
        assert batch["modality_mask"][b, :size, 0].tolist() == [False] + [True] * (size - 1)
        assert batch["modality_mask"][b, :size, 1].tolist() == [True] * (size - 1) + [False]
        assert not batch["modality_mask"][b, size:].any()
        expected = torch.tensor(np.stack(row["text_embeds"][:-1]))
        torch.testing.assert_close(batch["text_embeds"][b, : size - 1], expected)
        assert (batch["speech_embeds"][b, 0] == 0).all() and (batch["speech_embeds"][b, size:] == 0).all()

    complete = conversations(2, 0, "d", lengths=(3, 6))
    text_only = MisterEDataCollator(modalities=("text",))(complete)
    assert "speech_embeds" not in text_only and not text_only["modality_mask"][..., 0].any()
    assert text_only["modality_mask"][..., 1].equal(text_only["attention_mask"].bool())
    with pytest.raises(ValueError, match="none of the columns"):  # the last utterance has speech only
        MisterEDataCollator(modalities=("text",))(rows)


def test_collator_reads_raw_rows_through_the_processor(processor, tmp_path):
    sf.write(tmp_path / "a.wav", np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1, 16000)
    rows = [
        {"dialogue_id": "x", "texts": ["hello world", None, "no"], "audio": [str(tmp_path / "a.wav")] * 3,
         "labels": [0, 1, -1], "speakers": ["A", "B", "A"]},
        {"dialogue_id": "y", "texts": ["yes"], "audio": [None], "labels": [2], "speakers": ["B"]},
    ]  # fmt: skip
    batch = MisterEDataCollator(processor)(rows)
    assert "speakers" not in batch and batch["input_values"].shape[0] == 3 and batch["input_ids"].shape[0] == 3
    assert batch["modality_mask"].tolist() == [
        [[True, True], [True, False], [True, True]],
        [[False, True], [False, False], [False, False]],
    ]
    assert batch["labels"].tolist() == [[0, 1, -100], [2, -100, -100]]
    text_only = MisterEDataCollator(processor, modalities=("text",))([rows[1]])
    assert "input_values" not in text_only and text_only["input_ids"].shape[0] == 1


@pytest.mark.parametrize("experts, expected", [
    (["speech", "text", "cross_modal"], (0.2, 0.2)),
    (["text"], (0.0, 0.0)),           # no expert reads speech, and none could answer without text
    (["speech"], (0.0, 0.0)),
    (["cross_modal"], (0.0, 0.0)),    # it needs both: any drop only deletes a training utterance
    (["speech", "cross_modal"], (0.0, 0.2)),  # without text, the speech expert still answers
    (["text", "cross_modal"], (0.2, 0.0)),
])
def test_modality_dropout_only_where_an_expert_can_still_answer(experts, expected):
    assert useful_modality_dropout(0.2, experts) == expected
    presence = np.ones((4000, 2), dtype=bool)
    dropped = drop_modalities(presence, *useful_modality_dropout(0.2, experts), np.random.default_rng(0))
    speech_kept, text_kept = dropped[:, 0].all(), dropped[:, 1].all()
    assert (speech_kept, text_kept) == (expected[0] == 0, expected[1] == 0)  # nothing dropped at probability 0


def test_predict_split_returns_each_real_utterance_once_in_order(data):
    """Batches pad conversations to the longest; the predictions keep real utterances only, in the split's order, and
    equal the model's forward on each conversation alone."""
    split = data["validation"].select(range(5))
    model = MisterEForEmotionRecognition(MisterEConfig(**SIZES, speech_embed_dim=SPEECH_DIM, text_embed_dim=TEXT_DIM,
                                                       num_labels=len(LABELS))).eval()
    predicted = predict_split(model, split, MisterEDataCollator(), batch_size=2)
    lengths = [len(labels) for labels in split["labels"]]
    assert len(set(lengths)) > 1 and predicted["logits"].shape == (sum(lengths), len(LABELS))
    np.testing.assert_array_equal(predicted["labels"], np.concatenate(split["labels"]))
    assert list(predicted["dialogue_ids"]) == [d for d, n in zip(split["dialogue_id"], lengths) for _ in range(n)]
    alone = predict_split(model, split.select([1]), MisterEDataCollator(), batch_size=1)
    start = lengths[0]
    for key in ("logits", "expert_logits"):
        np.testing.assert_allclose(predicted[key][start:start + lengths[1]], alone[key], rtol=1e-5, atol=1e-5)
    # Each expert's logits are returned too, and the gate's weights over them give the mixture.
    assert predicted["expert_logits"].shape == (sum(lengths), len(EXPERTS), len(LABELS))
    mixture = mix_experts(model.config.mixture_space, torch.from_numpy(predicted["gate_weights"]),
                          torch.from_numpy(predicted["expert_logits"]))
    np.testing.assert_allclose(mixture.numpy(), predicted["logits"], rtol=1e-5, atol=1e-5)


def test_classes_without_a_training_utterance_are_named(data):
    config = MisterEConfig(**SIZES, speech_embed_dim=SPEECH_DIM, text_embed_dim=TEXT_DIM, num_labels=len(LABELS),
                           id2label=dict(enumerate(LABELS)))
    first_class_only = data["train"].map(lambda row: {"labels": [0] * len(row["labels"])})
    with CaptureLogger(transformers.logging.get_logger("mister_e.training.stage_two")) as captured:
        warn_of_unseen_classes(config, data["train"])
    assert captured.out == ""
    with CaptureLogger(transformers.logging.get_logger("mister_e.training.stage_two")) as captured:
        warn_of_unseen_classes(config, first_class_only)
    assert all(name in captured.out for name in LABELS[1:]) and LABELS[0] not in captured.out


def test_a_split_no_enabled_expert_can_answer_is_refused(data):
    """Speech alone still serves the speech expert; the text expert alone has nothing to read without text."""
    check_experts_can_answer(["speech", "text", "cross_modal"], data["train"], ["speech"])
    with pytest.raises(ValueError, match="No enabled expert"):
        check_experts_can_answer(["text"], data["train"], ["speech"])
    with pytest.raises(ValueError, match="No enabled expert"):
        check_experts_can_answer(["text", "cross_modal"], data["train"].remove_columns("text_embeds"))


def test_an_utterance_no_expert_can_read_is_refused_before_training(tmp_path):
    """Utterance by utterance and in every split: a validation utterance without text, under a text-only model, was
    predicted as class 0 and counted in the scores that select the model, and only the test report refused it, after
    every epoch had run. Embedding rows and raw rows (a blank text is no text) are read alike."""
    rows = {split: conversations(3, seed, split, missing=True) for seed, split in enumerate(("train", "validation"))}
    data = DatasetDict({split: make_dialogue_dataset(part, LABELS) for split, part in rows.items()})
    check_experts_can_answer(["speech", "text", "cross_modal"], data)  # each utterance keeps one modality
    with pytest.raises(ValueError, match=r"split 'train': dialogue 'train0': utterance 'train0_\d+' lacks every "
                                         r"modality an enabled expert reads \(3 such utterances"):
        check_experts_can_answer(["text"], data)
    with pytest.raises(ValueError, match="split 'validation'.*'validation0'"):
        train_conversation_model(DatasetDict(train=dialogues(4, 0, "t"), validation=data["validation"]), tmp_path,
                                 {**SIZES, "experts": ["text"]}, FAST, report=False)
    assert not (tmp_path / "run.json").exists() and not list(tmp_path.glob("checkpoint-*"))
    raw = [{**row, "texts": ["  "] + row["texts"][1:]} for row in conversations(2, 0, "r")]
    for row in raw:
        del row["speech_embeds"], row["text_embeds"]
    with pytest.raises(ValueError, match="dialogue 'r0': utterance 'r0_0' lacks every modality"):
        check_experts_can_answer(["text"], make_dialogue_dataset(raw, LABELS), raw=True)


def test_a_validation_split_without_labels_is_refused_before_training(tmp_path):
    """Every label missing (-1, as `datasets` marks it): refused after the first epoch, naming no split."""
    data = corpus(train=3, validation=2, test=2)
    unlabelled = data["validation"].map(lambda row: {"labels": [-1] * len(row["labels"])})
    with pytest.raises(ValueError, match="split 'validation' has no labelled utterance"):
        train_conversation_model(DatasetDict({**data, "validation": unlabelled}), tmp_path, SIZES, FAST, report=False)
    assert not list(tmp_path.iterdir())


def test_splits_that_disagree_with_train_are_refused_before_training(tmp_path):
    """Splits built apart: validation's classes in another order scored every epoch against the wrong names (exit 0
    without a test split), and a wider test embedding failed inside the model only after the last epoch."""
    data = corpus(train=3, validation=2, test=2)
    reordered = [{**row, "labels": [LABELS[label] for label in row["labels"]]} for row in conversations(2, 1, "v")]
    renamed = DatasetDict(train=data["train"], validation=make_dialogue_dataset(reordered, LABELS[::-1]))
    with pytest.raises(ValueError, match=re.escape(f"split 'validation': its labels are {LABELS[::-1]}, the train "
                                                   f"split's {LABELS}")):
        train_conversation_model(renamed, tmp_path, SIZES, FAST, report=False)
    wider = [{**row, "text_embeds": [np.append(vector, 0) for vector in row["text_embeds"]]}
             for row in conversations(2, 2, "w")]
    with pytest.raises(ValueError, match=f"split 'test': dialogue 'w0': text_embeds mixes sizes {TEXT_DIM} and "
                                         f"{TEXT_DIM + 1} \\(split 'train' has"):
        train_conversation_model(DatasetDict({**data, "test": make_dialogue_dataset(wider, LABELS)}), tmp_path,
                                 SIZES, FAST)
    with pytest.raises(ValueError, match="split 'validation': its labels"):
        train_encoder(renamed, "text", tmp_path, None, backbone="unused")
    assert not list(tmp_path.iterdir())
    # Saved as plain `save_to_disk`, one split can mix widths too: `evaluate` failed with torch's broadcast error.
    mixed = data["test"].map(lambda row, index: {"text_embeds": [list(v) + [0.0] * (index == 1)
                                                                 for v in row["text_embeds"]]}, with_indices=True)
    model = MisterEForEmotionRecognition(MisterEConfig(**SIZES, speech_embed_dim=SPEECH_DIM, text_embed_dim=TEXT_DIM,
                                                       id2label=dict(enumerate(LABELS))))
    with pytest.raises(ValueError, match=f"dialogue 'test1': text_embeds mixes sizes {TEXT_DIM} and {TEXT_DIM + 1};"):
        evaluate_model(model, mixed, tmp_path / "report", robustness=False)


def test_a_stage_one_split_without_the_modality_is_refused_before_training(data, tmp_path):
    """Blank texts are left out of text stage 1: a validation split of blank texts only failed after the first epoch,
    with Trainer's KeyError for the missing metric."""
    blank = data["validation"].map(lambda row: {"texts": [" "] * len(row["labels"])})
    with pytest.raises(ValueError, match="split 'validation' has no labelled utterance with text"):
        train_encoder(DatasetDict(train=data["train"], validation=blank), "text", tmp_path, None, backbone="unused")
    assert not list(tmp_path.iterdir())


def test_a_dialogue_in_train_and_test_is_named(data):
    """A test dialogue that repeats a training one scores memory; no other check would tell."""
    logger = transformers.logging.get_logger("mister_e.data.splits")
    with CaptureLogger(logger) as captured:
        warn_of_shared_dialogues(data)
    assert captured.out == ""
    with CaptureLogger(logger) as captured:
        warn_of_shared_dialogues(DatasetDict({**data, "test": concatenate_datasets([data["test"],
                                                                                    data["train"].select([2])])}))
    assert "1 of the 13 test dialogues repeat a training dialogue" in captured.out and "'train2'" in captured.out


def test_experts_never_given_their_modality_are_left_out_of_the_model(tmp_path):
    """Trained on text alone (fed so, or the data has no speech), the speech and cross-modal experts never train; kept,
    they took two thirds of the gate as soon as `evaluate` or the pipeline gave them speech."""
    data = corpus(train=4, validation=2, test=2)
    logger = transformers.logging.get_logger("mister_e.training.stage_two")
    for name, dataset, modalities in (("fed", data, ["text"]), ("data", data.remove_columns("speech_embeds"),
                                                                  ["speech", "text"])):
        with CaptureLogger(logger) as captured:
            results = train_conversation_model(dataset, tmp_path / name, SIZES, FAST, modalities=modalities,
                                               report=False)
        assert "speech, cross_modal expert(s) would never be given" in captured.out
        assert results["config"]["experts"] == ["text"]
        model = MisterEForEmotionRecognition.from_pretrained(tmp_path / name)
        assert model.config.experts == ["text"] and model.speech_expert is None and model.cross_modal_expert is None
    with pytest.raises(ValueError, match="speech expert.*would never be given"):
        train_conversation_model(data, tmp_path / "given", SIZES, FAST, modalities=["text"], report=False,
                                 model=MisterEForEmotionRecognition(MisterEConfig(
                                     **SIZES, speech_embed_dim=SPEECH_DIM, text_embed_dim=TEXT_DIM,
                                     num_labels=len(LABELS), experts=["speech", "text"])))


def test_stage_one_leaves_out_blank_texts_as_the_collator_does():
    """A text of spaces is no text (README, collator, extraction); stage 1 kept it and the collator then refused its
    row as lacking the column."""
    rows = conversations(2, 0, "b", lengths=(3, 4))
    rows[0]["texts"][1] = "   "
    flattened = flatten_utterances(make_dialogue_dataset(rows, LABELS), "text")
    assert len(flattened) == sum(len(row["labels"]) for row in rows) - 1
    assert "b0_1" not in [ids[0] for ids in flattened["utterance_ids"]]
    assert all(text.strip() for texts in flattened["texts"] for text in texts)


def test_drop_modalities_never_empties_an_utterance():
    presence = np.array([[True, True]] * 2000 + [[True, False], [False, True]])
    assert (drop_modalities(presence, 1.0, 0.0, np.random.default_rng(0))[:2000] == [False, True]).all()
    either = drop_modalities(presence, 0.6, 0.6, np.random.default_rng(0))
    assert either.any(-1).all() and (either[-2:] == presence[-2:]).all()
    lost_speech, lost_text = (~either[:2000]).mean(0)
    assert abs(lost_speech - 0.3) < 0.05 and abs(lost_text - 0.3) < 0.05
    # Same seed: the utterances hit at a small p are hit again at a larger one.
    small, large = (drop_modalities(presence, p, 0.0, np.random.default_rng(1)) for p in (0.2, 0.7))
    assert (~small[:, 0] <= ~large[:, 0]).all()
    collated = MisterEDataCollator(modality_dropout=1.0, seed=0)(conversations(3, 0, "d"))
    real = collated["attention_mask"].bool()
    assert (collated["modality_mask"][real].sum(-1) == 1).all()


# --- stage 2 -------------------------------------------------------------------------------------------------------


def test_trainer_learns_a_learnable_task(data, tmp_path, capsys):
    capsys.readouterr()
    results = train_conversation_model(data, tmp_path, SIZES, {**FAST, "num_train_epochs": 6, "checkpoint_budget": 0},
                                       seed=0, keep_checkpoints=True)
    printed = capsys.readouterr()  # calm output: a line per epoch, no raw log dictionaries, no bar off a terminal
    epochs = [line for line in printed.err.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == [f"epoch {n}/6" for n in range(1, 7)], printed.err
    assert all("validation weighted f1" in line and "(best " in line for line in epochs)
    assert "{'" not in printed.out + printed.err  # no raw log dictionaries
    # No training bar off a terminal, and checkpoints save without a bar: transformers' own bar for the final save of
    # the selected model is the only one left (the CLI turns that off too).
    assert all("Writing model shards" in bar for bar in re.split(r"[\r\n]", printed.err) if "it/s" in bar)
    assert printed.err.count("Writing model shards: 100%") <= 1  # 0 after a CLI test in this process turned it off

    references = np.concatenate(data["validation"]["labels"])
    majority = np.full_like(references, np.bincount(references).argmax())
    majority_f1 = load_erc_metric().compute(predictions=majority, references=references)["weighted_f1"]
    chance = max(majority_f1, 1 / len(LABELS))
    assert results["validation"]["weighted_f1"] > chance + 0.2, (results["validation"], chance)

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seed"] == 0 and set(saved["test"]) >= {"weighted_f1", "macro_f1", "accuracy", "unweighted_recall",
                                                         "f1_calm"}
    assert saved["config"]["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "test" / "predictions.csv").is_file()
    state = json.loads((tmp_path / "checkpoint-24" / "trainer_state.json").read_text())
    evals = [log["eval_weighted_f1"] for log in state["log_history"] if "eval_weighted_f1" in log]
    assert len(evals) == 6 and state["best_metric"] == max(evals) == results["validation"]["weighted_f1"]
    reloaded = MisterEForEmotionRecognition.from_pretrained(tmp_path)
    assert reloaded.config.speech_embed_dim == SPEECH_DIM and reloaded.config.num_labels == len(LABELS)


def test_length_grouped_batches_pad_as_little_as_sorting_does(data, tmp_path):
    """`train_sampling_strategy=group_by_length`: Trainer's sampler, fed the dialogue lengths from the label column."""
    collator = MisterEDataCollator()
    trainer = build_trainer(MisterEForEmotionRecognition(MisterEConfig(**SIZES, speech_embed_dim=SPEECH_DIM,
                            text_embed_dim=TEXT_DIM, num_labels=len(LABELS))), data, tmp_path, collator,
                            {**FAST, "train_sampling_strategy": "group_by_length", "per_device_train_batch_size": 4})
    batches = list(trainer.get_train_dataloader())
    for batch in batches:  # Trainer's sampler sorts each mega-batch by length, then cuts it into batches
        lengths = batch["attention_mask"].sum(1).tolist()
        assert lengths == sorted(lengths, reverse=True)
    slots = sum(batch["labels"].numel() for batch in batches)
    shuffled = build_trainer(trainer.model, data, tmp_path, collator, {**FAST, "per_device_train_batch_size": 4})
    assert sum(batch["labels"].numel() for batch in shuffled.get_train_dataloader()) > slots
    evaluation = [batch["attention_mask"].sum(1).tolist() for batch in trainer.get_eval_dataloader()]
    assert sum(evaluation, []) == [len(labels) for labels in data["validation"]["labels"]]  # in order, not grouped
    results = train_conversation_model(data, tmp_path / "run", SIZES, {**FAST, "train_sampling_strategy":
                                       "group_by_length"}, report=False)  # evaluates each epoch (it failed there)
    assert 0 <= results["validation"]["weighted_f1"] <= 1


def test_a_run_folder_named_with_a_tilde_is_one_folder(data, tmp_path, monkeypatch):
    """TrainingArguments reads a leading `~` as the home folder, pathlib does not: the model of `~/run` went to
    `./~/run` and its checkpoints and results.json to the home folder's `run`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    model = MisterEForEmotionRecognition(MisterEConfig(**SIZES, speech_embed_dim=SPEECH_DIM, text_embed_dim=TEXT_DIM,
                                                       num_labels=len(LABELS)))
    trainer = build_trainer(model, data, "~/run", MisterEDataCollator(), FAST)
    assert trainer.args.output_dir == str(tmp_path / "~" / "run")


def test_stage_two_trains_under_cpu_bfloat16_autocast(data, tmp_path):
    model = MisterEForEmotionRecognition(MisterEConfig(**SIZES, speech_embed_dim=SPEECH_DIM, text_embed_dim=TEXT_DIM,
                                                       num_labels=len(LABELS)))
    autocast = []
    model.text_expert.register_forward_pre_hook(lambda *_: autocast.append(torch.is_autocast_enabled("cpu")))
    training = {**{key: value for key, value in FAST.items() if key != "use_cpu"}, "num_train_epochs": 1, "bf16": True}
    results = train_conversation_model(data, tmp_path, training_overrides=training, model=model, report=False)
    assert autocast and all(autocast)  # training and validation steps
    model = MisterEForEmotionRecognition.from_pretrained(tmp_path)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: the weights stay fp32
    assert 0.0 <= results["validation"]["weighted_f1"] <= 1.0


class _LossLog(TrainerCallback):
    def __init__(self, key="loss"):
        self.key, self.losses = key, []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.key in logs:
            self.losses.append(logs[self.key])


def test_gradient_accumulation_keeps_the_loss_scale(tmp_path):
    # Equal lengths, no dropout and no SupCon (whose positives span the whole batch): a micro-batch mean is then a
    # plain share of the full-batch mean. SGD without clipping, so the step is the gradient itself (Adam's first step
    # is scale-free and would hide a scale error).
    data = corpus(train=4, validation=2, test=2, lengths=(5, 6))
    config = {**SIZES, "supcon_weight": 0.0, "attention_dropout": 0.0, "residual_dropout": 0.0}
    one_step = dict(max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=0.0, eval_strategy="no",
                    save_strategy="no", load_best_model_at_end=False, logging_strategy="steps", logging_steps=1,
                    disable_tqdm=True, use_cpu=True)
    weights, losses = {}, {}
    for name, batch, steps in (("full", 4, 1), ("accumulated", 2, 2)):
        log = _LossLog()
        train_conversation_model(data, tmp_path / name, config, {**one_step, "per_device_train_batch_size": batch,
                                 "gradient_accumulation_steps": steps}, callbacks=[log], report=False)
        weights[name], losses[name] = load_file(tmp_path / name / "model.safetensors"), log.losses
    torch.manual_seed(0)
    initial = MisterEForEmotionRecognition(MisterEConfig(**config, speech_embed_dim=SPEECH_DIM,
                                                         text_embed_dim=TEXT_DIM, num_labels=len(LABELS)))
    moved = [k for k, v in initial.state_dict().items() if not torch.allclose(v, weights["full"][k])]
    assert moved, "the step changed nothing"
    for key in weights["full"]:
        torch.testing.assert_close(weights["accumulated"][key], weights["full"][key], rtol=1e-4, atol=1e-6)
    assert losses["accumulated"] == pytest.approx(losses["full"], rel=1e-4)


def test_clipping_inside_the_fused_optimizer_step_equals_trainers_clipping(tmp_path, monkeypatch):
    # A max norm far below the gradients' so that every step clips; Trainer's own clipping with the unfused AdamW is
    # the reference (the same update, one tensor at a time).
    data = corpus(train=8, validation=2, test=2)
    steps = dict(max_steps=3, learning_rate=1e-2, weight_decay=0.01, max_grad_norm=1e-3, eval_strategy="no",
                 save_strategy="no", load_best_model_at_end=False, logging_strategy="steps", logging_steps=1,
                 per_device_train_batch_size=4, disable_tqdm=True, use_cpu=True)
    calls = []
    original = trainer_module.clip_into_fused_step
    monkeypatch.setattr(trainer_module, "clip_into_fused_step", lambda *args: calls.append(1) or original(*args))
    weights, norms = {}, {}
    for optim in ("adamw_torch", "adamw_torch_fused"):
        log = _LossLog(key="grad_norm")
        train_conversation_model(data, tmp_path / optim, SIZES, {**steps, "optim": optim}, callbacks=[log],
                                 report=False)
        weights[optim], norms[optim] = load_file(tmp_path / optim / "model.safetensors"), log.losses
    assert len(calls) == 3  # the fused run's steps, and only those
    assert norms["adamw_torch_fused"] == pytest.approx(norms["adamw_torch"], rel=1e-5) and min(norms["adamw_torch"]) > 1e-2
    for key, value in weights["adamw_torch"].items():
        torch.testing.assert_close(weights["adamw_torch_fused"][key], value, rtol=1e-5, atol=1e-6)


def test_cpu_training_keeps_freed_memory_for_reuse(data, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "reuse_freed_memory", lambda: calls.append(1))
    collator = MisterEDataCollator()
    build_trainer(MisterEForEmotionRecognition(MisterEConfig(**SIZES, speech_embed_dim=SPEECH_DIM,
                  text_embed_dim=TEXT_DIM, num_labels=len(LABELS))), data, tmp_path, collator, FAST)
    assert calls == [1]
    # In a fresh process: a 20 MB block is mapped from the system (and unmapped when freed) until glibc is told.
    script = textwrap.dedent("""
        import ctypes, torch
        from mister_e.utils import reuse_freed_memory
        class Info(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in
                        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Info
        def mapped_while_held():
            block = torch.empty(5_000_000)
            return libc.mallinfo2().hblkhd >= 20_000_000
        print(mapped_while_held(), reuse_freed_memory(), mapped_while_held())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    if "mallinfo2" in result.stderr or "libc.so.6" in result.stderr:
        pytest.skip("not glibc >= 2.33")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True", "False"]


class _Crash(RuntimeError):
    pass


class _CrashAfter(TrainerCallback):
    """Stops training with `_Crash` right after step `step` is saved (or, `on="step_end"`, right after it is taken)."""

    def __init__(self, step, on="save"):
        self.step, self.on = step, on

    def on_save(self, args, state, control, **kwargs):
        self._crash("save", state)

    def on_step_end(self, args, state, control, **kwargs):
        self._crash("step_end", state)

    def _crash(self, event, state):
        if event == self.on and state.global_step == self.step:
            raise _Crash(f"simulated crash after step {self.step} ({event})")


class _Steps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    # Dropout stays on: resuming must restore the random state as well as weights, optimiser and data order.
    data = corpus(train=8, validation=4, test=2)
    training = {**FAST, "num_train_epochs": 3, "per_device_train_batch_size": 2, "eval_strategy": "steps",
                "save_strategy": "steps", "eval_steps": 3, "save_steps": 3, "checkpoint_budget": 0}
    train_conversation_model(data, tmp_path / "straight", SIZES, training, seed=3, report=False, keep_checkpoints=True)
    with pytest.raises(_Crash):  # step 6 is the middle of the second epoch
        train_conversation_model(data, tmp_path / "resumed", SIZES, training, seed=3, callbacks=[_CrashAfter(6)])
    assert not (tmp_path / "resumed" / "results.json").exists()
    steps = _Steps()
    resumed = train_conversation_model(data, tmp_path / "resumed", SIZES, training, seed=3, callbacks=[steps],
                                       report=False, keep_checkpoints=True)
    assert steps.steps == list(range(7, 13))  # picked up after the last checkpoint, not from scratch

    for checkpoint in ("checkpoint-12", "."):  # the last step, and the selected model
        straight_weights = load_file(tmp_path / "straight" / checkpoint / "model.safetensors")
        resumed_weights = load_file(tmp_path / "resumed" / checkpoint / "model.safetensors")
        for key, value in straight_weights.items():
            torch.testing.assert_close(resumed_weights[key], value, rtol=0, atol=1e-6)
    assert resumed == json.loads((tmp_path / "straight" / "results.json").read_text())
    # Cut after its last checkpoint, before results.json: the rerun only selects and scores, and its record is the
    # same, config included (which the resumed process had not yet completed by saving).
    (tmp_path / "straight" / "results.json").unlink()
    again = train_conversation_model(data, tmp_path / "straight", SIZES, training, seed=3, report=False,
                                     keep_checkpoints=True)
    assert again == resumed and "architectures" in again["config"]



def test_one_seed_trains_to_the_same_weights_and_scores_and_another_seed_does_not(tmp_path):
    """Every random draw of the `small` recipe's kind of run follows the seed: initialisation, data order, modality
    dropout, the gate's held-out conversations and the dropout masks (input, context, attention)."""
    data = corpus(train=8, validation=4, test=2)
    config = {**SIZES, "standardize_inputs": True, "mixture_space": "probabilities", "input_dropout": 0.3,
              "context_dropout": 0.5, "gate_holdout_fraction": 0.25}
    runs = {name: train_conversation_model(data, tmp_path / name, config, {**FAST, "per_device_train_batch_size": 2},
                                           seed=seed, modality_dropout=0.2, gate_learning_rate=3e-2, report=False)
            for name, seed in (("a", 0), ("b", 0), ("c", 1))}
    weights = {name: load_file(tmp_path / name / "model.safetensors") for name in runs}
    assert all(torch.equal(weights["a"][key], weights["b"][key]) for key in weights["a"])
    assert {split: runs["a"][split] for split in ("validation", "test")} == \
        {split: runs["b"][split] for split in ("validation", "test")}
    assert not torch.equal(weights["a"]["gate.mlp.0.weight"], weights["c"]["gate.mlp.0.weight"])


def test_resumed_run_keeps_early_stopping_count(tmp_path):
    """Early stopping's count of evaluations without gain survives a crash: at lr 0 no epoch beats the first, so
    patience 2 ends the run after epoch 3 whether or not it was cut after epoch 2 (it ran to epoch 4 when resuming
    restarted the count)."""
    data = corpus(train=8, validation=4, test=2)
    training = {**FAST, "learning_rate": 0.0, "num_train_epochs": 10, "per_device_train_batch_size": 4,
                "checkpoint_budget": 0}
    straight = _Steps()
    train_conversation_model(data, tmp_path / "straight", SIZES, training, report=False, early_stopping_patience=2,
                             callbacks=[straight])
    with pytest.raises(_Crash):
        train_conversation_model(data, tmp_path / "resumed", SIZES, training, early_stopping_patience=2,
                                 callbacks=[_CrashAfter(4)])
    resumed = _Steps()
    train_conversation_model(data, tmp_path / "resumed", SIZES, training, report=False, early_stopping_patience=2,
                             callbacks=[resumed])
    assert straight.steps == list(range(1, 7)) and resumed.steps == [5, 6]


def _weights(folder):
    return load_file(folder / "model.safetensors")


PACED = {**FAST, "learning_rate": 0.1, "num_train_epochs": 5, "per_device_train_batch_size": 2,
         "save_total_limit": None}


def test_early_stopping_stops_after_patience_evaluations_without_gain(tmp_path, capsys):
    """At lr 0 validation never beats its first epoch, so patience 2 ends training after epoch 3 of 10; scoring the
    splits afterwards does not make early stopping warn that it finds no validation metric."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    try:
        with CaptureLogger(transformers.logging.get_logger("transformers.trainer_callback")) as captured:
            capsys.readouterr()
            train_conversation_model(corpus(train=8, validation=4, test=2), tmp_path, SIZES,
                                     {**FAST, "learning_rate": 0.0, "num_train_epochs": 10}, report=False,
                                     early_stopping_patience=2)
    finally:
        transformers.logging.set_verbosity(verbosity)
    epochs = [line.split(":")[0] for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert epochs == ["epoch 1/10", "epoch 2/10", "epoch 3/10"]
    assert "early stopping" not in captured.out


class _EvaluationLog(TrainerCallback):
    def __init__(self):
        self.metrics = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.metrics.append(metrics)


def test_selection_on_log_loss_keeps_the_epoch_of_lowest_validation_log_loss(tmp_path):
    """`metric_for_best_model="log_loss"` alone (no `greater_is_better`) selects the minimum, not the maximum."""
    log = _EvaluationLog()
    results = train_conversation_model(corpus(train=8, validation=4, test=2), tmp_path, SIZES,
                                       {**FAST, "num_train_epochs": 4, "learning_rate": 3e-2,
                                        "metric_for_best_model": "log_loss"}, seed=1, report=False, callbacks=[log])
    per_epoch = [metrics["eval_log_loss"] for metrics in log.metrics if "eval_log_loss" in metrics]
    assert len(per_epoch) == 4 and max(per_epoch) > min(per_epoch)
    assert results["validation"]["log_loss"] == pytest.approx(min(per_epoch))


@pytest.fixture(scope="module")
def every_epoch(tmp_path_factory):
    """A run that writes a checkpoint at every epoch (budget 0), all kept: the reference of the pacing tests. Its
    validation score peaks at the second of five epochs (a high learning rate)."""
    folder = tmp_path_factory.mktemp("every")
    results = train_conversation_model(corpus(train=8, validation=4, test=2), folder, SIZES,
                                       {**PACED, "checkpoint_budget": 0}, seed=2, report=False, keep_checkpoints=True)
    return folder, results


def test_paced_checkpoints_keep_selection_and_resuming_exact(every_epoch, tmp_path):
    """A budget that no write fits: only the first evaluation writes a checkpoint; a run cut short resumes from it, and
    ends with the model and scores of the run that wrote every epoch."""
    reference, every = every_epoch
    data, training = corpus(train=8, validation=4, test=2), {**PACED, "checkpoint_budget": 1e-9}
    with pytest.raises(_Crash):  # in the last epoch, long after the only checkpoint
        train_conversation_model(data, tmp_path, SIZES, training, seed=2, callbacks=[_CrashAfter(18, on="step_end")])
    assert [path.name for path in tmp_path.glob("checkpoint-*")] == ["checkpoint-4"]
    resumed = train_conversation_model(data, tmp_path, SIZES, training, seed=2, report=False)
    for key, value in _weights(reference).items():
        torch.testing.assert_close(_weights(tmp_path)[key], value, rtol=0, atol=1e-6)
    assert resumed["validation"] == every["validation"] and resumed["test"] == every["test"]
    # results.json names the selected evaluation, which no paced checkpoint holds here (it named checkpoint-4)
    assert (resumed["best_step"], resumed["best_epoch"]) == (every["best_step"], every["best_epoch"]) == (8, 2.0)


def test_a_checkpoint_holds_the_best_weights_when_they_are_not_its_own(every_epoch, tmp_path):
    """Checkpoints after the best epoch carry its weights; resuming from one restores them for the selection."""
    reference, every = every_epoch
    best_step = json.loads((reference / "checkpoint-20" / "trainer_state.json").read_text())["best_global_step"]
    steps = sorted(int(path.name.split("-")[-1]) for path in reference.glob("checkpoint-*"))
    later = [step for step in steps if step > best_step]
    assert later and all((reference / f"checkpoint-{step}" / BEST_WEIGHTS).is_file() for step in later)
    assert not any((reference / f"checkpoint-{step}" / BEST_WEIGHTS).exists() for step in steps if step <= best_step)
    best = load_file(reference / f"checkpoint-{best_step}" / "model.safetensors")
    for key, value in load_file(reference / f"checkpoint-{later[0]}" / BEST_WEIGHTS).items():
        torch.testing.assert_close(value, best[key], rtol=0, atol=0)
    data, training = corpus(train=8, validation=4, test=2), {**PACED, "checkpoint_budget": 0}
    with pytest.raises(_Crash):
        train_conversation_model(data, tmp_path, SIZES, training, seed=2, callbacks=[_CrashAfter(later[0])])
    train_conversation_model(data, tmp_path, SIZES, training, seed=2, report=False)
    for key, value in _weights(reference).items():
        torch.testing.assert_close(_weights(tmp_path)[key], value, rtol=0, atol=1e-6)


def test_weight_average_is_the_decay_weighted_mean_of_the_steps():
    from types import SimpleNamespace
    from mister_e.training.averaging import MisterEWeightAverage

    model = torch.nn.Linear(2, 1, bias=False)
    average = MisterEWeightAverage(half_life_epochs=0.5)
    args = SimpleNamespace(gradient_accumulation_steps=1, load_best_model_at_end=True)
    average.on_train_begin(args, None, None, model=model, train_dataloader=range(4))
    decay = 0.5 ** (1 / 2)  # half an epoch of 4 steps
    assert average.decay == pytest.approx(decay)
    with average.swapped_into(model):  # nothing averaged yet: the raw weights
        raw = model.weight.detach().clone()
    torch.testing.assert_close(model.weight.detach(), raw)
    steps = [torch.tensor([[1.0, -2.0]]), torch.tensor([[3.0, 0.0]]), torch.tensor([[-1.0, 4.0]])]
    for value in steps:
        with torch.no_grad():
            model.weight.copy_(value)
        average.on_step_end(args, None, None, model=model)
    factors = torch.tensor([decay**2, decay, 1.0]) * (1 - decay) / (1 - decay**3)
    expected = sum(f * v for f, v in zip(factors, steps))
    with average.swapped_into(model):
        torch.testing.assert_close(model.weight.detach(), expected)
    torch.testing.assert_close(model.weight.detach(), steps[-1])  # the raw weights back for training
    average.on_train_end(args, None, None, model=model)  # the trainer has loaded the best average itself
    torch.testing.assert_close(model.weight.detach(), steps[-1])
    average.on_train_end(SimpleNamespace(load_best_model_at_end=False), None, None, model=model)
    torch.testing.assert_close(model.weight.detach(), expected)  # no selection: training ends with the average
    with pytest.raises(ValueError, match="weight_average_half_life"):
        MisterEWeightAverage(-1.0)


def test_weight_average_is_selected_and_resumes_exactly(tmp_path):
    """With `weight_average_half_life`, the kept model is the average at the best evaluation (not any step's raw
    weights), and a run cut short resumes, average included, to the same model and scores."""
    from mister_e.training.averaging import AVERAGE_WEIGHTS

    data = corpus(train=8, validation=4, test=2)
    training = {**PACED, "checkpoint_budget": 0, "weight_average_half_life": 1.0}
    straight = train_conversation_model(data, tmp_path / "straight", SIZES, training, seed=2, report=False,
                                        keep_checkpoints=True)
    best_step = json.loads((tmp_path / "straight" / "checkpoint-20" / "trainer_state.json").read_text())[
        "best_global_step"]
    saved = load_file(tmp_path / "straight" / f"checkpoint-{best_step}" / AVERAGE_WEIGHTS)
    decay, steps = 0.5 ** (1 / 4), int(saved.pop("__steps__"))  # 4 steps an epoch
    assert steps == best_step
    kept, raw = _weights(tmp_path / "straight"), _weights(tmp_path / "straight" / f"checkpoint-{best_step}")
    for key, value in saved.items():
        torch.testing.assert_close(kept[key], value / (1 - decay**steps))
    assert any(not torch.allclose(kept[key], raw[key]) for key in saved)

    with pytest.raises(_Crash):  # right after the best evaluation's checkpoint, whose own weights are raw
        train_conversation_model(data, tmp_path / "resumed", SIZES, training, seed=2,
                                 callbacks=[_CrashAfter(best_step)])
    resumed = train_conversation_model(data, tmp_path / "resumed", SIZES, training, seed=2, report=False)
    for key, value in kept.items():
        torch.testing.assert_close(_weights(tmp_path / "resumed")[key], value, rtol=0, atol=1e-6)
    assert resumed["validation"] == straight["validation"] and resumed["test"] == straight["test"]


# --- stage 1 -------------------------------------------------------------------------------------------------------


def test_stage_one_trains_selects_on_validation_and_merges(data, processor, tmp_path):
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         vocab_size=len(WORDS) + 5)).save_pretrained(tmp_path / "bert")
    small = DatasetDict({split: part.select(range(3)) for split, part in data.items()})
    results = train_encoder(
        small, "text", tmp_path / "run", processor, backbone=tmp_path / "bert",
        config_overrides={"text_embed_dim": 16}, training_overrides={**FAST, "learning_rate": 1e-3},
        keep_checkpoints=True,
    )
    state = json.loads((tmp_path / "run" / f"checkpoint-{results['best_step']}" / "trainer_state.json").read_text())
    evals = [log["eval_weighted_f1"] for log in state["log_history"] if "eval_weighted_f1" in log]
    assert state["best_metric"] == max(evals) == results["validation"]["weighted_f1"]
    assert state["max_steps"] >= 2 and (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()

    merged = MisterEForUtteranceClassification.from_pretrained(tmp_path / "run" / "merged")
    assert merged.text_encoder is not None and merged.speech_encoder is None
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert merged.config.id2label == dict(enumerate(LABELS)) and merged.config.text_embed_dim == 16
    reloaded = MisterEProcessor.from_pretrained(tmp_path / "run" / "merged")
    batch = MisterEDataCollator(reloaded, ("text",))(list(flatten_utterances(small["test"], "text")))
    assert merged(**batch).text_logits.shape[-1] == len(LABELS)


def test_frozen_encoder_folder_from_the_cli_feeds_extraction_and_prediction(data, processor, tmp_path, capsys):
    """`train-encoder --frozen`: the CLI route to the frozen-backbone folder `extract --embedding backbone_mean` needs."""
    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                                vocab_size=len(WORDS) + 5))
    bert.save_pretrained(tmp_path / "bert")
    processor.save_pretrained(tmp_path / "processor")
    small = DatasetDict({split: part.select(range(2)) for split, part in data.items()})
    small.save_to_disk(tmp_path / "data")
    assert main(["train-encoder", "--dataset", str(tmp_path / "data"), "--modality", "text", "--backbone",
                 str(tmp_path / "bert"), "--processor", str(tmp_path / "processor"), "--output-dir",
                 str(tmp_path / "frozen"), "--frozen"]) == 0
    merged = tmp_path / "frozen" / "merged"
    assert folder_kind(merged) == "stage-1" and not (tmp_path / "frozen" / "merged.tmp").exists()
    encoder = MisterEForUtteranceClassification.from_pretrained(merged)
    for name, weight in bert.state_dict().items():  # the backbone as pretrained, untouched
        torch.testing.assert_close(encoder.text_encoder.backbone.state_dict()[name], weight)
    capsys.readouterr()  # a frozen folder is not written over a run's trained one, nor over another frozen one
    assert main(["train-encoder", "--dataset", str(tmp_path / "data"), "--modality", "text", "--backbone",
                 str(tmp_path / "bert"), "--processor", str(tmp_path / "processor"), "--output-dir",
                 str(tmp_path / "frozen"), "--frozen", "--seed", "1"]) == 2
    assert "holds a run with other settings (seed: 0 -> 1)" in capsys.readouterr().err
    assert main(["extract", "--dataset", str(tmp_path / "data"), "--model", str(merged), "--embedding",
                 "backbone_mean", "--output-dir", str(tmp_path / "embedded")]) == 0
    embedded = load_from_disk(str(tmp_path / "embedded"))
    assert np.asarray(embedded["test"][0]["text_embeds"]).shape[-1] == 32  # the backbone's width
    # The same command again reads the finished extraction back from its cache; anything else is refused.
    capsys.readouterr()
    extract_again = ["extract", "--dataset", str(tmp_path / "data"), "--model", str(merged), "--output-dir",
                     str(tmp_path / "embedded")]
    assert main([*extract_again, "--embedding", "backbone_mean"]) == 0
    assert f"{tmp_path / 'embedded'} already holds this extraction" in capsys.readouterr().out
    assert main([*extract_again, "--embedding", "backbone_layers"]) == 2  # the cache is another extraction's
    assert "holds an extraction with another embedding" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "embedded.cache")  # nothing to check the saved data against without extracting again
    assert main([*extract_again, "--embedding", "backbone_mean"]) == 2
    assert "exists; pass overwrite=True (CLI: --overwrite)" in capsys.readouterr().err
    assert main(["extract", "--dataset", str(tmp_path / "data"), "--model", str(merged), "--embedding",
                 "backbone_layers", "--output-dir", str(tmp_path / "layers")]) == 0
    layers = np.asarray(load_from_disk(str(tmp_path / "layers"))["test"][0]["text_embeds"])
    assert layers.shape[-1] == 3 * 32  # the embeddings' and both layers' states
    np.testing.assert_allclose(layers[:, -32:], np.asarray(embedded["test"][0]["text_embeds"]), rtol=1e-5, atol=1e-6)

    # A stage 2 trained on those vectors predicts from raw text once joined with the embedding it was trained on.
    sets = [f"{key}={value}" for key, value in {**SIZES, **FAST, "num_train_epochs": 1}.items()]
    assert main(["train", "--recipe", "mosi", "--dataset", str(tmp_path / "layers"), "--output-dir",
                 str(tmp_path / "runs"), "--seeds", "0", "--set", "modalities=[text]", "experts=[text]", *sets]) == 0
    (tmp_path / "c.json").write_text(json.dumps({"utterances": [{"text": "hello world"}, {"text": "oh no"}]}))
    predict = ["predict", "--model", str(tmp_path / "runs" / "seed_0"), "--encoder", str(merged),
               str(tmp_path / "c.json")]
    capsys.readouterr()
    assert json.loads((tmp_path / "runs" / "seed_0" / "config.json").read_text())["text_embedding"] == "backbone_layers"
    assert main(predict) == 0  # joined with the embedding its training data recorded
    assert [p["label"] in LABELS for p in json.loads(capsys.readouterr().out)] == [True, True]
    assert main([*predict, "--embedding", "backbone_mean"]) == 2  # another one: refused in one line
    assert "trained on `backbone_layers` text embeddings, not `backbone_mean`" in capsys.readouterr().err
    relabelled = load_from_disk(str(tmp_path / "layers")).cast_column("text_embeds", embedding_feature("backbone_mean"))
    relabelled.save_to_disk(tmp_path / "relabelled")  # the same width, recorded as another embedding
    assert main(["evaluate", "--model", str(tmp_path / "runs" / "seed_0"), "--dataset", str(tmp_path / "relabelled"),
                 "--output-dir", str(tmp_path / "eval")]) == 2
    assert "are `backbone_mean` embeddings; the model was trained on `backbone_layers`" in capsys.readouterr().err


# --- evaluation, seeds, recipes ------------------------------------------------------------------------------------


def test_evaluate_model_writes_every_artefact(data, tmp_path):
    torch.manual_seed(0)
    model = MisterEForEmotionRecognition(MisterEConfig(**SIZES, speech_embed_dim=SPEECH_DIM, text_embed_dim=TEXT_DIM,
                                                       id2label=dict(enumerate(LABELS))))
    model.save_pretrained(tmp_path / "model")
    data.save_to_disk(tmp_path / "data")
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "data"),
                 "--probabilities", "0", "0.5", "1", "--output-dir", str(tmp_path / "report")]) == 0

    report = tmp_path / "report"
    # Every file, no temporary one left, and REPORT_FILES (what a new report into the folder clears) names them all.
    assert sorted(path.name for path in report.iterdir()) == sorted(REPORT_FILES)
    with open(report / "predictions.csv") as file:
        predictions = list(csv.DictReader(file))
    assert len(predictions) == sum(len(labels) for labels in data["test"]["labels"])
    assert all(abs(sum(float(row[f"gate_{e}"]) for e in ("speech", "text", "cross_modal")) - 1) < 1e-5
               for row in predictions)
    curve = json.loads((report / "robustness.json").read_text())
    assert curve["probabilities"] == [0.0, 0.5, 1.0] and set(curve["conditions"]) == {"speech", "text", "either"}
    metrics = json.loads((report / "metrics.json").read_text())
    assert curve["conditions"]["either"]["weighted_f1"][0] == metrics["weighted_f1"]
    in_memory = evaluate_model(model, data["test"], tmp_path / "again", robustness=False)
    assert in_memory["metrics"]["weighted_f1"] == metrics["weighted_f1"] and in_memory["robustness"] is None
    # Into the used folder, without a curve: the earlier curve does not stay beside another evaluation's metrics.
    (report / "notes.txt").write_text("mine")
    evaluate_model(model, data["validation"], report, robustness=False)
    assert not (report / "robustness.json").exists() and not (report / "robustness.png").exists()
    assert (report / "metrics.json").is_file() and (report / "notes.txt").read_text() == "mine"


def test_an_interrupted_evaluation_leaves_no_metrics(data, tmp_path, monkeypatch):
    """metrics.json is written last: a report stopped during its robustness curve (the long part) has none, rather
    than a complete-looking report without the curve, or the previous evaluation's metrics beside the new files."""
    torch.manual_seed(0)
    model = MisterEForEmotionRecognition(MisterEConfig(**SIZES, speech_embed_dim=SPEECH_DIM, text_embed_dim=TEXT_DIM,
                                                       id2label=dict(enumerate(LABELS))))
    evaluate_model(model, data["test"], tmp_path / "report", robustness=False)
    assert (tmp_path / "report" / "metrics.json").is_file()

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_module, "robustness_curve", stopped)
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(model, data["validation"], tmp_path / "report", probabilities=(0.0, 0.5))
    assert not [name for name in REPORT_FILES if (tmp_path / "report" / name).exists()]


def test_train_seeds_summarises_mean_and_std(tmp_path):
    data = corpus(train=8, validation=4, test=4)
    recipe = load_recipe("iemocap", {**SIZES, **FAST, "output_dir": str(tmp_path)})
    summary = train_seeds(recipe, seeds=(0, 1), dataset=data)
    assert not list((tmp_path / "seed_0").glob("checkpoint-*"))  # a finished run drops its checkpoints

    runs = [json.loads((tmp_path / f"seed_{seed}" / "results.json").read_text()) for seed in (0, 1)]
    for metric in ("test/weighted_f1", "validation/macro_f1", "test/f1_sad"):
        split, name = metric.split("/")
        values = np.array([run[split][name] for run in runs])
        assert summary[metric]["mean"] == pytest.approx(values.mean())
        assert summary[metric]["std"] == pytest.approx(values.std(ddof=1))
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["summary"] == summary and written["seeds"] == [0, 1]
    for seed, run in zip((0, 1), runs):  # each run records the weights it scored, for `save_for_hub` to check
        saved = MisterEForEmotionRecognition.from_pretrained(tmp_path / f"seed_{seed}")
        assert run["weights_sha256"] == conversation_fingerprint(saved) == written["runs"][str(seed)]["weights_sha256"]
    assert runs[0]["weights_sha256"] != runs[1]["weights_sha256"]
    assert "±" in (tmp_path / "summary.md").read_text()
    finished = (tmp_path / "seed_0" / "results.json").stat().st_mtime_ns
    assert train_seeds(recipe, seeds=(0, 1), dataset=data) == summary  # finished seeds are read, not retrained
    assert (tmp_path / "seed_0" / "results.json").stat().st_mtime_ns == finished
    # ... but only with the settings they were trained with: other ones are refused, not answered with the old run
    changed = load_recipe("iemocap", {**SIZES, **FAST, "output_dir": str(tmp_path), "kl_weight": 0.5})
    refused = r"seed_0 holds a run with other settings \(config\.kl_weight: \(unset\) -> 0\.5\)"
    with pytest.raises(ValueError, match=refused):
        train_seeds(changed, seeds=(0, 1), dataset=data)
    assert json.loads((tmp_path / "summary.json").read_text()) == written  # untouched


def test_a_run_folder_refuses_other_data(data, processor, tmp_path, capsys):
    """What a run was trained on is recorded as it starts (`run.json`): a rerun with another data set saved on disk is
    refused by the CLI in one line, before anything is read back or resumed."""
    for name, size in (("a", 2), ("b", 3)):
        DatasetDict({split: part.select(range(size)) for split, part in data.items()}).save_to_disk(tmp_path / name)
    processor.save_pretrained(tmp_path / "processor")
    sets = [f"{key}={value}" for key, value in {**SIZES, **FAST, "num_train_epochs": 1}.items()]
    train = ["train", "--recipe", "mosi", "--output-dir", str(tmp_path / "runs"), "--seeds", "0", "--set", *sets]
    assert main([*train[:1], "--dataset", str(tmp_path / "a"), *train[1:]]) == 0
    assert main([*train[:1], "--dataset", str(tmp_path / "a"), *train[1:]]) == 0  # the same run: read back
    capsys.readouterr()
    assert main([*train[:1], "--dataset", str(tmp_path / "b"), *train[1:]]) == 2
    assert "holds a run with other settings (data.test:" in capsys.readouterr().err


def test_two_runs_started_together_into_one_folder_record_one(tmp_path, monkeypatch):
    """Both passed `check_run` before either wrote `run.json`: the second to record is refused, rather than training
    into the first's folder (whose results it would later read back as its own)."""
    import mister_e.training.runs as runs
    from mister_e.utils import atomic_path

    runs.check_run(tmp_path, {"seed": 0, "config": {"kl_weight": 0.1}})  # both find the folder empty ...
    runs.check_run(tmp_path, {"seed": 0, "config": {"kl_weight": 0.5}})
    runs.record_run(tmp_path, {"seed": 0, "config": {"kl_weight": 0.1}})  # ... then record in turn
    with pytest.raises(ValueError, match=r"holds a run with other settings \(config\.kl_weight: 0\.1 -> 0\.5\)"):
        runs.record_run(tmp_path, {"seed": 0, "config": {"kl_weight": 0.5}})
    runs.record_run(tmp_path, {"seed": 0, "config": {"kl_weight": 0.1}})  # the same run again: fine
    assert json.loads((tmp_path / "run.json").read_text())["config"] == {"kl_weight": 0.1}
    assert [path.name for path in tmp_path.iterdir()] == ["run.json"]  # no temporary left
    # Two writers of one file each write their own temporary, never into the other's half.
    with atomic_path(tmp_path / "x.json") as first, atomic_path(tmp_path / "x.json") as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("1")
        second.write_text("2")
    assert (tmp_path / "x.json").read_text() == "1"  # the last to finish wins, whole


def test_recipes_load_and_every_ablation_builds():
    for name in ("iemocap", "meld", "mosi"):
        recipe = load_recipe(name)
        assert recipe["name"] == name and recipe["seeds"] == [0, 1, 2] and recipe["modalities"] == ["speech", "text"]
        training = recipe["training"]
        assert (training["learning_rate"], training["num_train_epochs"], training["per_device_train_batch_size"],
                training["max_grad_norm"], training["weight_decay"]) == (1e-5, 100, 8, 1.0, 0.0)
        for ablation in ABLATIONS:
            config = MisterEConfig(**apply_ablation(recipe, ablation)["config"])
            assert all(getattr(config, key) == value for key, value in ABLATIONS[ablation].items())

    # Utterances missing a modality, except for a single expert, which cannot answer those (the model refuses them)
    batches = {missing: MisterEDataCollator()(conversations(2, 0, "d", missing=missing)) for missing in (True, False)}
    for ablation, overrides in ABLATIONS.items():  # each trains: a finite loss with gradients
        torch.manual_seed(0)
        config = MisterEConfig(**SIZES, **overrides, speech_embed_dim=SPEECH_DIM, text_embed_dim=TEXT_DIM,
                               num_labels=len(LABELS))
        model = MisterEForEmotionRecognition(config)
        loss = model(**batches[len(config.experts) > 1]).loss
        loss.backward()
        assert torch.isfinite(loss), ablation
        for expert in ("speech", "text", "cross_modal"):  # every enabled expert receives a gradient
            module = getattr(model, f"{expert}_expert")
            if module is not None:
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), (ablation,
                                                                                                        expert)

    recipe = load_recipe("meld", {"kl_weight": 0.0, "learning_rate": 3e-5, "dataset": "elsewhere",
                                  "config.gate_mode": "mean", "training.save_total_limit": 5})
    assert recipe["config"] == {"kl_weight": 0.0, "gate_mode": "mean"} and recipe["dataset"] == "elsewhere"
    assert recipe["training"]["learning_rate"] == 3e-5 and recipe["training"]["save_total_limit"] == 5
    with pytest.raises(ValueError, match="neither"):
        load_recipe("meld", {"kl_wieght": 0.0})
    with pytest.raises(ValueError, match="Unknown ablation"):
        apply_ablation(recipe, "no_everything")


def test_train_command_runs_ablations_into_one_table(tmp_path):
    corpus(train=6, validation=3, test=3).save_to_disk(tmp_path / "data")
    sets = [f"{key}={value}" for key, value in {**SIZES, **FAST, "num_train_epochs": 1}.items()]
    assert main(["train", "--recipe", "mosi", "--dataset", str(tmp_path / "data"), "--output-dir",
                 str(tmp_path / "runs"), "--seeds", "0", "--ablation", "full", "no_kl", "--set", *sets]) == 0

    assert set(json.loads((tmp_path / "runs" / "ablations.json").read_text())) == {"full", "no_kl"}
    no_kl = json.loads((tmp_path / "runs" / "no_kl" / "seed_0" / "results.json").read_text())
    assert no_kl["config"]["kl_weight"] == 0
    table = (tmp_path / "runs" / "ablations.md").read_text()
    assert "| metric | full (n=1) | no_kl (n=1) |" in table and "test/weighted_f1" in table


def test_an_ablation_the_data_cannot_serve_is_refused_before_any_training(tmp_path, capsys):
    corpus(train=6, validation=3, test=3).remove_columns("speech_embeds").save_to_disk(tmp_path / "data")
    capsys.readouterr()
    assert main(["train", "--recipe", "mosi", "--dataset", str(tmp_path / "data"), "--output-dir",
                 str(tmp_path / "runs"), "--seeds", "0", "--ablation", "full", "speech_only"]) == 2
    error = capsys.readouterr().err
    assert "Ablation 'speech_only'" in error and "No enabled expert" in error, error
    assert not (tmp_path / "runs").exists()  # `full` was not trained first


def test_set_values_get_their_types():
    sets = parse_sets(["learning_rate=1e-5", "warmup=1.0e-3", "experts=[text]", "bf16=true", "name=meld", "seed=3"])
    assert sets == {"learning_rate": 1e-5, "warmup": 1e-3, "experts": ["text"], "bf16": True, "name": "meld", "seed": 3}
    with pytest.raises(ValueError, match="key=value"):
        parse_sets(["learning_rate"])


def test_no_flat_robustness_curve_for_single_modality_data(data, tmp_path, caplog):
    """Dropping a modality never removes an utterance's only input, so on text-only data the curve would be three flat
    lines that read as perfect robustness: it is skipped, and the CLI says so."""
    torch.manual_seed(0)
    model = MisterEForEmotionRecognition(MisterEConfig(**SIZES, speech_embed_dim=SPEECH_DIM, text_embed_dim=TEXT_DIM,
                                                       id2label=dict(enumerate(LABELS))))
    model.save_pretrained(tmp_path / "model")
    text_only = data.remove_columns("speech_embeds")
    text_only.save_to_disk(tmp_path / "data")
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "data"),
                 "--output-dir", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "metrics.json").is_file() and not (tmp_path / "report" / "robustness.json").exists()
    assert [record.getMessage() for record in caplog.records].count(
        "No robustness curve: every utterance has one modality at most, so there is nothing to drop.") == 1


def test_no_robustness_curve_for_a_modality_the_model_cannot_do_without(data, tmp_path):
    """A text-only model has no answer once text is dropped: those utterances were scored as class 0, and the curve
    rose or fell by that class's share. Only the condition it can answer after (dropping speech) is drawn."""
    torch.manual_seed(0)
    model = MisterEForEmotionRecognition(MisterEConfig(**SIZES, speech_embed_dim=SPEECH_DIM, text_embed_dim=TEXT_DIM,
                                                       id2label=dict(enumerate(LABELS)), experts=["text"]))
    with CaptureLogger(transformers.logging.get_logger("mister_e.training.evaluate")) as captured:
        curve = evaluate_model(model, data["test"], tmp_path / "report", probabilities=(0.0, 0.9))["robustness"]
    assert set(curve["conditions"]) == {"speech"} and len(set(curve["conditions"]["speech"]["accuracy"])) == 1
    assert "No 'drop text' robustness curve" in captured.out and "No 'drop either'" in captured.out
    full = MisterEForEmotionRecognition(MisterEConfig(**SIZES, speech_embed_dim=SPEECH_DIM, text_embed_dim=TEXT_DIM,
                                                      id2label=dict(enumerate(LABELS))))
    curve = evaluate_model(full, data["test"], tmp_path / "full", probabilities=(0.0, 0.9))["robustness"]
    assert set(curve["conditions"]) == {"speech", "text", "either"}


@pytest.mark.parametrize("setting, value, named", [("experts", "[speach]", "speach"),
                                                   ("weight_average_half_life", "-1", "-1"),
                                                   ("weight_average_half_life", ".nan", "nan")])
def test_a_wrong_config_value_is_one_line_and_exit_2(setting, value, named, tmp_path, capsys):
    corpus(train=2, validation=1, test=1).save_to_disk(tmp_path / "data")
    capsys.readouterr()
    assert main(["train", "--recipe", "mosi", "--dataset", str(tmp_path / "data"), "--output-dir",
                 str(tmp_path / "runs"), "--seeds", "0", "--set", f"{setting}={value}"]) == 2
    error = capsys.readouterr().err
    assert setting in error and named in error and len(error.strip().splitlines()) == 1


def test_the_papers_optimisation_has_one_home():
    from mister_e.recipes import PAPER_TRAINING
    from mister_e.training import CONVERSATION_TRAINING_DEFAULTS

    assert PAPER_TRAINING["learning_rate"] == 1e-5 and PAPER_TRAINING["num_train_epochs"] == 100
    assert all(load_recipe(name)["training"] == PAPER_TRAINING for name in ("iemocap", "meld", "mosi"))
    assert CONVERSATION_TRAINING_DEFAULTS.items() >= PAPER_TRAINING.items()
    small = load_recipe("small")["training"]  # a recipe states only what differs
    assert small["learning_rate"] == 3e-4 and small["max_grad_norm"] == PAPER_TRAINING["max_grad_norm"]


class _PoisonAfter(TrainerCallback):
    """Turns one weight into NaN after step `step`: what a diverging run does to every weight an update later."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def test_a_diverging_run_stops_and_nan_weights_are_never_answered_with(data, tmp_path):
    """Trainer's logs average a NaN loss away: training stops on it instead, and a model whose weights hold NaN is
    refused by evaluation and by the pipeline rather than reported or printed as NaN scores."""
    training = {**FAST, "num_train_epochs": 3}
    with pytest.raises(ValueError, match=r"Training diverged: the loss is nan at step 3 .*lower the learning rate"):
        train_conversation_model(data, tmp_path / "run", SIZES, training, seed=0, callbacks=[_PoisonAfter(2)])
    assert not (tmp_path / "run" / "results.json").exists()
    model = MisterEForEmotionRecognition(MisterEConfig(**{**data_config(data["train"]), **SIZES}))
    with torch.no_grad():
        model.text_expert.classifier.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="dialogue .*: The model's predictions are not finite"):
        evaluate_model(model, data["test"], tmp_path / "evaluation", robustness=False)


def test_embeddings_the_model_would_read_as_nan_or_inf_are_named_before_training(tmp_path):
    """NaN that pandas stores as null (read back as NaN by the collator) and float64 values beyond float32's range
    (inf once read) passed the finiteness check: training stopped later as 'diverged', naming no utterance, and
    evaluation blamed the weights. Both are named, found over whole Arrow columns in a split taken by `select`."""
    data = corpus(train=4, validation=2, test=2)
    frame = data["train"].to_pandas()
    frame.at[2, "speech_embeds"] = [vector if index != 1 else np.r_[vector[:-1], np.nan]
                                    for index, vector in enumerate(frame.at[2, "speech_embeds"])]
    nulls = Dataset.from_pandas(frame, features=data["train"].features)
    with pytest.raises(ValueError, match=r"^split 'train': dialogue 'train2': utterance 'train2_1' has a missing value "
                                         r"\(null: a NaN stored as null\?\) in speech_embeds; re-extract or drop it$"):
        train_conversation_model(DatasetDict({**data, "train": nulls}), tmp_path, SIZES, FAST, report=False)
    assert not list(tmp_path.iterdir())
    wide = data["test"].cast_column("text_embeds", List(List(Value("float64"))))
    huge = wide.map(lambda row, i: {"text_embeds": [[1e39] * TEXT_DIM] * 2 + row["text_embeds"][2:] if i == 1
                                    else row["text_embeds"]}, with_indices=True).select([1, 0])
    with pytest.raises(ValueError, match=r"^dialogue 'test1': utterance 'test1_0' has a value \(1e\+39\) too large "
                                         r"for float32 \(inf as the model reads it\) in text_embeds; .* "
                                         rf"\({2 * TEXT_DIM} such"):
        check_finite_embeddings(huge)


def test_inputs_that_overflow_the_model_are_told_apart_from_a_learning_rate_or_broken_weights(data, tmp_path):
    """Finite embeddings far from unit scale (1e20) overflow the arithmetic: training said 'lower the learning rate' at
    its first step, before any update, and evaluation that the finite weights held NaN, naming np.str_('test0')."""
    scaled = lambda part, scale: part.map(lambda row: {"text_embeds": [(np.asarray(vector) * scale).tolist()
                                                                       for vector in row["text_embeds"]]})
    huge = DatasetDict({split: scaled(part, 1e20) for split, part in data.items()})
    with pytest.raises(ValueError, match=r"The loss is nan at the first step, before any update \(so not the learning "
                                         r"rate\): the inputs overflow .* set standardize_inputs=true"):
        train_conversation_model(huge, tmp_path / "run", SIZES, FAST, report=False)
    model = MisterEForEmotionRecognition(MisterEConfig(**{**data_config(data["train"]), **SIZES}))
    with pytest.raises(ValueError, match=r"^dialogue 'test0', utterance 'test0_0': The model's predictions are not "
                                         r"finite \(NaN or inf\), but its weights are: the inputs overflow"):
        evaluate_model(model, scaled(data["test"], 1e30), tmp_path / "evaluation", robustness=False)


def _strict_json(path):
    """JSON as the standard has it: a bare NaN or Infinity (Python's json writes them) is refused."""
    return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{path} holds a bare {name}"))


def test_checkpoint_extras_are_written_under_a_name_of_the_writers_own(tmp_path, monkeypatch):
    """The best and averaged weights went through a fixed `NAME.partial` (two writers would write into each other's
    half), left behind by a failed write."""
    import mister_e.training.averaging as averaging
    import mister_e.training.checkpoints as checkpoints

    written = []

    def failing_save(tensors, path, **kwargs):
        written.append(Path(path).name)
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    average = averaging.MisterEWeightAverage(1.0)
    average.sums = {"w": torch.ones(2)}
    for module, write in ((checkpoints, lambda: checkpoints.write_best_weights({"w": torch.ones(2)}, tmp_path)),
                          (averaging, lambda: average.save(tmp_path))):
        monkeypatch.setattr(module, "save_file", failing_save)
        with pytest.raises(OSError, match="No space left"):
            write()
    assert [re.sub(r"\.\d+\.[0-9a-f]{8}\.tmp$", ".<pid>.<random>.tmp", name) for name in written] == [
        f".{BEST_WEIGHTS}.<pid>.<random>.tmp", f".{averaging.AVERAGE_WEIGHTS}.<pid>.<random>.tmp"]
    assert not list(tmp_path.iterdir())
    monkeypatch.undo()
    checkpoints.write_best_weights({"w": torch.ones(2)}, tmp_path)
    average.save(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([BEST_WEIGHTS, averaging.AVERAGE_WEIGHTS])
    assert torch.equal(load_file(tmp_path / BEST_WEIGHTS)["w"], torch.ones(2))


class _LogRecorder(TrainerCallback):
    """What a logging integration (TensorBoard, W&B, ...) is handed at each log."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_a_class_absent_from_validation_and_test_has_no_f1(tmp_path):
    """Its F1 was 0.0, read as the model failing on it; now None (null) through the Trainer's evaluations, its state
    file, results.json and the test report, while selection on weighted F1 goes on as before. The logging callbacks
    get no None (TensorBoard's warned about each at every evaluation)."""
    data = corpus(train=6, validation=3, test=3)
    calm = LABELS.index("calm")
    without_angry = {split: data[split].map(lambda row: {"labels": [calm if label == LABELS.index("angry") else label
                                                                     for label in row["labels"]]})
                     for split in ("validation", "test")}
    data = DatasetDict({**data, **without_angry})
    recorder = _LogRecorder()
    results = train_conversation_model(data, tmp_path, SIZES, {**FAST, "checkpoint_budget": 0}, keep_checkpoints=True,
                                       callbacks=[recorder])

    assert results["validation"]["f1_angry"] is None and results["test"]["f1_angry"] is None
    logged = [log for log in recorder.logs if any(key.endswith("weighted_f1") for key in log)]
    assert len(logged) == 4 and all(None not in log.values() and "epoch" in log for log in logged)
    assert all(isinstance(log[key], float) for log in logged for key in log if key.endswith("f1_calm"))
    assert all(isinstance(results["validation"][name], float) for name in ("f1_calm", "weighted_f1"))
    assert _strict_json(tmp_path / "results.json")["test"]["f1_angry"] is None
    state = _strict_json(next(tmp_path.glob("checkpoint-*")) / "trainer_state.json")
    evaluations = [log for log in state["log_history"] if "eval_weighted_f1" in log]
    assert len(evaluations) == 2 and all(log["eval_f1_angry"] is None for log in evaluations)
    report = _strict_json(tmp_path / "test" / "metrics.json")
    assert report["f1_per_class"]["angry"] is None and report["support_per_class"]["angry"] == 0
    assert "No reference utterance is of angry" in (tmp_path / "test" / "classification_report.txt").read_text()


@pytest.mark.parametrize("metric, message", [
    ("f1_angry", "split 'validation' has no 'angry' utterance"),
    ("f1_bored", r"names no class of the data \(its classes: \['calm'"),
])
def test_selecting_on_the_f1_of_a_class_validation_lacks_is_refused_before_training(tmp_path, metric, message):
    """The F1 of a class without validation utterances is undefined at every evaluation (as 0.0 it kept the first
    epoch whatever followed), and a class name the data lacks failed after the first epoch with a KeyError."""
    data = corpus(train=3, validation=2, test=2)
    calm = LABELS.index("calm")
    validation = data["validation"].map(lambda row: {"labels": [calm if label == LABELS.index("angry") else label
                                                                for label in row["labels"]]})
    with pytest.raises(ValueError, match=re.escape(f"metric_for_best_model {metric!r}") + ".*" + message):
        train_conversation_model(DatasetDict({**data, "validation": validation}), tmp_path, SIZES,
                                 {**FAST, "metric_for_best_model": metric}, report=False)
    assert not list(tmp_path.iterdir())


def test_ids_used_twice_in_a_split_are_refused_before_training_or_scoring(tmp_path):
    """A data set saved by hand skips the builders' id check: evaluate wrote two predictions.csv rows under the same
    dialogue and utterance ids (which row is which utterance?), and a split's dialogue count by id came out short."""
    from mister_e.data.building import attach_embeddings
    from mister_e.data.splits import check_unique_ids

    data = corpus(train=3, validation=2, test=3)
    same_dialogue = data["test"].map(lambda row, i: {"dialogue_id": "test0" if i == 2 else row["dialogue_id"]},
                                     with_indices=True)
    twice = lambda row, i: {"utterance_ids": [row["utterance_ids"][0], *row["utterance_ids"][:-1]] if i == 1
                            else row["utterance_ids"]}
    same_utterance = data["validation"].map(twice, with_indices=True)
    with pytest.raises(ValueError, match="^split 'test': dialogue 'test0' appears twice: predictions.csv"):
        train_conversation_model(DatasetDict({**data, "test": same_dialogue}), tmp_path, SIZES, FAST)
    with pytest.raises(ValueError, match="^split 'validation': dialogue 'validation1': utterance id 'validation1_0' "
                                         "appears twice"):
        train_encoder(DatasetDict({**data, "validation": same_utterance}), "text", tmp_path, None, backbone="unused")
    model = MisterEForEmotionRecognition(MisterEConfig(**SIZES, speech_embed_dim=SPEECH_DIM, text_embed_dim=TEXT_DIM,
                                                       id2label=dict(enumerate(LABELS))))
    with pytest.raises(ValueError, match="^dialogue 'test0' appears twice"):
        evaluate_model(model, same_dialogue, tmp_path / "report", robustness=False)
    assert not list(tmp_path.iterdir())
    # Utterance ids that repeat across dialogues (each dialogue's positions, say) name every utterance once with the
    # dialogue id, so training and scoring take them; only matching vectors by utterance id alone cannot.
    positions = data["test"].map(lambda row: {"utterance_ids": [str(i) for i in range(len(row["labels"]))]})
    check_unique_ids(DatasetDict({**data, "test": positions}))
    with pytest.raises(ValueError, match="utterance id '0' appears twice: text_embeds vectors are matched"):
        attach_embeddings(positions, "text_embeds", {"0": np.zeros(TEXT_DIM)})
