"""A gate that learns which expert to trust: in-model input standardisation, a gate held-out set, its own lr."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, Features, Sequence, Value
from datasets import ClassLabel

from mister_e import MisterEConfig, MisterEForEmotionRecognition
from mister_e.experts_mister_e import mix_experts
from mister_e.training import (
    GATE_HOLDOUT_COLUMN,
    MisterEDataCollator,
    build_trainer,
    evaluate_model,
    fit_input_statistics,
    load_recipe,
    train_conversation_model,
    with_gate_holdout,
)

from tiny import tiny_sizes

TINY = {**tiny_sizes(), "id2label": {0: "a", 1: "b", 2: "c"}}


def tiny(**overrides) -> MisterEForEmotionRecognition:
    torch.manual_seed(0)
    return MisterEForEmotionRecognition(MisterEConfig(speech_embed_dim=6, text_embed_dim=5, **{**TINY, **overrides}))


def test_standardisation_is_applied_saved_and_used_by_step(tmp_path):
    speech, text = 3 + 5 * torch.randn(40, 6), -2 + 0.1 * torch.randn(40, 5)
    model = tiny(standardize_inputs=True, causal=True).eval()
    model.speech_standardizer.fit(speech)
    model.text_standardizer.fit(text)
    plain = tiny(causal=True).eval()  # same initial weights, no standardizers
    assert set(model.state_dict()) - set(plain.state_dict()) == {
        "speech_standardizer.mean", "speech_standardizer.std", "text_standardizer.mean", "text_standardizer.std"}
    inputs = speech[:4][None], text[:4][None]
    standardized = ((inputs[0] - speech.mean(0)) / speech.std(0, unbiased=False),
                    (inputs[1] - text.mean(0)) / text.std(0, unbiased=False))
    with torch.no_grad():
        expected = plain(speech_embeds=standardized[0], text_embeds=standardized[1]).logits
        assert torch.allclose(model(speech_embeds=inputs[0], text_embeds=inputs[1]).logits, expected, atol=1e-5)
        state, stepped = None, []
        for i in range(4):
            output, state = model.step(inputs[0][:, i], inputs[1][:, i], state=state)
            stepped.append(output.logits)
        assert torch.allclose(torch.cat(stepped, 1), expected, atol=1e-5)

    model.save_pretrained(tmp_path)
    reloaded = MisterEForEmotionRecognition.from_pretrained(tmp_path).eval()
    saved, loaded = model.state_dict(), reloaded.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[key], loaded[key]) for key in saved)
    with torch.no_grad():  # same weights; CPU GRU kernels may differ in the last bits between calls
        assert torch.allclose(reloaded(speech_embeds=inputs[0], text_embeds=inputs[1]).logits,
                              model(speech_embeds=inputs[0], text_embeds=inputs[1]).logits, rtol=0, atol=1e-6)


def test_missing_and_padded_utterances_stay_zero_after_standardisation():
    model = tiny(standardize_inputs=True).eval()
    model.speech_standardizer.fit(5 + torch.randn(20, 6))
    model.text_standardizer.fit(5 + torch.randn(20, 5))
    seen = {}
    model.speech_expert.register_forward_hook(lambda module, args, out: seen.update(speech=args[0]))
    mask = torch.tensor([[1, 1, 0]])
    modality = torch.tensor([[[True, True], [False, True], [False, False]]])
    with torch.no_grad():
        model(speech_embeds=torch.randn(1, 3, 6), text_embeds=torch.randn(1, 3, 5), attention_mask=mask,
              modality_mask=modality)
    assert seen["speech"][0, 0].abs().sum() > 0
    assert torch.equal(seen["speech"][0, 1:], torch.zeros(2, 6))


def embedded_rows(n, length, rng, centres):
    """Conversations whose text embeddings carry the label (around `centres`) and whose speech embeddings are pure
    noise."""
    rows = []
    for d in range(n):
        labels = rng.integers(0, 3, length)
        text = centres[labels] + rng.standard_normal((length, 5))
        speech = rng.standard_normal((length, 6)) * 3 + 10
        rows.append({"dialogue_id": f"d{d}", "utterance_ids": [f"u{i}" for i in range(length)],
                     "labels": labels.tolist(), "speech_embeds": speech.tolist(), "text_embeds": text.tolist()})
    return rows


FEATURES = Features({"dialogue_id": Value("string"), "utterance_ids": Sequence(Value("string")),
                     "labels": Sequence(ClassLabel(names=["a", "b", "c"])),
                     "speech_embeds": Sequence(Sequence(Value("float32"))),
                     "text_embeds": Sequence(Sequence(Value("float32")))})


def synthetic(rng, sizes=(40, 10, 20), length=6) -> DatasetDict:
    centres = rng.standard_normal((3, 5)) * 2
    return DatasetDict({split: Dataset.from_list(embedded_rows(n, length, rng, centres), features=FEATURES)
                        for split, n in zip(("train", "validation", "test"), sizes)})


def test_gate_holdout_splits_the_losses():
    model = tiny(gate_holdout_fraction=0.5).train()
    batch = dict(speech_embeds=torch.randn(2, 4, 6), text_embeds=torch.randn(2, 4, 5),
                 labels=torch.randint(0, 3, (2, 4)))
    for held_out in (True, False):
        model.zero_grad()
        model(**batch, gate_holdout=torch.tensor([held_out, held_out])).loss.backward()
        gate_grad = sum(p.grad.abs().sum() for p in model.gate.parameters())
        expert_grad = sum(p.grad.abs().sum() for p in model.text_expert.parameters() if p.grad is not None)
        # Held out: only the gate learns (from detached expert logits); otherwise only the experts do.
        assert (gate_grad > 0) == held_out and (expert_grad > 0) == (not held_out)


def test_holdout_column_and_collator(tmp_path):
    dataset = synthetic(np.random.default_rng(0), sizes=(10, 2, 2))
    held = with_gate_holdout(dataset, 0.2, seed=3)
    flags = held["train"][GATE_HOLDOUT_COLUMN]
    assert sum(flags) == 2 and flags == with_gate_holdout(dataset, 0.2, seed=3)["train"][GATE_HOLDOUT_COLUMN]
    assert GATE_HOLDOUT_COLUMN not in held["validation"].column_names
    assert sum(with_gate_holdout(dataset, 0.001, 0)["train"][GATE_HOLDOUT_COLUMN]) == 1  # never none
    assert sum(with_gate_holdout(dataset, 0.999, 0)["train"][GATE_HOLDOUT_COLUMN]) == 9  # never all
    batch = MisterEDataCollator()([held["train"][i] for i in range(4)])
    assert batch[GATE_HOLDOUT_COLUMN].tolist() == flags[:4]


@pytest.mark.parametrize("text_layers", [1, 5])
def test_gate_has_its_own_learning_rate(tmp_path, text_layers):
    dataset = synthetic(np.random.default_rng(0), sizes=(4, 2, 2))
    model = tiny(text_layers=text_layers)
    trainer = build_trainer(model, dataset, tmp_path, MisterEDataCollator(), {"learning_rate": 1e-4, "report_to": "none"},
                            gate_learning_rate=0.05)
    optimizer = trainer.create_optimizer()
    gate = {id(p) for p in model.gate.parameters()}
    if text_layers > 1:  # a few weights, as slow to leave their start as the gate's
        gate.add(id(model.text_layer_mix.weights))
    groups = [(group["lr"], {id(p) for p in group["params"]}) for group in optimizer.param_groups]
    assert set().union(*(ids for lr, ids in groups if lr == 0.05)) == gate
    assert all(not (ids & gate) and lr == 1e-4 for lr, ids in groups if lr != 0.05)
    assert sum(len(ids) for _, ids in groups) == len(list(model.parameters()))


def test_fit_input_statistics_uses_present_training_vectors():
    dataset = synthetic(np.random.default_rng(1), sizes=(5, 2, 2))
    model = tiny(standardize_inputs=True)
    fit_input_statistics(model, dataset["train"])
    for modality in ("speech", "text"):
        vectors = np.concatenate([np.asarray(row, np.float64) for row in dataset["train"][f"{modality}_embeds"]])
        standardizer = getattr(model, f"{modality}_standardizer")
        assert torch.allclose(standardizer.mean.double(), torch.from_numpy(vectors.mean(0)), atol=1e-4)
        assert torch.allclose(standardizer.std.double(), torch.from_numpy(vectors.std(0)), atol=1e-4)


def test_standardisation_without_embeddings_to_fit_is_said(caplog):
    """End-to-end training reads raw audio and text: no embedding column to fit on, so the standardizer stays the
    identity, which the caller is told rather than left to believe the inputs are standardized."""
    dataset = synthetic(np.random.default_rng(1), sizes=(5, 2, 2))["train"].remove_columns("speech_embeds")
    model = tiny(standardize_inputs=True)
    with caplog.at_level("WARNING"):
        fit_input_statistics(model, dataset)
    assert "no `speech_embeds` column to fit the speech statistics on" in caplog.text
    assert "text statistics" not in caplog.text and model.text_standardizer.mean.any()
    assert not model.speech_standardizer.mean.any() and bool((model.speech_standardizer.std == 1).all())


@pytest.mark.parametrize("gate", [{}, {"gate_holdout_fraction": 0.2}], ids=["small-recipe", "held-out-gate"])
def test_gate_learns_to_drop_a_noise_expert(tmp_path, gate):
    """Speech is pure noise: on held-out test conversations the gate gives it < 0.1 and the mixture is as good as the
    clean text expert, within the small recipe's budget (as it is, and with a held-out gate)."""
    recipe = load_recipe("small")
    dataset = synthetic(np.random.default_rng(0), sizes=(60, 12, 20))
    train_conversation_model(
        dataset, tmp_path / "run", {**recipe["config"], **TINY, **gate}, {**recipe["training"], "num_train_epochs": 20},
        seed=0, gate_learning_rate=recipe["gate_learning_rate"], report=False,
    )
    model = MisterEForEmotionRecognition.from_pretrained(tmp_path / "run")
    metrics = evaluate_model(model, dataset["test"], tmp_path / "report", robustness=False)["metrics"]
    assert metrics["gates"]["mean"]["speech"] < 0.1
    with torch.no_grad():
        test = MisterEDataCollator()(list(dataset["test"]))
        labels = test.pop("labels")
        output = model.eval()(**test)
    text_expert = (output.expert_logits[:, :, 1].argmax(-1) == labels).float().mean().item()
    assert metrics["accuracy"] >= text_expert - 0.03 and text_expert > 0.6  # chance: 1/3


