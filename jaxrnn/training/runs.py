"""A trained run read back: its config, model and parameters, for analysis and inference.

::

    run = load_run("runs/imdb_gru/20261206-131500")
    logits = models.classifier_logits(run.task.model_cfg, run.params, tokens)
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax

from jaxrnn.training import data as data_lib
from jaxrnn.training.checkpoint import Checkpointer, CheckpointError
from jaxrnn.training.config import Config, from_dict
from jaxrnn.training.optim import make_optimizer
from jaxrnn.training.tasks import Task, make_task


@dataclasses.dataclass(frozen=True)
class Run:
    """A run directory's checkpoint, loaded.

    Attributes:
        directory: the run directory.
        cfg: the config the checkpoint was written with.
        task: its task (``task.model_cfg`` is the model's config).
        params: the model's parameters at ``step``.
        step: the checkpoint's step.
        dataset: the tiny-shakespeare data set (its characters); ``None`` for other tasks.
    """

    directory: pathlib.Path
    cfg: Config
    task: Task
    params: Any
    step: int
    dataset: Any = None


def load_run(run_dir: str | pathlib.Path, step: int | None = None) -> Run:
    """Loads a run directory written by ``train.py``.

    Args:
        run_dir: the run directory (it holds ``checkpoints/``).
        step: which checkpoint; ``None`` for the latest.

    Raises:
        CheckpointError: no checkpoint there, that step missing, or a damaged checkpoint.
    """
    directory = pathlib.Path(run_dir)
    if not (directory / "checkpoints").is_dir():
        raise CheckpointError(f"{directory} is not a run directory: it has no checkpoints/")
    ckpt = Checkpointer(directory / "checkpoints")
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise CheckpointError(f"{directory / 'checkpoints'} holds no checkpoint")
        step = max(steps) if step is None else step
        if step not in steps:
            raise CheckpointError(f"{directory}: no checkpoint of step {step}; there are {steps}")
        raw = ckpt.read_meta(step)["config"]
        cfg = from_dict(
            {k: v for k, v in raw.items() if k != "name"},
            source=str(directory / "checkpoints" / str(step)),
            name=raw.get("name"),
        )
        dataset = None
        if cfg.task == "shakespeare":  # the model's vocabulary is the text's characters
            dataset = data_lib.make_dataset(cfg.task, cfg.data, cfg.seed, cfg.train.batch_size)
        task = make_task(cfg, dataset)
        params = task.init(jax.random.key(cfg.seed))
        opt_state = make_optimizer(cfg.optim, 1).init(params)  # the structure restored into
        state, _ = ckpt.restore(step, {"params": params, "opt_state": opt_state})
    finally:
        ckpt.close()
    return Run(directory, cfg, task, state["params"], step, dataset)
