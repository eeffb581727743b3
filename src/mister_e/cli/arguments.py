"""Option values checked where argparse reads them, so a wrong one is the usual one line and exit status 2."""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

from ..utils import check_not_broken_link


class Parser(argparse.ArgumentParser):
    """Usage errors (a wrong option value) as one line naming the option, exit status 2, as every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def seed(text: str) -> int:
    """A random seed: numpy and torch take integers from 0 to 2**32 - 1."""
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**32 - 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def torch_device(text: str) -> str:
    """A torch device this machine has: asking for CUDA without it is an input error, not a crash mid-run."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA device (use cpu)")
    is_available = getattr(getattr(torch, device.type, None), "is_available", None)  # torch.cuda, torch.mps, ...
    if device.type != "cpu" and not (is_available and is_available()):
        raise argparse.ArgumentTypeError(f"{text!r}: not a device this machine can compute on (use cpu)")
    return text


def user_path(text: str) -> str:
    """A path as typed, `~` read as the home folder also where the shell leaves it (`--model=~/m`, or quoted): left as
    it was, `--output-dir=~/runs` made a folder named `~`, and the Trainer, which expands it, wrote half the run to
    the home folder."""
    return os.path.expanduser(text)


def _output_path(text: str) -> str:
    """`user_path` of a file or folder to write, refused when it could only be created as something else: a Windows
    path on a system whose separator is `/` (a file or folder named `C:\\data\\x` in the working folder), or a
    broken symbolic link."""
    if os.sep == "/" and re.match(r"[A-Za-z]:[\\/]", text):
        raise argparse.ArgumentTypeError(f"{text} is a Windows path; on this system paths are written with / "
                                         "(e.g. /mnt/c/... for a Windows drive under WSL)")
    text = user_path(text)
    try:
        check_not_broken_link(Path(text))
    except FileExistsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def output_file(text: str) -> str:
    """A file to write: its folder exists and takes new files, and it is not itself a folder, known before the work
    that fills it (a probe file is created there and removed: permissions alone do not tell, e.g. /proc as root)."""
    text = _output_path(text)
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)):  # `out/`: a folder meant, not a file named `out`
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file in it")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: the folder {path.parent} does not exist")
    try:
        probe(path.parent, path.name)
    except OSError as error:
        raise argparse.ArgumentTypeError(f"{text}: the folder {path.parent} takes no new files ({error.strerror})")
    return text


def probe(folder: Path, name: str) -> None:
    """Create a file `.<name>.*.probe` in `folder` and remove it: the OSError of a folder that takes no new files,
    known before the work that would write there (permissions alone do not tell, e.g. /proc as root)."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", suffix=".probe"):
        pass


def plot_file(text: str) -> str:
    """An `output_file` whose suffix names a format the figure can be saved in."""
    from ..utils import PLOT_FORMATS

    text = output_file(text)
    if Path(text).suffix.lower().lstrip(".") not in PLOT_FORMATS:
        raise argparse.ArgumentTypeError(f"{text}: a plot is written as {', '.join(PLOT_FORMATS)} (by its suffix)")
    return text


def output_folder(text: str) -> str:
    """A folder to write into (created when missing): not an existing file."""
    text = _output_path(text)
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return text
