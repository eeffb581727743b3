"""Sharing on the Hub: model card, self-contained folder, and an upload whose files load without the package."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi
from tiny import tiny_config
from tiny_end_to_end import LABELS, TASK, tiny_model, tiny_processor, write_clips
from transformers import BertConfig, pipeline

from mister_e import MisterEForEmotionRecognition, MisterEForUtteranceClassification
import mister_e  # noqa: F401  (registers the model classes and the task)
from mister_e.assembly import conversation_fingerprint
from mister_e.evaluation import summarize_seeds
from mister_e.hub import _ensure_code_files, model_card, push_to_hub, save_for_hub


TEXTS = ["hello world", "oh no", "yes really", "okay fine"]
EXPECTED_FILES = {
    "README.md", "config.json", "model.safetensors", "configuration_mister_e.py", "modeling_mister_e.py",
    "processing_mister_e.py", "audio_mister_e.py", "pipeline_mister_e.py", "segmentation_mister_e.py",
    "experts_mister_e.py", "encoders_mister_e.py", "losses_mister_e.py", "modeling_utterance_mister_e.py",
    "input_checks_mister_e.py",
    "processor_config.json", "tokenizer.json", "tokenizer_config.json",
}


def run_results(seed: int, shift: float) -> dict:
    """A `results.json` as `train_conversation_model` writes it."""
    scores = {"weighted_f1": 0.60 + shift, "macro_f1": 0.55 + shift, "accuracy": 0.62 + shift,
              "unweighted_recall": 0.58 + shift, "loss": 1.1 - shift, "epoch": 5.0,
              **{f"f1_{label}": 0.5 + shift for label in LABELS}}
    return {"seed": seed, "validation": dict(scores), "test": dict(scores), "best_step": 1, "best_epoch": 1.0, "config": {}}


RESULTS = [run_results(0, 0.0), run_results(1, 0.02)]


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("wavs"))


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """`push_to_hub` with the Hub replaced by fakes: returns the calls and a folder holding the committed files."""
    repo_dir = tmp_path_factory.mktemp("hub_repo")
    calls = {}

    def fake_create_repo(self, repo_id, *, exist_ok=False, private=None, repo_type=None, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, "exist_ok": exist_ok, "private": private, "repo_type": repo_type}
        return type("RepoUrl", (str,), {"repo_id": repo_id})(f"https://huggingface.co/{repo_id}")

    def fake_create_commit(self, repo_id, operations, *, commit_message, repo_type=None, **kwargs):
        calls["create_commit"] = {"repo_id": repo_id, "message": commit_message, "repo_type": repo_type,
                                  "paths": [op.path_in_repo for op in operations], "token": self.token}
        for op in operations:  # read now: the source folder is temporary
            source = op.path_or_fileobj
            data = Path(source).read_bytes() if isinstance(source, (str, Path)) else (
                source if isinstance(source, bytes) else source.read())
            target = repo_dir / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return "commit-info"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mister_e.hub.is_offline_mode", lambda: False)  # the tests run offline; the Hub is faked here
        patch.setattr(HfApi, "create_repo", fake_create_repo)
        patch.setattr(HfApi, "create_commit", fake_create_commit)
        answer = push_to_hub(tiny_model(), tiny_processor(), "someone/mister-e-tiny", results=RESULTS, private=True,
                             token="hf_fake", dataset_name="TinyTalk", license="apache-2.0")
    return answer, calls, repo_dir


def test_push_commits_a_safetensors_folder_with_card(pushed):
    answer, calls, repo_dir = pushed
    assert answer == "commit-info"
    assert calls["create_repo"] == {"repo_id": "someone/mister-e-tiny", "exist_ok": True, "private": True,
                                    "repo_type": "model"}
    commit = calls["create_commit"]
    assert commit["repo_id"] == "someone/mister-e-tiny" and commit["token"] == "hf_fake"
    assert set(commit["paths"]) == EXPECTED_FILES == {p.name for p in repo_dir.iterdir()}
    assert not any(path.endswith((".bin", ".pt", ".pth", ".pkl")) for path in commit["paths"])

    config = json.loads((repo_dir / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_mister_e.MisterEConfig",
                                  "AutoModel": "modeling_mister_e.MisterEForEmotionRecognition"}
    assert config["custom_pipelines"][TASK]["impl"] == "pipeline_mister_e.MisterEConversationPipeline"
    processor_config = json.loads((repo_dir / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_mister_e.MisterEProcessor"

    card = (repo_dir / "README.md").read_text()
    header = card.split("---")[1]
    assert "library_name: transformers" in header and "license: apache-2.0" in header
    for tag in ("emotion-recognition", "audio", "text", "mister-e"):
        assert f"- {tag}" in header
    for label in LABELS:
        assert f"| {label} |" in card
    assert "2 seeds (0, 1)" in card
    assert "| test | weighted_f1 | 61.00 ± 1.41 |" in card  # (60, 62) -> 61 ± sample std 1.41
    assert "| validation | loss | 1.0900 ± 0.0141 |" in card and "| epoch |" not in card
    assert "Trained on **TinyTalk**" in card and "Speaker identity is never used" in card
    assert "`wavlm`" in card and "`bert`" in card and "Causal**: False" in card
    assert 'pipeline("emotion-recognition-in-conversation", model="someone/mister-e-tiny")' in card
    assert 'AutoModel.from_pretrained("someone/mister-e-tiny", trust_remote_code=True)' in card
    assert 'AutoProcessor.from_pretrained("someone/mister-e-tiny", trust_remote_code=True)' in card


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["mister_e"] = None  # the package cannot be imported: only the repository's code files
    import numpy as np, torch
    from transformers import AutoModel, AutoProcessor

    folder, wavs, texts, out = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
    assert not any(name == "mister_e" or name.startswith("mister_e.") for name, m in sys.modules.items() if m)
    inputs = processor({"utterances": [{"audio": a, "text": t} for a, t in zip(wavs, texts)]}, return_tensors="pt")
    with torch.no_grad():
        output = model(**inputs)
    np.save(out, output.logits[0].numpy())
    from transformers import pipeline  # the task comes from config.json's `custom_pipelines`, the code from the folder
    pipe = pipeline(model=folder, trust_remote_code=True, device="cpu")
    assert type(pipe).__module__.startswith("transformers_modules."), type(pipe).__module__
    results = pipe({"utterances": [{"audio": a, "text": t} for a, t in zip(wavs, texts)]})
    assert not any(name == "mister_e" or name.startswith("mister_e.") for name, m in sys.modules.items() if m)
    print(json.dumps([[r["label"], r["score"]] for r in results]))
    print(json.dumps(model.config.id2label))
    """
)


