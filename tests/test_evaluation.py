"""Tests of the ERC metric module and the evaluation reports built on it."""

from __future__ import annotations

import csv
import json
import socket
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from mister_e.evaluation import (
    GATE_NAMES,
    ROBUSTNESS_CONDITIONS,
    SCALAR_METRICS,
    compute_metrics,
    format_seed_table,
    load_erc_metric,
    robustness_curve,
    summarize_seeds,
    write_evaluation_report,
    write_robustness_report,
)


LABELS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _refuse_network(*args, **kwargs):
    raise OSError("network access attempted during an offline test")


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    """No network, Hub offline and HF_HOME in a temp dir, as on a machine that cannot reach the Hub.

    `evaluate` reads HF_HOME when first imported, which happens here unless an earlier test module imported it.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
        patch.setattr(socket.socket, "connect", _refuse_network)
        yield


@pytest.fixture(scope="module")
def erc_metric():
    return load_erc_metric()


@pytest.fixture
def random_split():
    """Predictions that are right about half the time, every class present among the references."""
    rng = np.random.default_rng(0)
    references = rng.integers(0, len(LABELS), 300)
    predictions = np.where(rng.random(300) < 0.5, references, rng.integers(0, len(LABELS), 300))
    assert set(references) == set(range(len(LABELS)))
    return predictions, references


def test_metric_loads_offline_from_the_package_file(erc_metric):
    import evaluate

    assert erc_metric.name == "erc_metrics"
    # evaluate copied the packaged script into its module cache and imported it from there.
    assert list(Path(evaluate.config.HF_MODULES_CACHE).rglob("erc_metrics.py"))


def test_metric_loads_where_hf_home_cannot_be_written(erc_metric, random_split, tmp_path, monkeypatch):
    """`evaluate.load` copies the script into HF_HOME/modules and makes HF_HOME/metrics: with HF_HOME read-only or
    not creatable, training failed at its first evaluation (a file in the way stands for both, also as root)."""
    import evaluate

    (tmp_path / "file").write_text("")
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "file" / "modules")
    monkeypatch.setattr(evaluate.config, "HF_METRICS_CACHE", tmp_path / "file" / "metrics")
    predictions, references = random_split
    metric = load_erc_metric()
    assert metric.name == "erc_metrics" and metric.compute(predictions=predictions, references=references,
                                                           label_names=LABELS) == erc_metric.compute(
        predictions=predictions, references=references, label_names=LABELS)


def test_metric_matches_sklearn(erc_metric, random_split):
    predictions, references = random_split
    results = erc_metric.compute(predictions=predictions, references=references, label_names=LABELS)

    assert set(results) == {*SCALAR_METRICS, "f1_per_class"}
    assert results["weighted_f1"] == pytest.approx(f1_score(references, predictions, average="weighted"))
    assert results["macro_f1"] == pytest.approx(f1_score(references, predictions, average="macro"))
    assert results["accuracy"] == pytest.approx(accuracy_score(references, predictions))
    assert results["unweighted_recall"] == pytest.approx(balanced_accuracy_score(references, predictions))
    assert list(results["f1_per_class"]) == LABELS
    np.testing.assert_allclose(
        list(results["f1_per_class"].values()), f1_score(references, predictions, average=None)
    )
    assert all(isinstance(value, float) and 0.0 <= value <= 1.0 for value in results["f1_per_class"].values())


def test_metric_ignores_padding(erc_metric, random_split):
    predictions, references = random_split
    padded_predictions = np.concatenate([predictions, np.zeros(40, dtype=int)])
    padded_references = np.concatenate([references, np.full(40, -100)])

    padded = erc_metric.compute(predictions=padded_predictions, references=padded_references, label_names=LABELS)
    assert padded == erc_metric.compute(predictions=predictions, references=references, label_names=LABELS)


def test_metric_handles_classes_absent_from_the_split(erc_metric):
    references = np.array([0, 0, 1, 1, 2, 2, 2])
    predictions = np.array([0, 4, 1, 1, 2, 0, 2])  # class 4 predicted but absent; class 3 never seen at all

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning either
        results = erc_metric.compute(predictions=predictions, references=references, label_names=LABELS[:5])

    assert list(results["f1_per_class"]) == LABELS[:5]
    # No reference utterance: no F1 (it was 0.0, as if the model failed on the class), predicted (joy) or not.
    assert results["f1_per_class"]["sadness"] is None
    assert results["f1_per_class"]["joy"] is None
    assert results["f1_per_class"]["fear"] == pytest.approx(f1_score(references, predictions, average=None)[2])
    # The split's scores are as before: sklearn's, which count the absent classes as 0 with no weight.
    assert results["weighted_f1"] == pytest.approx(f1_score(references, predictions, average="weighted"))
    assert results["macro_f1"] == pytest.approx(f1_score(references, predictions, labels=[0, 1, 2], average="macro"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that y_pred has a class y_true lacks
        assert results["unweighted_recall"] == pytest.approx(balanced_accuracy_score(references, predictions))


def test_metric_rejects_ids_outside_the_label_set(erc_metric):
    with pytest.raises(ValueError, match="Class ids"):
        erc_metric.compute(predictions=[0, 3], references=[0, 1], label_names=LABELS[:3])


def test_metric_combines_with_other_local_modules(erc_metric, tmp_path):
    import evaluate

    script = tmp_path / "mistake_count.py"
    script.write_text(
        textwrap.dedent(
            """
            import datasets
            import evaluate


            class MistakeCount(evaluate.Metric):
                def _info(self):
                    return evaluate.MetricInfo(
                        description="", citation="", inputs_description="",
                        features=datasets.Features(
                            {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
                        ),
                    )

                def _compute(self, predictions, references):
                    return {"mistakes": sum(p != r for p, r in zip(predictions, references))}
            """
        )
    )
    combined = evaluate.combine([erc_metric, evaluate.load(str(script), keep_in_memory=True)])

    results = combined.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    assert results["mistakes"] == 1
    assert results["accuracy"] == pytest.approx(0.75)
    assert set(results["f1_per_class"]) == {"0", "1", "2"}


def test_compute_metrics_takes_trainer_outputs(erc_metric):
    from transformers import EvalPrediction

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 6, len(LABELS)))
    labels = rng.integers(0, len(LABELS), (4, 6))
    labels[2:, 4:] = -100  # shorter conversations padded to the batch length
    gate_weights = rng.dirichlet(np.ones(3), (4, 6))

    results = compute_metrics(EvalPrediction(predictions=(logits, gate_weights), label_ids=labels), label_names=LABELS)

    expected = erc_metric.compute(
        predictions=logits.argmax(-1).ravel(), references=labels.ravel(), label_names=LABELS
    )
    kept = labels.ravel() != -100
    expected_log_loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits.reshape(-1, len(LABELS))[kept]),
                                                          torch.from_numpy(labels.ravel()[kept]))
    assert results.pop("log_loss") == pytest.approx(float(expected_log_loss))
    assert results == {
        **{name: expected[name] for name in SCALAR_METRICS},
        **{f"f1_{name}": score for name, score in expected["f1_per_class"].items()},
    }
    # Class ids (reduced by `preprocess_logits_for_metrics`) carry no probabilities, so no log loss.
    assert "log_loss" not in compute_metrics((logits.argmax(-1), labels), label_names=LABELS)


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5_000


@pytest.mark.parametrize("with_gates", [True, False])
def test_write_evaluation_report(tmp_path, random_split, with_gates):
    predictions, references = random_split
    num_utterances = len(references)
    rng = np.random.default_rng(2)
    gate_weights = rng.dirichlet(np.ones(3), num_utterances)
    gate_weights[:50, 0] = 0.0  # speech expert unavailable for some utterances
    probabilities = rng.dirichlet(np.ones(len(LABELS)), num_utterances)
    dialogue_ids = [f"dia{i // 12}" for i in range(num_utterances)]
    # Padded rows appended to every input are dropped from every artefact.
    padding = 5

    report = write_evaluation_report(
        tmp_path,
        predictions=np.concatenate([predictions, np.zeros(padding, dtype=int)]),
        references=np.concatenate([references, np.full(padding, -100)]),
        label_names=LABELS,
        gate_weights=np.concatenate([gate_weights, np.zeros((padding, 3))]) if with_gates else None,
        dialogue_ids=dialogue_ids + ["pad"] * padding,
        probabilities=np.concatenate([probabilities, np.zeros((padding, len(LABELS)))]),
    )

    expected_files = {"metrics.json", "classification_report.txt", "confusion_matrix.png", "predictions.csv"}
    if with_gates:
        expected_files.add("gate_weights.png")
    assert {path.name for path in tmp_path.iterdir()} == expected_files  # no `.tmp` left behind

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == report
    assert {*SCALAR_METRICS, "f1_per_class", "confusion_matrix", "support_per_class"} <= set(metrics)
    assert metrics["num_utterances"] == num_utterances
    assert metrics["num_dialogues"] == len(set(dialogue_ids))
    text = (tmp_path / "classification_report.txt").read_text()  # its macro avg differs from metrics.json's: said so
    assert f"average the {len(np.unique(references))} classes present in the references" in text
    assert metrics["weighted_f1"] == pytest.approx(f1_score(references, predictions, average="weighted"))
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (len(LABELS), len(LABELS))
    assert matrix.trace() == (predictions == references).sum()
    assert list(metrics["support_per_class"].values()) == np.bincount(references).tolist()
    if with_gates:
        assert metrics["gates"]["experts"] == list(GATE_NAMES)
        np.testing.assert_allclose(list(metrics["gates"]["mean"].values()), gate_weights.mean(0))
        assert set(metrics["gates"]["mean_per_class"]) == set(LABELS)
        _assert_png(tmp_path / "gate_weights.png")
    else:
        assert "gates" not in metrics

    with open(tmp_path / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == num_utterances
    assert list(rows[0]) == [
        "dialogue_id",
        "utterance_id",
        "label",
        "predicted_label",
        "confidence",
        "gate_speech",
        "gate_text",
        "gate_cross_modal",
    ]
    assert [row["label"] for row in rows] == [LABELS[i] for i in references]
    assert [row["predicted_label"] for row in rows] == [LABELS[i] for i in predictions]
    assert float(rows[3]["confidence"]) == pytest.approx(probabilities[3, predictions[3]])
    assert rows[13]["dialogue_id"] == "dia1" and rows[13]["utterance_id"] == "13"
    assert rows[0]["gate_speech"] == ("0.0" if with_gates else "")

    assert "sadness" in (tmp_path / "classification_report.txt").read_text()
    _assert_png(tmp_path / "confusion_matrix.png")


def test_robustness_curve_follows_the_predictor(tmp_path):
    """A fake model that errs on an utterance once its drop draw falls under the drop rate: text hurts more."""
    rng = np.random.default_rng(3)
    references = rng.integers(0, 4, 500)
    draws = rng.random(500)
    calls = []

    def predict_fn(drop_speech_p, drop_text_p, seed):
        calls.append((drop_speech_p, drop_text_p, seed))
        wrong = draws < 0.3 * drop_speech_p + 0.6 * drop_text_p
        return np.where(wrong, (references + 1) % 4, references), references

    probabilities = (0.0, 0.2, 0.4, 0.6, 0.8)
    curve = robustness_curve(predict_fn, probabilities=probabilities, seed=7)

    assert curve["probabilities"] == list(probabilities)
    assert set(curve["conditions"]) == set(ROBUSTNESS_CONDITIONS)
    assert len(calls) == 1 + 3 * (len(probabilities) - 1)  # p = 0 runs once for all three conditions
    assert {seed for *_, seed in calls} == {7}
    for condition, (speech_share, text_share) in zip(ROBUSTNESS_CONDITIONS, [(0.3, 0.0), (0.0, 0.6), (0.3, 0.6)]):
        scores = curve["conditions"][condition]
        expected_accuracy = [1.0 - np.mean(draws < (speech_share + text_share) * p) for p in probabilities]
        np.testing.assert_allclose(scores["accuracy"], expected_accuracy)
        assert scores["weighted_f1"][0] == 1.0
        assert np.all(np.diff(scores["weighted_f1"]) <= 0) and scores["weighted_f1"][-1] < 1.0
    assert curve["conditions"]["text"]["accuracy"][-1] < curve["conditions"]["speech"]["accuracy"][-1]

    write_robustness_report(tmp_path, curve)
    assert {path.name for path in tmp_path.iterdir()} == {"robustness.json", "robustness.png"}
    assert json.loads((tmp_path / "robustness.json").read_text()) == curve
    _assert_png(tmp_path / "robustness.png")


def embedded_split(scale: float = 1.0):
    """Two conversations of three utterances with both embeddings, at `tiny_config`'s widths and labels."""
    from mister_e.data import make_dialogue_dataset

    rng = np.random.default_rng(0)
    return make_dialogue_dataset([{"dialogue_id": f"d{i}", "labels": [0, 1, 2],
                                   "speech_embeds": (scale * rng.standard_normal((3, 6))).tolist(),
                                   "text_embeds": rng.standard_normal((3, 5)).tolist()} for i in range(2)],
                                 ["emotion_0", "emotion_1", "emotion_2"])


def test_a_model_that_needs_both_modalities_gets_no_empty_robustness_report(tmp_path):
    """A cross-modal-only model cannot answer after any condition drops a modality, so no curve is drawn: the report
    was an empty robustness.json and a figure of bare axes (with matplotlib's warning of a legend of nothing)."""
    from tiny import tiny_config

    from mister_e import MisterEForEmotionRecognition
    from mister_e.training import evaluate_model

    split = embedded_split()
    model = MisterEForEmotionRecognition(tiny_config(experts=["cross_modal"])).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a figure with nothing to draw
        result = evaluate_model(model, split, tmp_path, probabilities=(0.0, 0.5))
    assert result["robustness"] is None and (tmp_path / "metrics.json").is_file()
    assert not list(tmp_path.glob("robustness.*"))


def test_summarize_seeds_matches_numpy():
    rng = np.random.default_rng(4)
    runs = [
        {
            "weighted_f1": float(rng.random()),
            "accuracy": float(rng.random()),
            "f1_per_class": {"joy": float(rng.random()), "anger": float(rng.random())},
            "label_names": ["joy", "anger"],
            "confusion_matrix": [[1, 0], [0, 1]],
        }
        for _ in range(3)
    ]
    summary = summarize_seeds(runs)

    assert list(summary) == ["weighted_f1", "accuracy", "f1_per_class/joy", "f1_per_class/anger"]
    for key, values in [
        ("weighted_f1", [run["weighted_f1"] for run in runs]),
        ("f1_per_class/anger", [run["f1_per_class"]["anger"] for run in runs]),
    ]:
        assert summary[key]["mean"] == pytest.approx(np.mean(values))
        assert summary[key]["std"] == pytest.approx(np.std(values, ddof=1))
        assert summary[key]["n"] == 3
    assert summarize_seeds(runs[:1])["accuracy"] == {"mean": runs[0]["accuracy"], "std": 0.0, "n": 1}

    table = format_seed_table({"MiSTER-E": summary, "text only": summarize_seeds(runs[:1])}, metrics=["weighted_f1"])
    mean, std = summary["weighted_f1"]["mean"] * 100, summary["weighted_f1"]["std"] * 100
    assert table.splitlines() == [
        "| metric | MiSTER-E (n=3) | text only (n=1) |",
        "|---|---|---|",
        f"| weighted_f1 | {mean:.1f} ± {std:.1f} | {runs[0]['weighted_f1'] * 100:.1f} |",  # one run: no spread known
    ]
    assert "| macro_f1 | – |" in format_seed_table(summary)


def test_seed_summaries_average_a_class_over_the_runs_that_define_its_f1():
    """A class absent from some runs' test split has no F1 there (None): it was left out of the summary entirely."""
    runs = [{"test": {"weighted_f1": 0.6, "f1_per_class": {"joy": 0.5, "fear": None, "anger": None}}},
            {"test": {"weighted_f1": 0.7, "f1_per_class": {"joy": 0.7, "fear": 0.2, "anger": None}}},
            {"test": {"weighted_f1": 0.8, "f1_per_class": {"joy": 0.9, "fear": 0.4, "anger": None}}}]
    summary = summarize_seeds(runs)

    assert summary["test/f1_per_class/joy"] == pytest.approx({"mean": 0.7, "std": 0.2, "n": 3})
    assert summary["test/f1_per_class/fear"] == pytest.approx({"mean": 0.3, "std": np.std([0.2, 0.4], ddof=1),
                                                               "n": 2})
    assert summary["test/f1_per_class/anger"] == {"mean": None, "std": None, "n": 0}
    json.dumps(summary, allow_nan=False)  # summary.json stays JSON
    table = format_seed_table(summary, ["test/weighted_f1", *(f"test/f1_per_class/{c}" for c in ("fear", "anger"))])
    assert table.splitlines() == ["| metric | mean ± std (n=3) |", "|---|---|", "| test/weighted_f1 | 70.0 ± 10.0 |",
                                  "| test/f1_per_class/fear | 30.0 ± 14.1 (2 of 3 runs) |",
                                  "| test/f1_per_class/anger | n/a |"]
    partial = summarize_seeds([runs[2], runs[0]])
    assert "| 40.0 (1 of 2 runs) |" in format_seed_table(partial, ["test/f1_per_class/fear"])


def test_report_of_a_split_missing_a_class(tmp_path):
    references = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 3, 1, 1, 2, 0])  # class 3 predicted, never a reference
    report = write_evaluation_report(tmp_path, predictions=predictions, references=references, label_names=LABELS[:4])
    metrics = json.loads((tmp_path / "metrics.json").read_text(),
                         parse_constant=lambda name: pytest.fail(f"metrics.json holds a bare {name}"))
    assert metrics == report and metrics["f1_per_class"]["sadness"] is None
    assert metrics["predicted_per_class"]["sadness"] == 1  # its false positive stays visible
    text = (tmp_path / "classification_report.txt").read_text()
    assert "No reference utterance is of sadness: the zeros in its row above are scikit-learn's convention" in text
    full = tmp_path / "full"
    write_evaluation_report(full, predictions=predictions % 3, references=references, label_names=LABELS[:3])
    assert "No reference utterance" not in (full / "classification_report.txt").read_text()


