"""A run's output folder: the record of what defines it (`run.json`), its checkpoints and its results, as `train` and
`train-encoder` read them back to resume a run, return a finished one, or refuse one with other settings."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datasets import DatasetDict
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..utils import process_state, write_json, writer_name

logger = logging.get_logger(__name__)


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """Newest complete checkpoint: Trainer writes `trainer_state.json` last, so a folder without it was cut short."""
    folders = Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
    complete = [f for f in folders if f.name.split("-")[-1].isdigit() and (f / "trainer_state.json").is_file()]
    return str(max(complete, key=lambda f: int(f.name.split("-")[-1]))) if complete else None


def data_identity(dataset: DatasetDict) -> dict[str, str] | None:
    """Each split's `datasets` fingerprint, when the data was loaded from disk (there it is saved with the data, so a
    rerun sees the same one); `None` for data built in memory, whose fingerprints are drawn at random."""
    if not all(split.cache_files for split in dataset.values()):
        return None
    return {name: split._fingerprint for name, split in dataset.items()}


def check_run(output_dir: str | os.PathLike, settings: Mapping[str, Any]) -> None:
    """Raise unless a run recorded in `output_dir` (`record_run`) was defined by the same `settings`.

    A rerun into the folder of a finished run reads its results back, and into an unfinished one resumes it; with
    other settings either would silently report, or continue, a different run than the one asked for. A folder
    without `run.json` (nothing trained yet, or a run from before it existed) passes."""
    path = Path(output_dir) / "run.json"
    if not path.is_file():
        return
    recorded, settings = json.loads(path.read_text()), _normalised(settings)
    if recorded.get("data") is None or settings.get("data") is None:  # data built in memory: not comparable
        recorded["data"] = settings["data"] = None
    old, new = _flat(recorded), _flat(settings)
    changed = [f"{key}: {_shown(old, key)} -> {_shown(new, key)}" for key in sorted(set(old) | set(new))
               if old.get(key, _UNSET) != new.get(key, _UNSET)]
    if changed:
        raise ValueError(f"{output_dir} holds a run with other settings ({'; '.join(changed[:4])}"
                         f"{'; ...' if len(changed) > 4 else ''}): give a new --output-dir, or delete the folder to "
                         "train again.")


def record_run(output_dir: str | os.PathLike, settings: Mapping[str, Any] | None) -> None:
    """Write what defines the run to `output_dir/run.json` as its training begins (after every input check, so a
    refused run leaves nothing behind), for `check_run`; a run already under way keeps its record."""
    path = Path(output_dir) / "run.json"
    if settings is None or not process_state().is_main_process:
        return
    if path.exists() or last_checkpoint(output_dir):  # checked again: another run may have begun since `check_run`
        check_run(output_dir, settings)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    written = writer_name(path)
    write_json(written, _normalised(settings))
    try:  # created only if absent, atomically: of two runs started together into one folder, one records it
        os.link(written, path)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: a plain rename (the race stays open there)
        if not path.exists():
            os.replace(written, path)
    finally:
        written.unlink(missing_ok=True)
    check_run(output_dir, settings)  # the other run's record, when it came first: refused, as if it had finished


_UNSET = "(unset)"


def _flat(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(flat: Mapping[str, Any], key: str) -> str:
    return _UNSET if key not in flat else json.dumps(flat[key])


def _normalised(settings: Mapping[str, Any]) -> dict[str, Any]:
    """As JSON reads it back (tuples as lists, paths as strings), so that a record compares with new settings."""
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def finished_results(output_dir: str | os.PathLike, seed: int | None = None) -> dict[str, Any] | None:
    """The `results.json` of a finished run in `output_dir` (of `seed`, when given), read back; `None` otherwise."""
    path = Path(output_dir) / "results.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    if seed is not None and results.get("seed") != seed:
        return None
    logger.warning(f"Already trained: reading {path}.")
    return results


__all__ = ["check_run", "data_identity", "finished_results", "last_checkpoint", "record_run"]