def test_uploaded_files_load_without_package_and_match_pipeline(pushed, wavs, tmp_path):
    _, _, repo_dir = pushed
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    logits_path = tmp_path / "logits.npy"
    done = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(repo_dir), json.dumps(wavs), json.dumps(TEXTS), str(logits_path)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {str(i): label for i, label in enumerate(LABELS)}
    probabilities = torch.from_numpy(np.load(logits_path)).softmax(-1)
    remote_pipeline = json.loads(done.stdout.strip().splitlines()[-2])
    assert [label for label, _ in remote_pipeline] == [LABELS[int(row.argmax())] for row in probabilities]
    assert [score for _, score in remote_pipeline] == pytest.approx(probabilities.amax(-1).tolist(), abs=1e-5)

    pipe = pipeline(TASK, model=str(repo_dir), device="cpu")
    assert type(pipe.model) is MisterEForEmotionRecognition  # the package's class, not the remote copy
    results = pipe({"utterances": [{"audio": a, "text": t} for a, t in zip(wavs, TEXTS)]})
    assert len(results) == len(TEXTS) == probabilities.shape[0]
    for result, row in zip(results, probabilities):
        assert result["label"] == LABELS[int(row.argmax())]
        assert result["score"] == pytest.approx(float(row.max()), abs=1e-5)
        assert [result["scores"][label] for label in LABELS] == pytest.approx(row.tolist(), abs=1e-5)


