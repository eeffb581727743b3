"""Small helpers shared by the training-side modules."""

from __future__ import annotations

import atexit
import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from accelerate import PartialState

PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")  # what a figure is saved as, by its file's suffix


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside `path` (`writer_name`) and move it onto `path` once written: readers never see a
    half-written file."""
    tmp = writer_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_not_broken_link(path: Path) -> None:
    """Refuse a symbolic link to nothing (or a loop) where a file or folder is to be written: it reads as absent, but
    nothing can be created at its name, which failed only after the work, with an errno naming a temporary file."""
    if path.is_symlink() and not path.exists():
        raise FileExistsError(f"{path} is a broken symbolic link (to {os.readlink(path)}): remove it, or name another "
                              "path")


def writer_name(path: Path) -> Path:
    """A hidden temporary name beside `path` of this writer's own (`.<name>.<pid>.<random>.tmp`): two processes
    writing one file never write into, or rename, each other's half."""
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def launched_on_cpu() -> bool:
    """Whether a launcher (`torchrun`, `accelerate launch`) started this process among several on a machine without
    CUDA: accelerate, and so Trainer, then needs `cpu=True` (`use_cpu=True`) to join them into one gloo run; otherwise
    each process believes it is alone, trains alone and writes the same files as the others."""
    import torch  # here, not above: evaluation imports this module and stays free of torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def process_state() -> PartialState:
    """accelerate's `PartialState` of this process: rank, barriers and gathers under a launcher, one main process
    otherwise."""
    from accelerate import PartialState

    return PartialState(cpu=launched_on_cpu())


def reuse_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse: by default it hands blocks over its mmap threshold (128 KiB, grown up to
    32 MiB as it sees them freed) back to the system, which then gives them back page fault by zeroed page. Training
    on a CPU frees and allocates every gradient each step, so at paper size that was 15% of a step. The threshold goes
    to glibc's maximum (32 MiB) and up to 1 GiB of freed memory stays with the process. Process-wide; False where the
    C library is not glibc (it then changes nothing)."""
    if sys.platform != "linux":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    trim_threshold, mmap_threshold = -1, -3  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD (malloc.h)
    return bool(mallopt(mmap_threshold, 32 << 20)) and bool(mallopt(trim_threshold, 1 << 30))


@atexit.register
def release_process_group() -> None:
    """Destroy the launcher's process group before the interpreter tears down: left to the interpreter's teardown, gloo's
    threads can be destroyed while still joinable, and the process then aborts after its work is done ("terminate
    called without an active exception"). `sys.modules`: a process that never imported torch has nothing to release."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


__all__ = ["PLOT_FORMATS", "atomic_path", "check_not_broken_link", "launched_on_cpu", "process_state",
           "release_process_group", "reuse_freed_memory"]
