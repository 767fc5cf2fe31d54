"""Files: the cache directory, atomic writes, and safetensors + JSON artifacts (never pickle). Imports no torch at
module level (the CLI's --help reads this module; torch loads when a tensor is first written or read)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import GlassworkError

if TYPE_CHECKING:
    import torch

__all__ = ["GlassworkError", "atomic_path", "check_out", "home", "load_tensors", "new_output", "output_lock",
           "read_json", "relative_path", "require_keys", "save_tensors", "write_json", "write_text"]


def check_out(path: str | Path, expect: str, option: str = "--out") -> Path:
    """Refuse, before any work, an output path of the wrong kind: a folder to write into that is a file (or lies under
    one), a file to write that is a folder. expect: "folder" | "file"."""
    path = Path(path)
    for parent in path.parents:  # nearest first: the first one that exists must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise GlassworkError(f"{option} {path}: {parent} is a file, so nothing can be written under it")
            break
    if expect == "folder" and path.exists() and not path.is_dir():
        raise GlassworkError(f"{option} {path}: is a file; expected a folder to write into (choose a new name)")
    if expect == "file" and path.is_dir():
        raise GlassworkError(f"{option} {path}: is a folder; expected the name of a file to write")
    return path


@contextmanager
def new_output(folder: str | Path, keep=None) -> Iterator[Path]:
    """A verb's output folder that is made only whole: if it did not exist before and the work fails (a full disk, a
    bad input found late), what the work had put there is removed, so no empty or half-made folder is left.
    keep(folder) -> True keeps it anyway (a resumable job that had finished some of its work)."""
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield folder
    except BaseException:
        if not existed and folder.is_dir() and not (keep and keep(folder)):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def home() -> Path:
    """The cache directory: $GLASSWORK_HOME, default ~/.cache/glasswork."""
    path = Path(os.environ.get("GLASSWORK_HOME") or Path.home() / ".cache" / "glasswork")
    path.mkdir(parents=True, exist_ok=True)
    return path


def relative_path(target: str | Path, base: str | Path) -> str:
    """`target` as a POSIX path relative to the folder `base` (what an artifact records of another: no local paths)."""
    return Path(os.path.relpath(Path(target).resolve(), Path(base).resolve())).as_posix()


@contextmanager
def output_lock(folder: str | Path) -> Iterator[None]:
    """Hold FOLDER/.glasswork.lock while a job writes the folder: a second writer is refused (a lock left by a killed
    process, whose pid is gone, is taken over). A folder this made and the job left empty is removed again."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".glasswork.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise GlassworkError(f"{folder} is being written by another job (pid {pid}): wait for it, or choose "
                                     f"another output folder") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
    else:
        raise GlassworkError(f"{lock}: could not take the output lock")
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()  # a job that failed before writing anything leaves no empty folder behind


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and hasattr(obj, "dim"):  # a tensor
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def read_json(path: str | Path, what: str = "JSON file") -> dict:
    path = Path(path)
    if not path.exists():
        raise GlassworkError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GlassworkError(f"{path}: {what} is not valid JSON ({e})") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (contiguous copies, so views are fine)."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except Exception as e:  # safetensors reports a full disk or a size limit as its own error type
            if type(e).__name__ != "SafetensorError":
                raise
            raise GlassworkError(f"{path}: could not write the file ({str(e).split(': ', 1)[-1]})") from None


def load_tensors(path: str | Path, what: str = "safetensors file") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise GlassworkError(f"{path}: {what} not found")
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types on truncated / corrupt files
        raise GlassworkError(f"{path}: {what} is corrupt or truncated ({e})") from None


def require_keys(obj: dict, keys: list[str], path: str | Path, what: str) -> None:
    """Raise a GlassworkError naming the first missing field (or saying the file holds no JSON object at all)."""
    if not isinstance(obj, dict):
        raise GlassworkError(f"{path}: {what} is {type(obj).__name__}, expected a JSON object with fields "
                             f"{', '.join(keys)}")
    for key in keys:
        if key not in obj:
            raise GlassworkError(f"{path}: {what} has no field '{key}' (expected fields: {', '.join(keys)})")
