"""Small helpers shared across the package: atomic writes (text, JSON, figures), output-folder locks, process state."""

from __future__ import annotations

import atexit
import ctypes
import errno
import json
import logging
import os
import re
import socket
import stat
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from accelerate import PartialState
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")  # what a figure is saved as, by its file's suffix


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside `path` (`writer_name`) and move it onto `path` once written: readers never see a
    half-written file. An error naming the temporary file names `path` instead, the file the user knows of."""
    tmp = writer_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        if error.errno is None or str(tmp) not in (str(error.filename), str(error.filename2)):
            raise
        raise OSError(error.errno, error.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """`text` as UTF-8 into `path`, through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """`payload` as indented JSON into `path`, through `atomic_path`."""
    write_text(path, json.dumps(payload, indent=2) + "\n")


def save_figure(figure: Figure, path: Path) -> None:
    """`figure` in the format its suffix names (PNG for any other), written under a temporary name, then renamed.

    Characters of labels that the font cannot draw (CJK, emoji in DejaVu Sans) are drawn as boxes: said in one line
    naming the file, where matplotlib gave two warning lines per character and drawing."""
    suffix = Path(path).suffix.lower().lstrip(".")
    with atomic_path(path) as tmp, warnings.catch_warnings(record=True) as caught:
        figure.savefig(tmp, format=suffix if suffix in PLOT_FORMATS else "png", dpi=150, bbox_inches="tight")
    missing = {}
    for warning in caught:
        glyph = re.match(r"Glyph (\d+) \(.*\) missing from font", str(warning.message))
        if glyph:
            missing[chr(int(glyph.group(1)))] = None
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if missing:
        logger.warning(f"{path}: the plot's font cannot draw {' '.join(missing)} (drawn as boxes)")


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


# Errors only a write gives: a disk error without a file named is said to be one writing the command's output folder.
_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


@contextmanager
def writing_into(folder: str | os.PathLike) -> Iterator[None]:
    """Hold `.<name>.lock` beside `folder` while this command writes into it, and name `folder` in the disk errors
    that name no file (`datasets`' and Python's ENOSPC, safetensors' and torch's write errors).

    The lock is created with O_CREAT|O_EXCL and holds `<pid>@<host>`: a second mister-e writing into the same folder
    (two `train` trained one run folder twice over the same checkpoints; two `extract` with one cache could mix two
    encoders' shards) is refused in one line. One left by a process of this machine that is gone is taken over. Under
    a launcher the main process holds it for all (`_take_for_all`); a folder whose parent this user cannot write is
    not locked (a finished run or extraction read back from a read-only place). The parents the lock creates are
    removed again, if still empty, when the command is refused (an empty `runs/` was left behind)."""
    folder = Path(os.path.abspath(folder))
    real = folder.resolve()  # one lock for one folder, whatever the `..` or symbolic links naming it
    lock = real.with_name(f".{real.name}.lock")
    missing = [parent for parent in (lock.parent, *lock.parent.parents) if not parent.exists()]  # deepest first
    held = _take_for_all(lock, folder)
    finished = False
    try:
        yield
        _follow_umask(folder)
        finished = True
    except Exception as error:
        code = _write_error(error)
        if code is None:
            raise
        if code:
            raise OSError(code, os.strerror(code), str(folder)) from error
        raise OSError(f"a file written into {folder} came out short ({' '.join(str(error).split())}): is its disk "
                      "full?") from error
    finally:
        if held:
            lock.unlink(missing_ok=True)
            if not finished:
                _remove_empty(missing)


def _remove_empty(folders: list[Path]) -> None:
    """Remove `folders`, deepest first, up to the first that holds something (or is gone)."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            return


def _follow_umask(folder: Path) -> None:
    """Give the weights files written into `folder` a file's usual mode: safetensors (0.8) writes them owner-only
    (0600) whatever the umask, so colleagues who could read the folder found `model.safetensors` missing."""
    if not folder.is_dir() or os.name != "posix":
        return
    mask = umask()
    for path in folder.rglob("*.safetensors"):
        found = path.lstat()  # a link is left as it is; so is another user's file (only its owner may change it)
        if stat.S_ISREG(found.st_mode) and found.st_mode & 0o777 == 0o600 and found.st_uid == os.geteuid():
            path.chmod(0o666 & ~mask)


def umask() -> int:
    """This process's umask (reading it means setting it: set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def owner_tag() -> str:
    """`<pid>@<host>`: this process, as a lock file or a staging folder's name records its writer."""
    return f"{os.getpid()}@{socket.gethostname()}"