def test_dominant_expert_shares_ties():
    """The `mean` gate weighs every expert 1/3: no expert dominates, so each gets a third, not the first all of it."""
    from mister_e.gates import summarize_gates

    weights = np.array([[1 / 3, 1 / 3, 1 / 3], [0.1, 0.7, 0.2], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    dominant = summarize_gates(weights, np.array([0, 1, 0, 1]), ["a", "b"])["dominant_fraction"]
    assert dominant == pytest.approx({"speech": (1 / 3 + 0.5) / 4, "text": (1 / 3 + 1 + 0.5) / 4,
                                      "cross_modal": (1 / 3 + 1) / 4})
    assert sum(dominant.values()) == pytest.approx(1.0)


def test_gate_plot_legend_covers_no_plot_and_every_expert_is_drawn():
    """The legend sat inside the bar chart (covering two bars), and step histograms hid each other at 0."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from mister_e.gates import plot_gate_weights

    rng = np.random.default_rng(0)
    weights = rng.dirichlet([1.0, 5.0, 2.0], size=60)
    weights[:, 0] = 0.0  # an expert the gate never uses: all of its mass in the first bin
    figure = plot_gate_weights(weights / weights.sum(1, keepdims=True), rng.integers(0, len(LABELS), 60), LABELS)
    FigureCanvasAgg(figure).draw()
    legend = figure.legends[0]
    assert [text.get_text() for text in legend.get_texts()] == list(GATE_NAMES)
    assert not any(legend.get_window_extent().overlaps(axes.get_window_extent()) for axes in figure.axes)
    histogram = figure.axes[1]
    drawn = {patch.get_facecolor() for patch in histogram.patches if patch.get_height() > 0}
    assert len(drawn) == len(GATE_NAMES)  # a visible bar of every expert's colour


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".jpg", b"\xff\xd8"), (".svg", b"<?xml"),
                                           (".pdf", b"%PDF")])
def test_figures_are_written_in_the_format_their_suffix_names(tmp_path, suffix, magic):
    from matplotlib.figure import Figure

    from mister_e.utils import save_figure

    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    save_figure(figure, tmp_path / f"plot{suffix}")
    assert (tmp_path / f"plot{suffix}").read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [f"plot{suffix}"]  # no temporary file left


def test_characters_a_figure_cannot_draw_are_named_once(tmp_path, caplog):
    """Labels in a script the font lacks (CJK, emoji) gave matplotlib's two warning lines per character and figure."""
    from matplotlib.figure import Figure

    from mister_e.utils import save_figure

    figure = Figure()
    figure.add_subplot().set_xticks([0, 1], ["joie", "\ue000\ue001"])  # private-use characters: in no font
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        save_figure(figure, tmp_path / "plot.png")
    assert not [str(warning.message) for warning in caught if "Glyph" in str(warning.message)]
    assert [record.getMessage() for record in caplog.records] == [
        f"{tmp_path / 'plot.png'}: the plot's font cannot draw \ue000 \ue001 (drawn as boxes)"]


def test_non_finite_predictions_of_a_float16_model_say_so(tmp_path):
    """Finite weights in float16 overflow beyond 65504 where float32 does not (embeddings of 1e6): the refusal blamed
    the inputs' scale alone, where loading the model in bfloat16 or float32 answers them."""
    from tiny import tiny_config

    from mister_e import MisterEForEmotionRecognition
    from mister_e.training import evaluate_model

    torch.manual_seed(0)
    model = MisterEForEmotionRecognition(tiny_config()).eval()
    split = embedded_split(scale=1e6)
    assert evaluate_model(model, split, tmp_path / "fp32", robustness=False)["metrics"]  # float32 answers them
    with pytest.raises(ValueError, match=r"but its weights are: in float16 .* load it in bfloat16 or float32"):
        evaluate_model(model.half(), split, tmp_path / "fp16", robustness=False)
