"""Training runs: stage 2 (learning, batching, precision, accumulation, clipping, memory, seeds, divergence),
stage 1 (LoRA and frozen encoders), and the recipes and ablations `train` runs them from."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from datasets import DatasetDict, load_from_disk
from safetensors.torch import load_file
from transformers import BertConfig, BertModel, TrainerCallback

from mister_e import MisterEConfig, MisterEForEmotionRecognition, MisterEForUtteranceClassification
from mister_e.assembly import conversation_fingerprint, folder_kind
from mister_e.data.schema import embedding_feature
from mister_e.evaluation import load_erc_metric
from mister_e.cli import main
from mister_e.processing_mister_e import MisterEProcessor
from mister_e.recipes import parse_sets
import mister_e.training.trainer as trainer_module
from mister_e.training.fitting import data_config
from mister_e.training import (
    ABLATIONS,
    MisterEDataCollator,
    apply_ablation,
    build_trainer,
    evaluate_model,
    flatten_utterances,
    load_recipe,
    train_conversation_model,
    train_encoder,
    train_seeds,
)

from tiny_corpus import FAST, LABELS, SIZES, SPEECH_DIM, TEXT_DIM, WORDS, conversations, corpus


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


# --- seeds, recipes ------------------------------------------------------------------------------------------------


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