def test_card_from_single_run_and_seed_summary(tmp_path):
    model = tiny_model()
    single = model_card(model, RESULTS[0])
    assert "One training run: 1 seed (0)" in single and "| test | accuracy | 62.00 |" in single and "±" not in single
    assert "license:" not in single.split("---")[1] and "<user>/<model>" in single  # none given: none claimed
    with pytest.raises(ValueError, match=r"`test/f1_fear`, but the model has no label 'fear'.*another model's"):
        model_card(model, {**RESULTS[0], "test": {**RESULTS[0]["test"], "f1_fear": 0.9}})

    summary = {"recipe": {"name": "tiny", "modalities": ["speech", "text"], "modality_dropout": 0.1},
               "seeds": [3, 4, 5],
               "summary": {"test/macro_f1": {"mean": 0.5, "std": 0.01, "n": 3}}}
    card = model_card(model, summary, training_data="Sessions 1-4 train, 5 test.")
    assert "3 seeds (3, 4, 5)" in card and "| test | macro_f1 | 50.00 ± 1.00 |" in card
    assert "Sessions 1-4 train, 5 test." in card and "recipe `tiny`" in card and "modality dropout 0.1" in card
    path = tmp_path / "summary.json"  # the README passes the file: the same card as the dict
    path.write_text(json.dumps(summary))
    assert model_card(model, str(path), training_data="Sessions 1-4 train, 5 test.") == card

    bare = model_card(model, {"test/accuracy": {"mean": 0.7, "std": 0.0, "n": 1}})
    assert "| test | accuracy | 70.00 |" in bare
    assert "No scores were given" in model_card(model)
    with pytest.raises(ValueError, match="no `test`/`validation`"):
        model_card(model, {"seed": 0})
    with pytest.raises(ValueError, match=r"`results` holds the scores of a speech encoder \(`train-encoder`\)"):
        model_card(model, [RESULTS[0], {**RESULTS[0], "modality": "speech", "solver": "lbfgs"}])
    with pytest.raises(ValueError, match=r"`test/accuracy` is 62.0: scores are fractions in \[0, 1\]"):
        model_card(model, {"test/accuracy": {"mean": 62.0, "std": 0.0, "n": 1}})  # not 6200.00


def test_card_shows_na_for_a_class_without_test_utterances(tmp_path):
    """A class absent from a run's test split has no F1 (null in results.json): the card said 0.00, or failed."""
    runs = [run_results(0, 0.0), run_results(1, 0.02), run_results(2, 0.04)]
    for run in runs:
        run["test"]["f1_sadness"] = None
    runs[0]["test"]["f1_joy"] = None
    single = model_card(tiny_model(), json.loads(json.dumps(runs[0])))
    assert "| test | f1_sadness | n/a |" in single and "| test | f1_joy | n/a |" in single
    assert "no utterance of that class in the split" in single and "| validation | f1_joy | 50.00 |" in single
    card = model_card(tiny_model(), runs)
    assert "| test | f1_sadness | n/a |" in card
    assert "| test | f1_joy | 53.00 ± 1.41 (2 of 3 runs) |" in card and "| test | f1_anger | 52.00 ± 2.00 |" in card


def test_card_of_a_text_only_model_says_what_it_reads():
    """A text-only end-to-end model was tagged and described as an audio model, with examples it could not run."""
    full = model_card(tiny_model())
    assert "- audio" in full and "its audio and/or transcript" in full and '"audio": "a.wav"' in full
    assert 'pip install \\"transformers[audio]\\"' not in full and 'pip install "transformers[audio]"' in full
    config = tiny_model().config
    config.speech_config, config.experts = None, ["text"]
    card = model_card(MisterEForEmotionRecognition(config))
    header = card.split("---")[1]
    assert "- text" in header and "- audio" not in header
    assert "from its transcript and" in card and '"audio"' not in card and "Speech backbone" not in card
    assert "reads **text only**" in card and "speech + text mixture" not in card and "Missing modalities" not in card
    assert "speech + text mixture" in full and "Missing modalities" in full
    assert "transformers[audio]" not in card


def test_save_for_hub_restores_missing_processor_code(tmp_path):
    folder = save_for_hub(tiny_model(), tiny_processor(), tmp_path / "out")
    assert EXPECTED_FILES <= {p.name for p in folder.iterdir()}
    (folder / "processing_mister_e.py").unlink()
    processor_config = json.loads((folder / "processor_config.json").read_text())
    del processor_config["auto_map"]
    (folder / "processor_config.json").write_text(json.dumps(processor_config))
    _ensure_code_files(folder)
    assert (folder / "processing_mister_e.py").read_text() == Path(mister_e.processing_mister_e.__file__).read_text()
    restored = json.loads((folder / "processor_config.json").read_text())
    assert restored["auto_map"]["AutoProcessor"] == "processing_mister_e.MisterEProcessor"
    with pytest.raises(ValueError, match="processor"):
        save_for_hub(tiny_model(), None, tmp_path / "other")


