"""Keep every test off the network: offline Hub, throwaway HF_HOME (set before transformers is imported)."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="mister-e-hf-home-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)  # one per session, not one left per run
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Loaded once the environment above is set: the training tests' `data`, `tokenizer` and `processor` fixtures.
pytest_plugins = ["tiny_corpus"]


@pytest.fixture
def shared_data() -> Path:
    """The real benchmark files beside the checkout; tests using them skip in a user's clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def offline_hf_home(monkeypatch, tmp_path) -> None:
    """The data tests' HF_HOME in their own tmp_path, offline, for code that reads the environment when called."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