def test_probability_mixture_is_the_log_of_the_weighted_expert_probabilities():
    model = tiny(mixture_space="probabilities").eval()
    mask = torch.tensor([[1, 1, 1, 0]])
    modality = torch.tensor([[[True, True], [False, True], [True, False], [False, False]]])
    with torch.no_grad():
        output = model(speech_embeds=torch.randn(1, 4, 6), text_embeds=torch.randn(1, 4, 5), attention_mask=mask,
                       modality_mask=modality)
    expected = (output.gate_weights[..., None] * output.expert_logits.softmax(-1)).sum(-2).log()
    assert torch.allclose(output.logits[:, :3], expected[:, :3], atol=1e-6)
    assert torch.allclose(output.logits[:, :3].exp().sum(-1), torch.ones(1, 3), atol=1e-6)  # a distribution
    # An utterance without speech: the experts that need it get weight 0 and the text expert alone answers.
    assert torch.allclose(output.gate_weights[0, 1], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(output.logits[0, 1], output.expert_logits[0, 1, 1].log_softmax(-1), atol=1e-6)
    assert torch.isfinite(output.logits).all()  # the padded utterance included


def test_probability_mixture_rewards_the_gate_for_trusting_the_right_expert():
    """The mixture loss's gradient pushes the gate's weight towards the expert that gives the label most probability,
    whatever the scale of the other experts' logits (in logit space a large-logit expert dominates instead)."""
    model = tiny(mixture_space="probabilities")
    expert_logits = torch.zeros(1, 3, 3, 3)
    expert_logits[..., 0, :] = torch.tensor([-20.0, 20.0, 0.0])  # speech: confident and wrong
    expert_logits[..., 1, :] = torch.tensor([2.0, 0.0, 0.0])  # text: right, mildly
    available = torch.ones(1, 3, 3, dtype=torch.bool)
    weights = torch.full((1, 3, 3), 1 / 3, requires_grad=True)
    loss = -mix_experts(model.config.mixture_space, weights, expert_logits).log_softmax(-1)[..., 0].mean()
    loss.backward()
    assert (weights.grad[..., 1] < weights.grad[..., 0]).all()  # descending the loss moves weight to text
    assert torch.isfinite(model._mix(expert_logits, available)[2]).all()
