"""Checkpoints and resuming: interrupted runs resume exactly (weights, early stopping, paced checkpoints, best and
averaged weights), checkpoint files are written safely, and a run folder records the one run it holds."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
import torch
from datasets import DatasetDict
from safetensors.torch import load_file
from transformers import TrainerCallback

from mister_e.cli import main
from mister_e.training.checkpoints import BEST_WEIGHTS
from mister_e.training import train_conversation_model

from tiny_corpus import FAST, SIZES, corpus


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
