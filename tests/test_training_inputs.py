"""What training is fed: the collator, modality dropout, and the checks that refuse data before any training."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers
from datasets import Dataset, DatasetDict, List, Value, concatenate_datasets
from transformers.testing_utils import CaptureLogger

from mister_e import MisterEConfig, MisterEForEmotionRecognition
from mister_e.data import make_dialogue_dataset
from mister_e.data.checks import check_experts_can_answer, check_finite_embeddings
from mister_e.data.splits import warn_of_shared_dialogues
from mister_e.training.stage_two import warn_of_unseen_classes
from mister_e.training import (
    MisterEDataCollator,
    drop_modalities,
    evaluate_model,
    flatten_utterances,
    train_conversation_model,
    train_encoder,
    useful_modality_dropout,
)

from tiny_corpus import FAST, LABELS, SIZES, SPEECH_DIM, TEXT_DIM, conversations, corpus, dialogues


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


# --- checks before training ----------------------------------------------------------------------------------------


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