def test_a_model_saved_alone_carries_every_module_its_code_imports(tmp_path):
    """`model.save_pretrained` copies the pipeline's code for `trust_remote_code`: every sibling module that code
    imports must be in the folder too, or the pipeline fails without the package (`processing_mister_e.py` was not)."""
    tiny_model().save_pretrained(tmp_path)
    copied = {path.stem for path in tmp_path.glob("*.py")}
    assert {"pipeline_mister_e", "modeling_mister_e"} <= copied
    for name in copied:
        imported = set(re.findall(r"^\s*from \.(\w+) import", (tmp_path / f"{name}.py").read_text(), re.MULTILINE))
        assert imported <= copied, f"{name}.py imports {imported - copied}, which the folder lacks"


def test_save_for_hub_writes_all_or_nothing_and_keeps_local_paths_off_the_card(tmp_path):
    model = tiny_model()
    model.config.text_config._name_or_path = str(tmp_path / "home" / "alice" / "minilm")
    with pytest.raises(FileNotFoundError, match="No results file at .*no-summary.json"):
        save_for_hub(model, tiny_processor(), tmp_path / "out", results=tmp_path / "no-summary.json")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == []  # nothing half-written
    folder = save_for_hub(model, tiny_processor(), tmp_path / "out")
    card = (folder / "README.md").read_text()
    assert "alice" not in card and "**Text backbone**: `bert` (from a local folder)" in card
    assert "opensmile" not in card  # the note is for openSMILE speech encoders only
    with pytest.raises(FileExistsError, match="not empty"):
        save_for_hub(model, tiny_processor(), folder)
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(FileExistsError, match="link is a broken symbolic link"):
        save_for_hub(model, tiny_processor(), tmp_path / "link")
    stage_two = MisterEForEmotionRecognition(tiny_config())
    with pytest.raises(ValueError, match="end-to-end model"):
        save_for_hub(stage_two, tiny_processor(), tmp_path / "stage-2")


def test_a_model_whose_pipeline_files_are_not_at_hand_saves_no_pipeline_entry(tmp_path, monkeypatch):
    """A model loaded through remote code keeps `custom_pipelines` in its config, but the cached code has no pipeline
    files beside it: saved again, the folder named a `pipeline_mister_e.py` it did not hold, and its pipeline failed."""
    from mister_e.configuration_mister_e import CUSTOM_PIPELINES

    model = tiny_model()
    model.config.custom_pipelines = dict(CUSTOM_PIPELINES)  # as loaded from a folder through remote code
    monkeypatch.setattr(MisterEForEmotionRecognition, "PIPELINE_CODE", ("no_such_pipeline_mister_e.py",))
    model.save_pretrained(tmp_path)
    assert not json.loads((tmp_path / "config.json").read_text()).get("custom_pipelines")
    assert not (tmp_path / "pipeline_mister_e.py").exists()
    assert MisterEForEmotionRecognition.from_pretrained(tmp_path).config.experts == model.config.experts


def test_offline_or_a_malformed_repo_id_is_refused_before_anything_is_built(monkeypatch):
    """Offline, the upload failed deep in the HTTP client after the folder was built."""
    monkeypatch.setattr(HfApi, "create_commit", lambda *args, **kwargs: pytest.fail("nothing may be committed"))
    with pytest.raises(OSError, match=r"Cannot push to you/tiny: HF_HUB_OFFLINE is set.*--folder OUT"):
        push_to_hub(tiny_model(), tiny_processor(), "you/tiny")  # conftest sets HF_HUB_OFFLINE=1
    with pytest.raises(ValueError, match=r"'you/my model' is not a Hub repository id"):
        push_to_hub(tiny_model(), tiny_processor(), "you/my model")


def test_a_push_the_hub_refuses_or_cannot_reach_is_one_clear_error(monkeypatch):
    """No network (a connection error of the Hub client's HTTP library, no OSError) or no write access (the Hub's HTTP
    error) came as a traceback of the library's own; now one OSError naming the repository and what to do."""
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setattr("mister_e.hub.is_offline_mode", lambda: False)
    http_library = sys.modules[next(c for c in HfHubHTTPError.__mro__ if c.__module__.startswith("httpx")).__module__]
    failures = [http_library.ConnectError("[Errno -2] Name or service not known"),
                HfHubHTTPError("401 Client Error: Unauthorized", response=http_library.Response(
                    401, request=http_library.Request("POST", "https://huggingface.co/api/repos/create")))]
    for failure in failures:
        monkeypatch.setattr(HfApi, "create_repo", lambda *args, failure=failure, **kwargs: (_ for _ in ()).throw(failure))
        with pytest.raises(OSError, match=r"^Could not push to you/tiny: .*hf auth login.*--folder OUT"):
            push_to_hub(tiny_model(), tiny_processor(), "you/tiny")
    monkeypatch.setattr(HfApi, "create_repo", lambda *args, **kwargs: (_ for _ in ()).throw(KeyError("ours")))
    with pytest.raises(KeyError):  # anything else is not said to be the network's
        push_to_hub(tiny_model(), tiny_processor(), "you/tiny")


