"""Dialogue datasets on disk: saved whole or not at all, loaded with errors that name the folder."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk

from ..utils import check_not_broken_link, owner_gone, owner_tag, umask


def save_dialogues(dialogues: DatasetDict, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """`save_to_disk` into a folder beside ``path``, then rename: a crash never leaves a half-written dataset.

    ``overwrite`` only ever replaces a saved `DatasetDict`, so a mistyped path cannot delete an unrelated folder.
    """
    path = Path(path)
    check_save_target(path, overwrite)
    empty = [split for split, dataset in dialogues.items() if len(dataset) == 0]
    if empty:  # `load_from_disk` cannot read an empty split back: every later command would fail on it
        raise ValueError(f"the {empty[0]} split of {path} would be empty: no dialogue was found for it")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_saves(path)
    # the writer in the name: a later save tells an abandoned folder by it
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".partial", dir=path.parent))
    try:
        dialogues.save_to_disk(str(staging))
        staging.chmod(0o777 & ~umask())  # a folder's usual mode, not mkdtemp's owner-only one
        if path.exists():
            retired = staging.with_suffix(".old")
            path.rename(retired)
            staging.rename(path)
            shutil.rmtree(retired)
        else:
            staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _remove_abandoned_saves(path: Path) -> None:
    """Delete the staging folders (`.NAME.<pid>@<host>.<random>.partial`) of saves into ``path`` whose process died
    (killed while saving): nothing reads them, they only take space. Only this machine's, since another's process, on
    a shared disk, cannot be checked from here; and only one untouched for an hour, since two containers may share a
    host name but not their process ids."""
    for staging in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
        if owner_gone(staging.name[len(path.name) + 2 :].rsplit(".", 2)[0]) and _untouched(staging, 3600):
            shutil.rmtree(staging, ignore_errors=True)


def _untouched(folder: Path, seconds: float) -> bool:
    """Whether nothing in `folder` was written in the last `seconds`."""
    return time.time() - max(entry.stat().st_mtime for entry in (folder, *folder.rglob("*"))) > seconds


def load_dialogues(path: str | os.PathLike) -> Dataset | DatasetDict:
    """`load_from_disk`, naming the folder when `datasets` cannot read it back: a split saved with no rows (by
    `save_to_disk`; `save_dialogues` refuses one) fails inside `datasets` with an IndexError that names nothing."""
    retired = sorted(Path(path).parent.glob(f".{Path(path).name}.*.old"))
    if not Path(path).exists() and retired:  # `--overwrite` stopped between its two renames
        raise FileNotFoundError(f"{path} is missing, but {retired[-1]} holds the dataset it replaced (an overwrite was "
                                f"interrupted): rename that folder to {Path(path).name}, or build the data again.")
    try:
        return load_from_disk(str(path))
    except IndexError:
        raise ValueError(f"{path} holds a split with no rows, which `datasets` cannot load: rebuild it with at least "
                         "one dialogue in every split") from None


def check_save_target(path: Path, overwrite: bool) -> None:
    """`save_dialogues` can write `path`: checked before the work that produces the dataset, too."""
    check_not_broken_link(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if path.exists() and not (path / "dataset_dict.json").is_file():
        raise FileExistsError(f"{path} exists and is not a saved dialogue dataset; refusing to replace it")
    if path.exists():  # replacing the folder deletes all it holds: a run or an extraction saved inside it too
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        others = sorted(entry.name for entry in path.iterdir() if entry.name not in {"dataset_dict.json", *splits})
        if others:
            raise FileExistsError(f"{path} holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''} besides "
                                  "its saved dataset, which replacing it would delete: move them out first")


__all__ = ["check_save_target", "load_dialogues", "save_dialogues"]
