"""Selection and scores: early stopping, the selection metric, a class without F1, predict_split, and the
reports and robustness curves of `evaluate`."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
import transformers
from datasets import DatasetDict
from transformers import TrainerCallback
from transformers.testing_utils import CaptureLogger

from mister_e import MisterEConfig, MisterEForEmotionRecognition
from mister_e.configuration_mister_e import EXPERTS
from mister_e.experts_mister_e import mix_experts
from mister_e.evaluation import REPORT_FILES
from mister_e.cli import main
import mister_e.training.evaluate as evaluate_module
from mister_e.training import MisterEDataCollator, evaluate_model, predict_split, train_conversation_model

from tiny_corpus import FAST, LABELS, SIZES, SPEECH_DIM, TEXT_DIM, corpus


# --- selection -----------------------------------------------------------------------------------------------------


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


def _strict_json(path):
    """JSON as the standard has it: a bare NaN or Infinity (Python's json writes them) is refused."""
    return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{path} holds a bare {name}"))


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


# --- evaluation ----------------------------------------------------------------------------------------------------


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