def test_the_weights_fingerprint_is_the_conversation_models_joined_or_not(tmp_path):
    """What a run records of its stage-2 weights must be found again in the end-to-end model they are joined into."""
    stage_two = MisterEForEmotionRecognition(tiny_config(experts=["text"]))
    encoder = MisterEForUtteranceClassification(tiny_config(text_config=BertConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, vocab_size=13)))
    joined = MisterEForEmotionRecognition.from_stages(encoder, stage_two)
    assert conversation_fingerprint(joined) == conversation_fingerprint(stage_two)
    joined.save_pretrained(tmp_path)
    assert conversation_fingerprint(MisterEForEmotionRecognition.from_pretrained(tmp_path)) == \
        conversation_fingerprint(stage_two)
    with torch.no_grad():
        joined.text_encoder.projection.weight.add_(1.0)  # the encoders are not the scored stage-2 weights
    assert conversation_fingerprint(joined) == conversation_fingerprint(stage_two)
    with torch.no_grad():
        next(stage_two.parameters()).view(-1)[0] += 1e-6
    assert conversation_fingerprint(joined) != conversation_fingerprint(stage_two)


def test_scores_of_other_weights_are_refused_and_unrecorded_ones_warned(tmp_path, caplog, monkeypatch):
    """The card published any run's scores as the uploaded model's; now a run's recorded weights must be the model's."""
    model, other = tiny_model(), "0" * 64
    own = conversation_fingerprint(model)
    run = tmp_path / "runs" / "seed_0"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({**RESULTS[0], "weights_sha256": other}))
    refused = r"seed_0/results\.json holds the scores of the run in \S*runs/seed_0 \(seed 0\), whose weights are not"
    with pytest.raises(ValueError, match=refused):
        save_for_hub(model, tiny_processor(), tmp_path / "out", results=run / "results.json")
    assert not (tmp_path / "out").exists()

    (run / "results.json").write_text(json.dumps({**RESULTS[0], "weights_sha256": own}))
    with caplog.at_level("WARNING"):
        folder = save_for_hub(model, tiny_processor(), tmp_path / "out", results=run / "results.json")
    assert "checked against the weights it recorded" in (folder / "README.md").read_text() and not caplog.records

    scores = summarize_seeds([{split: r[split] for split in ("validation", "test")} for r in RESULTS])
    summary = {"seeds": [0, 1], "summary": scores,
               "runs": {"0": {"weights_sha256": other}, "1": {"weights_sha256": own}}}
    assert "a single model, seed 1's (checked against the weights that run recorded)" in model_card(model, summary)
    (tmp_path / "runs" / "summary.json").write_text(json.dumps({**summary, "runs": {"0": {"weights_sha256": other},
                                                                               "1": {"weights_sha256": other}}}))
    refused = r"summary\.json holds the scores of the runs in \S*runs \(seed 0, seed 1\), and the model being shared is"
    with pytest.raises(ValueError, match=refused + " none of them"):
        model_card(model, tmp_path / "runs" / "summary.json")

    caplog.clear()  # a summary of a run from before the fingerprint and one of other weights: the warning says which
    with caplog.at_level("WARNING"):
        model_card(model, {**summary, "runs": {"0": {"weights_sha256": other}, "1": {}}})
    assert "the model is not seed 0, which recorded its weights, and seed 1 recorded none" in caplog.text
    monkeypatch.chdir(run)  # a results.json named from its own folder names that folder, not "."
    (run / "results.json").write_text(json.dumps({**RESULTS[0], "weights_sha256": other}))
    with pytest.raises(ValueError, match=f"holds the scores of the run in {re.escape(str(run))} \\(seed 0\\)"):
        model_card(model, "results.json")

    for older in (RESULTS[0], {**summary, "runs": {"0": {}, "1": {}}}, scores):  # runs from before the fingerprint
        caplog.clear()
        with caplog.at_level("WARNING"):
            card = model_card(model, older)
        assert "| test | weighted_f1 |" in card and "checked against" not in card
        assert len(caplog.records) == 1 and "cannot be checked to be this model's" in caplog.text
