"""Recipes: bad values, `--set` pairs and recipe files are refused at load time in one line naming the field or file."""

from __future__ import annotations

import re

import pytest
from huggingface_hub.errors import StrictDataclassError

from mister_e.cli import main
from mister_e.recipes import check_checkpoint_budget, load_recipe, parse_sets


@pytest.mark.parametrize("overrides, named", [
    ({"num_train_epochs": 0}, "training.num_train_epochs must be > 0, got 0"),
    ({"num_train_epochs": -1}, "training.num_train_epochs must be > 0, got -1"),
    ({"num_train_epochs": float("nan")}, "training.num_train_epochs must be a finite number, got nan"),
    ({"max_steps": 0}, "training.max_steps must be > 0"),
    ({"per_device_train_batch_size": 0}, "training.per_device_train_batch_size must be >= 1, got 0"),
    ({"per_device_eval_batch_size": 0}, "training.per_device_eval_batch_size must be >= 1, got 0"),
    ({"gradient_accumulation_steps": 0}, "training.gradient_accumulation_steps must be >= 1, got 0"),
    ({"learning_rate": -1e-3}, "training.learning_rate must be >= 0, got -0.001"),
    ({"weight_decay": -0.1}, "training.weight_decay must be >= 0, got -0.1"),
])
def test_training_that_would_train_nothing_is_refused(overrides, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        load_recipe("small", overrides)


@pytest.mark.parametrize("overrides, named", [
    ({"lr_scheduler_type": "bogus"}, "training.lr_scheduler_type must be one of ['linear', 'cosine'"),
    ({"optim": "adamw"}, "training.optim must be one of ['adamw_torch', "),
    ({"eval_strategy": "epochs"}, "training.eval_strategy must be one of ['no', 'steps', 'epoch'], got 'epochs'"),
    ({"save_strategy": "sometimes"}, "training.save_strategy must be one of ["),
    # torch's optimizer refused these as training began, naming no field
    ({"adam_beta1": 2}, "training.adam_beta1 must be in [0, 1), got 2"),
    ({"adam_beta2": -0.1}, "training.adam_beta2 must be in [0, 1), got -0.1"),
    ({"adam_epsilon": -1e-8}, "training.adam_epsilon must be >= 0, got -1e-08"),
    # the Trainer refused these once the data had loaded, or Python's TypeError at the first step, or took them and
    # changed nothing (a save_total_limit below 1 keeps every checkpoint; the constant schedule takes no arguments)
    ({"report_to": "bogus"}, "training.report_to must be one or a list of ['none', 'all', "),
    ({"report_to": ["tensorboard", "bogus"]}, "training.report_to must be one or a list of ['none', 'all', "),
    ({"save_total_limit": -3}, "training.save_total_limit must be >= 1, got -3"),
    ({"dataloader_num_workers": -1}, "training.dataloader_num_workers must be >= 0, got -1"),
    ({"lr_scheduler_kwargs": 3}, "training.lr_scheduler_kwargs must be a mapping of the schedule's arguments"),
    ({"lr_scheduler_kwargs": {"num_cycles": 2}}, "training.lr_scheduler_kwargs {'num_cycles': 2}: the constant "
                                                 "schedule takes no arguments"),
    ({"lr_scheduler_kwargs": {"cycles": 2}, "lr_scheduler_type": "cosine"},
     "training.lr_scheduler_kwargs {'cycles': 2} do not fit the cosine schedule: "),
    ({"lr_scheduler_type": "cosine_with_min_lr"}, "training.lr_scheduler_kwargs {} do not fit the cosine_with_min_lr "
                                                  "schedule: One of min_lr or min_lr_rate should be set"),
])
def test_training_values_the_trainer_would_refuse_late_are_refused_now(overrides, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        load_recipe("small", overrides)
    good = {"lr_scheduler_type": "cosine", "optim": "adamw_torch", "eval_strategy": "epoch", "save_strategy": "best",
            "adam_beta1": 0.8, "adam_beta2": 0.99, "adam_epsilon": 0, "report_to": "all",
            "save_total_limit": None, "dataloader_num_workers": 0, "lr_scheduler_kwargs": {}}
    key = next(iter(overrides))
    assert load_recipe("small", {key: good[key]})["training"][key] == good[key]


def test_report_to_a_logger_not_installed_is_refused_naming_its_package(monkeypatch):
    """The Trainer refused it once the data had loaded; whether it is installed is read without importing it."""
    import mister_e.recipes as recipes

    installed = {"tensorboardX"}
    monkeypatch.setattr(recipes, "find_spec", lambda name: object() if name in installed else None)
    for report_to, package in (("wandb", "wandb"), (["tensorboard", "comet_ml"], "comet_ml"), ("flyte", "flytekit")):
        with pytest.raises(ValueError, match=re.escape(f"`{package}` is not installed")):
            load_recipe("small", {"report_to": report_to})
    for report_to in ("tensorboard", "all", "none", []):  # tensorboardX serves TensorBoard; `all`: the installed ones
        assert load_recipe("small", {"report_to": report_to})["training"]["report_to"] == report_to


def test_max_steps_stands_for_the_epochs_and_minus_one_unsets_it():
    """Trainer trains `max_steps` steps when it is > 0 whatever `num_train_epochs` says, and epochs when it is < 0."""
    assert load_recipe("small", {"max_steps": 5, "num_train_epochs": 0})["training"]["max_steps"] == 5
    assert load_recipe("small", {"max_steps": -1})["training"]["num_train_epochs"] == 40


@pytest.mark.parametrize("overrides, named", [
    ({"learning_rate": "abc"}, "training.learning_rate must be a number, got 'abc'"),
    ({"checkpoint_budget": "abc"}, "training.checkpoint_budget must be a number, got 'abc'"),
    ({"per_device_train_batch_size": 2.5}, "training.per_device_train_batch_size must be an integer, got 2.5"),
    ({"dataloader_num_workers": True}, "training.dataloader_num_workers must be an integer, got True"),
    ({"learning_rate": float("inf")}, "training.learning_rate must be a finite number, got inf"),
    ({"max_grad_norm": float("nan")}, "training.max_grad_norm must be a finite number, got nan"),
    ({"bf16": 1}, "training.bf16 must be true or false, got 1"),
    ({"training.optim": 3}, "training.optim must be a string, got 3"),
    ({"save_total_limit": "two"}, "training.save_total_limit must be an integer or null, got 'two'"),
])
def test_training_values_must_have_their_fields_type(overrides, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        load_recipe("small", overrides)


@pytest.mark.parametrize("key, named", [
    ("seed", "training.seed cannot be set: each run's seed is given by --seeds"),
    ("training.data_seed", "training.data_seed cannot be set"),
    ("label_smoothing_factor", "training.label_smoothing_factor cannot be set: it would replace MiSTER-E's loss"),
    ("greater_is_better", "training.greater_is_better cannot be set: the direction follows metric_for_best_model"),
])
def test_training_fields_the_recipe_sets_otherwise_are_refused(key, named):
    """Trainer's own seed would clash with each run's seed (a TypeError deep in training), and its label smoother
    would silently train another loss."""
    with pytest.raises(ValueError, match=re.escape(named)):
        load_recipe("small", {key: 1})


def test_selection_of_the_best_validation_epoch_cannot_be_turned_off():
    """Without it the run's model is the last epoch's while results.json names the selected one."""
    with pytest.raises(ValueError, match=re.escape("training.load_best_model_at_end must be true")):
        load_recipe("small", {"load_best_model_at_end": False})
    assert load_recipe("small", {"load_best_model_at_end": True})["training"]["load_best_model_at_end"] is True


@pytest.mark.parametrize("field", ["gate_temperature", "kl_weight", "supcon_temperature", "layer_norm_eps",
                                   "encoder_focal_gamma"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_config_numbers_must_be_finite(field, value):
    with pytest.raises(StrictDataclassError, match=re.escape(f"`{field}` must be a finite number, got {value!r}")):
        load_recipe("small", {f"config.{field}": value})


def test_training_values_of_a_compatible_type_are_taken():
    training = load_recipe("small", {"learning_rate": 1, "max_steps": 1e3, "save_total_limit": None, "bf16": True,
                                     "optim": "adamw_torch"})["training"]
    assert training["learning_rate"] == 1 and training["save_total_limit"] is None and training["bf16"] is True
    assert training["max_steps"] == 1000 and isinstance(training["max_steps"], int)  # `--set max_steps=1e3`
    with pytest.raises(ValueError, match=re.escape("checkpoint_budget must be in [0, 1)")):
        check_checkpoint_budget("abc")  # also when `MisterETrainingArguments` is built directly


@pytest.mark.parametrize("key, value, expected", [
    ("seeds", "abc", "a non-empty list of distinct integers >= 0"),
    ("seeds", [], "a non-empty list of distinct integers >= 0"),
    ("seeds", [0, 1.5], "a non-empty list of distinct integers >= 0"),
    ("seeds", [0, 0], "a non-empty list of distinct integers >= 0"),  # trained once, it counted as n=1 of "[0, 0]"
    ("gate_learning_rate", "abc", "a positive number or null"),
    ("gate_learning_rate", 0, "a positive number or null"),
    ("modality_dropout", 1, "a number in [0, 1)"),
    ("modality_dropout", -0.1, "a number in [0, 1)"),
    ("modality_dropout", "abc", "a number in [0, 1)"),
    ("early_stopping_patience", 0, "a positive integer or null"),
    ("early_stopping_patience", 2.5, "a positive integer or null"),
    ("modalities", [], "a non-empty list of ['speech', 'text']"),
    ("modalities", "speech", "a non-empty list of ['speech', 'text']"),
    ("modalities", ["voice"], "a non-empty list of ['speech', 'text']"),
    ("dataset", 3, "a path"),  # os.fspath's TypeError, a traceback from the CLI
    ("output_dir", ["runs"], "a path"),
    ("output_dir", "", "a path"),  # the working folder, written into
    ("name", [1], "a string"),
])
def test_recipe_keys_are_checked(key, value, expected):
    with pytest.raises(ValueError, match=re.escape(f"{key} must be {expected}") + ".*, got " + re.escape(repr(value))):
        load_recipe("small", {key: value})


def test_a_yaml_boolean_for_a_word_says_to_quote_it():
    """`--set eval_strategy=no` reaches the field as False: "must be a string, got False" left the user guessing."""
    with pytest.raises(ValueError, match=r"eval_strategy must be a string \(YAML reads no, yes, off and on as false or "
                                         r"true: quote the word, e\.g\. 'no'\), got False"):
        load_recipe("small", parse_sets(["eval_strategy=no"]))


@pytest.mark.parametrize("key", ["id2label", "config.label2id", "config.num_labels"])
def test_the_data_s_classes_are_not_renamed_by_a_recipe(key):
    """`--set id2label=...` trained and reported under the renamed classes, refused only by the final test report."""
    with pytest.raises(ValueError, match=r"sets config\.\w+: the classes come with the data"):
        load_recipe("small", {key: {0: "a", 1: "b"}})


@pytest.mark.parametrize("key", ["speech_config", "config.text_config"])
def test_a_backbone_config_is_refused_by_a_recipe(key):
    """A stage-2 model trains on embeddings: a backbone config in a recipe built it an encoder of random weights,
    saved with the run and never read (the model then looked end to end)."""
    with pytest.raises(ValueError, match=rf"sets config\.{key.split('.')[-1]}: stage 2 reads embeddings, so a \w+ "
                                         r"backbone would have random weights"):
        load_recipe("small", {key: {"model_type": "bert"}})


def test_good_recipe_keys_are_taken():
    recipe = load_recipe("small", {"seeds": [3, 4], "gate_learning_rate": None, "modality_dropout": 0,
                                   "early_stopping_patience": None, "modalities": ["text"]})
    assert recipe["seeds"] == [3, 4] and recipe["modalities"] == ["text"] and recipe["gate_learning_rate"] is None
    # The embeddings' widths come with the data: a layer count that no default width divides is checked then.
    assert load_recipe("small", {"config.text_layers": 7})["config"]["text_layers"] == 7
    with pytest.raises(StrictDataclassError, match="text_layers"):
        load_recipe("small", {"config.text_layers": 7, "config.text_embed_dim": 100})


@pytest.mark.parametrize("pair", ["experts=[speech", 'name="meld', "config={a: 1"])
def test_a_set_pair_that_is_not_yaml_is_named(pair):
    with pytest.raises(ValueError, match=re.escape(f"--set {pair!r} is not valid YAML")):
        parse_sets([pair])


@pytest.mark.parametrize("text, named", [
    ("config: {experts: [speech\n", "is not valid YAML"),
    ("seeds: [0]\n  bad: indent\n", "is not valid YAML"),
    (b"name: caf\xe9\n", "is not valid YAML"),  # Latin-1, not UTF-8
    ("- a\n- b\n", "must be a mapping of recipe keys"),
    ("just a string\n", "must be a mapping of recipe keys"),
    ("training: [a, b]\n", ": `training` must be a mapping"),
    ("config: 3\n", ": `config` must be a mapping"),
])
def test_a_malformed_recipe_file_is_named(text, named, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=re.escape(f"Recipe {path}") + ".*" + re.escape(named)):
        load_recipe(path)


def test_empty_recipe_sections_are_empty(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("seeds: [0]\nconfig:\ntraining:\n")
    recipe = load_recipe(path)
    assert recipe["config"] == {} and recipe["training"]["num_train_epochs"] == 100


@pytest.mark.parametrize("arguments, named", [
    (["--set", "num_train_epochs=0"], "num_train_epochs must be > 0"),
    (["--set", "learning_rate=abc"], "learning_rate must be a number, got 'abc'"),
    (["--set", "seeds=abc"], "seeds must be a non-empty list"),
    (["--set", "seed=3"], "training.seed cannot be set"),
    (["--set", "config.gate_temperature=.nan"], "`gate_temperature` must be a finite number"),
    (["--set", "experts=[speech"], "--set 'experts=[speech' is not valid YAML"),
    # Python's TypeError from inside the config, a traceback:
    (["--set", "conv_kernel_sizes=3"], "`conv_kernel_sizes` must be a list of whole numbers, got 3"),
    (["--set", "experts=null"], "`experts` must be an expert's name or a list of them, got None"),
    # taken, and changed nothing:
    (["--set", "experts=[text]", "context_module={speech: gru}"], "`context_module` sets speech ('gru'), but the "
                                                                  "speech expert is off"),
    # refused by the Trainer after the data had loaded, naming no field:
    (["--set", "lr_scheduler_type=cosin"], "training.lr_scheduler_type must be one of ['linear', 'cosine'"),
    (["--set", "adam_beta2=1.5"], "training.adam_beta2 must be in [0, 1), got 1.5"),
    (["--set", "training.report_to=bogus"], "training.report_to must be one or a list of"),
    (["--set", "lr_scheduler_type=cosine", "lr_scheduler_kwargs=3"], "training.lr_scheduler_kwargs must be a mapping"),
])
def test_bad_train_input_is_one_line_exit_2_and_touches_nothing(arguments, named, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "--recipe", "small", "--dataset", str(tmp_path / "data"), "--output-dir", str(runs),
                 *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("mister-e train: error:") and named in error, error
    assert not runs.exists()


def test_a_malformed_recipe_file_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("config: {experts: [speech\n")
    assert main(["train", "--recipe", str(path), "--dataset", str(tmp_path / "data"), "--output-dir",
                 str(tmp_path / "runs")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"Recipe {path} is not valid YAML" in error, error


@pytest.mark.parametrize("section", ["training", "config"])
def test_a_whole_section_cannot_be_set(section):
    with pytest.raises(ValueError, match=re.escape(f"--set {section}=...: set its fields one by one")):
        load_recipe("small", {section: "abc"})


def test_a_recipe_file_reads_its_paths_under_the_home_folder(tmp_path, monkeypatch):
    """`dataset: ~/data` in a YAML file: the home folder's, as `mister-e train --dataset=~/data` reads it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "recipe.yaml"
    path.write_text("dataset: ~/data\noutput_dir: ~/runs\nseeds: [0]\n")
    recipe = load_recipe(path)
    assert (recipe["dataset"], recipe["output_dir"]) == (str(tmp_path / "data"), str(tmp_path / "runs"))


def test_an_ablation_that_switches_an_expert_off_takes_its_per_modality_settings_with_it():
    """A recipe with one context module per modality: its text_only ablation would otherwise be refused for the
    speech entry, which the ablation leaves with no expert to set."""
    from mister_e import MisterEConfig
    from mister_e.training import apply_ablation

    recipe = load_recipe("small", parse_sets(["context_module={speech: conv, text: gru}", "gru_layers={speech: 1}"]))
    text_only = apply_ablation(recipe, "text_only")["config"]
    assert text_only["context_module"] == {"text": "gru"} and text_only["gru_layers"] == {}
    assert MisterEConfig(**text_only).context_settings("text") == {"context_module": "gru", "gru_layers": 3}
    assert apply_ablation(recipe, "full")["config"]["context_module"] == {"speech": "conv", "text": "gru"}


def test_experts_left_out_for_data_without_their_modality_take_their_per_modality_settings_with_them(tmp_path):
    """Trained on text alone, the speech expert is left out of the model; the recipe's speech entry went with it
    into a config that refused it."""
    import numpy as np

    from mister_e.data import make_dialogue_dataset
    from mister_e.training import train_conversation_model
    from datasets import DatasetDict

    rng = np.random.default_rng(0)

    def split(name, count):
        return make_dialogue_dataset([dict(dialogue_id=f"{name}{i}", labels=[0, 1, 0], speakers=["A", "B", "A"],
                                           texts=["a", "b", "c"], text_embeds=list(rng.standard_normal((3, 4))))
                                      for i in range(count)], ["calm", "angry"])

    data = DatasetDict(train=split("train", 2), validation=split("validation", 1))
    sizes = dict(context_dim=4, cross_modal_dim=4, coattention_layers=1, attention_dim=4, attention_heads=1,
                 fusion_hidden_size=4, gate_hidden_size=2)
    results = train_conversation_model(
        data, tmp_path, {**sizes, "context_module": {"speech": "conv", "text": "gru"}},
        {"num_train_epochs": 1, "disable_tqdm": True, "use_cpu": True, "report_to": []}, report=False)
    assert results["config"]["experts"] == ["text"] and results["config"]["context_module"] == {"text": "gru"}