def owner_gone(tag: str) -> bool:
    """Whether the writer an `owner_tag` names is a process of this machine that is no longer running (another
    machine's, on a shared disk, cannot be checked from here)."""
    pid, _, host = tag.partition("@")
    return host == socket.gethostname() and pid.isdigit() and not running(int(pid))


def _take_for_all(lock: Path, folder: Path) -> bool:
    """`_take` in the main process, whose verdict every process of a launched run (`torchrun`, `accelerate launch`)
    then shares: a refusal ended the main process alone, and the others went on into the work (loading data, training
    into the locked folder) until the launcher stopped them. Now each raises the same error, so each exits with status
    2 and the same line. Every process of the run must come here (a collective)."""
    if not launched():
        return _take(lock, folder)
    from accelerate.utils import broadcast_object_list

    held, refusal = False, None
    if process_state().is_main_process:
        try:
            held = _take(lock, folder)
        except (OSError, RuntimeError) as error:  # what `_take` refuses with
            refusal = error
    refusal = broadcast_object_list([refusal])[0]
    if refusal is not None:
        raise refusal
    return held


def _take(lock: Path, folder: Path) -> bool:
    """Create `lock` for this process; False where its parent may not be written (nothing to lock)."""
    owner = owner_tag()
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = lock.read_text().strip() if lock.exists() else ""
                if holder == owner:  # e.g. an extraction cache named as its own output folder
                    raise RuntimeError(f"this command writes into {folder} twice: give each output its own folder.")
                if owner_gone(holder):
                    lock.unlink(missing_ok=True)  # its process died (killed) without removing it
                    continue
                pid, _, host = holder.partition("@") if holder else ("?", "", "?")  # empty: being written this instant
                raise RuntimeError(f"another mister-e (pid {pid} on {host}) is writing into {folder}; wait for it to "
                                   f"finish, or remove {lock} if that process is gone.") from None
            try:
                with os.fdopen(descriptor, "w") as file:
                    file.write(owner)
            except OSError as error:  # a full disk: no lock left behind that names nobody
                lock.unlink(missing_ok=True)
                raise OSError(error.errno, error.strerror, str(folder)) from None
            return True
    except OSError as error:  # a parent this user cannot write: nothing to lock there
        if error.filename != str(folder) and (isinstance(error, PermissionError) or error.errno == errno.EROFS):
            return False
        raise


def _write_error(error: BaseException) -> int | None:
    """The errno of a failed write that names no file (0 when the writer gives none), else None."""
    if isinstance(error, OSError):
        return error.errno if error.filename is None and error.errno in _WRITE_ERRORS else None
    if type(error).__name__ == "SafetensorError":  # safetensors' I/O errors are no OSError; "(os error 28)"
        found = re.search(r"\(os error (\d+)\)", str(error))
        return int(found.group(1)) if found else None
    if isinstance(error, RuntimeError) and "inline_container.cc" in str(error) and "unexpected pos" in str(error):
        return 0  # torch.save's writer found its file shorter than it wrote
    return None


def running(pid: int) -> bool:
    """Whether a process of this machine with id `pid` is alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def launched() -> bool:
    """Whether a launcher (`torchrun`, `accelerate launch`) started this process among several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_on_cpu() -> bool:
    """Whether a launcher (`torchrun`, `accelerate launch`) started this process among several on a machine without
    CUDA: accelerate, and so Trainer, then needs `cpu=True` (`use_cpu=True`) to join them into one gloo run; otherwise
    each process believes it is alone, trains alone and writes the same files as the others."""
    import torch  # here, not above: evaluation imports this module and stays free of torch

    return launched() and not torch.cuda.is_available()


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


__all__ = ["PLOT_FORMATS", "atomic_path", "check_not_broken_link", "launched", "launched_on_cpu", "owner_gone",
           "owner_tag", "process_state", "release_process_group", "reuse_freed_memory", "running", "save_figure",
           "umask", "write_json", "write_text", "writing_into"]
