"""Guards that keep a user's data intact: atomic folder writes, checkpoint manifests, run locks,
local-only loading and one-line CLI errors.

- `atomic_dir(final)`: write into `final.tmp-<pid>`, then rename, so a kill never leaves a
  `config.json` without its weights.
- `write_manifest` / `verify_manifest`: size and sha256 of every file of a folder, checked on resume.
- `RunLock`: one run per output folder; a lock left by a dead process is cleared.
- `local_dir(path, what)`: the path must be an existing local folder (hub ids are refused).
- `cli_errors(main)`: package errors reach the user as one line (`--debug` for the traceback).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

from .jsonio import dumps_strict

MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".stccl_run.lock"


# ----------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success it replaces `final` (old one removed last)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_into(directory: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """`writer(tmp)` writes whole files into a temporary folder; each is then renamed into
    `directory` (which may hold other things, e.g. checkpoints), `config.json` last, so a kill
    never leaves a config without its weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".write.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        writer(tmp)
        files = sorted((p for p in tmp.rglob("*") if p.is_file()), key=lambda p: (p.name == "config.json", str(p)))
        for f in files:
            dest = directory / f.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def save_pretrained_atomic(model, directory: str | os.PathLike, **kwargs) -> Path:
    """`model.save_pretrained(directory)` through a temporary folder and renames (see `write_into`)."""
    return write_into(directory, lambda tmp: model.save_pretrained(str(tmp), **kwargs))


# ----------------------------------------------------------------------------- manifests
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | os.PathLike) -> dict:
    """Record size and sha256 of every file under `folder` in `folder/manifest.json`."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    (folder / MANIFEST_FILE).write_text(dumps_strict({"files": files}, indent=1))
    return files


def verify_manifest(folder: str | os.PathLike) -> str | None:
    """None when every file listed in `folder/manifest.json` is present and intact, else why not."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return f"{path} is missing (checkpoint not written completely, or by an older version)"
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError) as err:
        return f"{path} is unreadable ({err})"
    for name, want in files.items():
        p = folder / name
        if not p.is_file():
            return f"{p} is missing"
        size = p.stat().st_size
        if size != want["size"]:
            return f"{p} has {size} bytes, {want['size']} were written"
        if _sha256(p) != want["sha256"]:
            return f"{p} has a different checksum than was written"
    return None


# ----------------------------------------------------------------------------- run lock
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """`output_dir/.stccl_run.lock` holding our pid and host; refuses a live owner, clears a dead one."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.held = False

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    owner = {}
                same_host = owner.get("host") == me["host"]
                if same_host and owner.get("pid") == me["pid"]:
                    return self  # already ours (the script took it before `train`): re-entrant, not released here
                if same_host and not _pid_alive(int(owner.get("pid", -1))):
                    self.path.unlink(missing_ok=True)  # stale: left by a killed run
                    continue
                raise RuntimeError(
                    f"{self.path.parent} is in use by another run (pid {owner.get('pid', '?')} on "
                    f"{owner.get('host', '?')}, lock {self.path}); wait for it, or use another --output_dir"
                    + ("" if same_host else "; delete the lock file if that run is gone")
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(dumps_strict(me))
            self.held = True
            return self
        raise RuntimeError(f"could not take the run lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ----------------------------------------------------------------------------- local loading
def local_dir(path: str | os.PathLike | None, what: str, need: str | None = "config.json") -> Path:
    """`path` as an existing local folder (holding `need`), or a clear error; never a hub id."""
    if path is None or str(path) == "":
        raise FileNotFoundError(f"{what}: no path given")
    p = Path(path)
    if not p.exists():
        hub = "/" in str(path) and not str(path).startswith((".", "/", "~")) and str(path).count("/") == 1
        raise FileNotFoundError(
            f"{what}: {path!r} is not a local folder"
            + (" (it looks like a Hugging Face hub id; nothing is downloaded: download it yourself and pass the folder)"
               if hub else "")
        )
    if not p.is_dir():
        raise NotADirectoryError(f"{what}: expected a folder, got the file {path}")
    if need and not (p / need).is_file():
        raise FileNotFoundError(f"{what}: {path} holds no {need} (expected a save_pretrained folder)")
    return p


def from_pretrained_local(cls, path: str | os.PathLike | None, what: str, **kwargs):
    """`cls.from_pretrained(path, local_files_only=True)` after checking `path` is a local folder."""
    p = local_dir(path, what)
    return cls.from_pretrained(str(p), local_files_only=True, **kwargs)


# ----------------------------------------------------------------------------- CLI errors
class UsageError(ValueError):
    """A mistake in a command's arguments (a missing or contradictory flag). A console script
    prints its message as one line and exits 2; a library caller gets it as a ValueError."""


def cli_errors(main: Callable) -> Callable:
    """Wrap a console-script `main(argv=None)`: known errors (a :class:`UsageError` first) become
    one line on stderr and exit 2. The CLI modules raise exceptions; only this wrapper exits.

    `--debug` anywhere in argv (or STCCL_DEBUG=1) re-raises with the full traceback.
    """

    @functools.wraps(main)
    def wrapper(argv=None, *args, **kwargs):
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in argv or os.environ.get("STCCL_DEBUG") == "1"
        argv = [a for a in argv if a != "--debug"]
        if not debug:
            try:
                return main(argv, *args, **kwargs)
            except UsageError as err:
                print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
                raise SystemExit(2) from None
            except (ValueError, FileNotFoundError, NotADirectoryError, RuntimeError, OSError, KeyError) as err:
                msg = " ".join(str(err).split()) or type(err).__name__
                print(f"error: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
                raise SystemExit(2) from None
            except SystemExit as exit_:
                if not isinstance(exit_.code, str):
                    raise
                print(f"error: {' '.join(exit_.code.split())}", file=sys.stderr)
                raise SystemExit(2) from None
        return main(argv, *args, **kwargs)

    return wrapper
