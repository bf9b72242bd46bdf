"""Checkpoints with orbax: ``{"params", "opt_state"}`` plus a JSON ``meta`` record.

Each save writes ``<run_dir>/checkpoints/<step>/`` through ``orbax.checkpoint.CheckpointManager``,
which writes into a temporary directory and renames it when complete, so an interrupted save
never leaves a half checkpoint that looks finished. Saves are synchronous (a Ctrl-C handler can
rely on the file being there when ``save`` returns). A checkpoint that cannot be read back is a
:class:`CheckpointError` naming its directory.
"""

from __future__ import annotations

import pathlib
from typing import Any

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or does not match the run's state."""


class Checkpointer:
    """Saves and restores ``(state, meta)`` pairs keyed by step under ``directory``."""

    def __init__(self, directory: str | pathlib.Path, keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        self._mgr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False
            ),
        )

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
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
