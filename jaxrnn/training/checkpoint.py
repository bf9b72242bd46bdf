"""Checkpoints with orbax: ``{"params", "opt_state"}`` plus a JSON ``meta`` record.

Each save writes ``<run_dir>/checkpoints/<step>/`` through ``orbax.checkpoint.CheckpointManager``,
which writes into a temporary directory and renames it when complete, so an interrupted save
never leaves a half checkpoint that looks finished. Saves are synchronous (a Ctrl-C handler can
rely on the file being there when ``save`` returns). A checkpoint that cannot be read back is a
:class:`CheckpointError` naming its directory.

Rotation keeps the ``keep`` newest checkpoints, and never fewer than two: the newest one has not
yet been followed by a finite step, so the one before it is the newest known to resume.

:class:`RunDirLock` makes a process the only writer of a run directory: an exclusive
``fcntl.flock`` on ``<run_dir>/train.lock`` (holding the holder's pid), which the OS releases
when the process ends, however it ends, so a killed run leaves no stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pathlib
from typing import Any

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or does not match the run's state."""


class RunDirError(CheckpointError):
    """A run directory that cannot be written: another process holds it, or a damaged file."""


class RunDirLock:
    """An exclusive lock on a run directory, held from ``acquire`` to ``release``.

    Raises:
        RunDirError: another process holds the lock (the message names its pid).

    Examples:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> lock = RunDirLock(d).acquire()
        >>> RunDirLock(d).acquire()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        jaxrnn.training.checkpoint.RunDirError: run directory ... is in use by process ...
        >>> lock.release()
    """

    def __init__(self, run_dir: str | pathlib.Path):
        self.path = pathlib.Path(run_dir).absolute() / "train.lock"
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        # flock belongs to the open file description: a second open in this process conflicts
        # too, and the fd is not inherited by exec'd children (PEP 446), so only we hold it
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunDirError(f"cannot lock {self.path}: {e.strerror}") from None
            raise RunDirError(
                f"run directory {self.path.parent} is in use by process {holder} (it holds "
                f"{self.path}); wait for it to end, or choose another --set train.run_dir=..."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


class Checkpointer:
    """Saves and restores ``(state, meta)`` pairs keyed by step under ``directory``."""

    def __init__(self, directory: str | pathlib.Path, keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        self._mgr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max(keep, 2), create=True, enable_async_checkpointing=False
            ),
        )

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def delete(self, step: int) -> None:
        """Removes the checkpoint of ``step``."""
        self._mgr.delete(step)

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Writes ``state`` (the caller has checked it is finite) and ``meta`` as ``step``."""
        if step in self._mgr.all_steps():
            return
        self._mgr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._mgr.wait_until_finished()

    def read_meta(self, step: int) -> dict:
        """The JSON meta record of ``step`` (raises :class:`CheckpointError` when unreadable)."""
        path = self.directory / str(step)
        try:
            meta = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = meta["meta"]
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})"
            ) from e
        if not isinstance(meta, dict) or "step" not in meta:
            raise CheckpointError(f"checkpoint {path} has no readable meta record")
        return meta

    def restore(self, step: int, target: Any) -> tuple[Any, dict]:
        """Restores the checkpoint of ``step`` into the structure (and shardings) of ``target``.

        Raises:
            CheckpointError: the checkpoint is unreadable, incomplete or of another structure.
        """
        path = self.directory / str(step)
        try:
            out = self._mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                ),
            )
            state, meta = out["state"], out["meta"]
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            raise CheckpointError(
                f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); delete it to resume from an "
                f"earlier one, or start a new run_dir"
            ) from e
        if not isinstance(meta, dict) or "step" not in meta:
            raise CheckpointError(f"checkpoint {path} has no readable meta record")
        return state, meta

    def close(self) -> None:
        self._mgr.close()
