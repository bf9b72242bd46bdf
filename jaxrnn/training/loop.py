"""The training loop: one jitted ``train_step``, evaluation, checkpoints, metrics, plots.

::

    config -> data set -> task (model + loss) -> optimizer -> loop:
        for step in range(start, total_steps):
            batch = dataset.train_batch(step)                       # a function of (seed, step)
            params, opt_state, metrics = train_step(params, opt_state, batch[, dropout key])
            every log_every:        append a "train" record to metrics.jsonl
            every eval_every:       evaluate on the test split, append a "test" record
            every checkpoint_every: save a checkpoint (and at the end, and on Ctrl-C)

Reproducibility: parameters come from ``fold_in(key(seed), 0)`` and the batch of every step from
``(seed, step)`` (see :mod:`jaxrnn.training.data`); dropout (``model.dropout``,
``model.recurrent_dropout``) draws its masks at step ``s`` from
``fold_in(fold_in(key(seed), DROPOUT_STREAM), s)`` (sampling at the end uses
``fold_in(key(seed), total_steps)``). A run resumed from a checkpoint therefore continues with the
very numbers of an uninterrupted run.

Data parallelism: a 1-D ``Mesh`` over all devices (of all processes), the batch sharded along
its first axis, parameters and optimizer state replicated; ``jit`` inserts the gradient
all-reduce. Launched as several processes, :func:`maybe_initialize_distributed` connects them
first (``jax.distributed.initialize``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
import yaml
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from jaxrnn.training import data as data_lib
from jaxrnn.training import host
from jaxrnn.training.checkpoint import Checkpointer, CheckpointError, RunDirError, RunDirLock
from jaxrnn.training.config import Config, ConfigError, Target, parse_target
from jaxrnn.training.optim import make_optimizer, make_schedule
from jaxrnn.training.tasks import Task, make_task, sample_text


class Diverged(RuntimeError):
    """The training loss, the gradient norm, the parameters or the optimizer state became NaN
    or infinite."""


@dataclasses.dataclass
class RunResult:
    status: str  # "finished" | "interrupted"
    step: int  # steps completed
    metrics: dict  # last evaluation ("test_*") and train-window ("train_*") means
    run_dir: pathlib.Path
    params: Any
    seconds: float
    sample: str | None = None


# --- distribution ----------------------------------------------------------------------------


def maybe_initialize_distributed() -> bool:
    """Calls ``jax.distributed.initialize`` when the environment describes a multi-process job.

    Set ``JAX_COORDINATOR_ADDRESS`` (host:port), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``
    (or run under a cluster launcher JAX detects, e.g. SLURM with ``JAXRNN_DISTRIBUTED=1``).
    Returns whether it initialized.
    """
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env and int(env.get("JAX_NUM_PROCESSES", "1")) > 1:
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
        )
        return True
    if env.get("JAXRNN_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """A 1-D mesh over all devices: ``batch`` sharded on axis 0, everything else replicated."""

    mesh: Mesh
    batch: NamedSharding
    replicated: NamedSharding

    @classmethod
    def over_all_devices(cls) -> DataParallel:
        mesh = Mesh(np.array(jax.devices()), ("data",))
        return cls(
            mesh, NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
        )

    @property
    def size(self) -> int:
        return self.mesh.size

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global batch (the same on every process) -> arrays sharded over the mesh."""
        n, p = jax.process_count(), jax.process_index()

        def put(a):
            local = np.split(a, n)[p]  # this process's rows  # [B / n, ...]
            return jax.make_array_from_process_local_data(self.batch, local, a.shape)

        return {k: put(v) for k, v in batch.items()}

    def put_replicated(self, tree: Any) -> Any:
        return jax.device_put(tree, self.replicated)


DROPOUT_STREAM = 2**31 - 1  # folded into key(seed) for the dropout keys; no step count reaches it


# --- the step --------------------------------------------------------------------------------


def make_train_step(
    loss_fn: Callable[[Any, dict], tuple[jax.Array, dict]], tx: optax.GradientTransformation
) -> Callable[[Any, Any, dict], tuple[Any, Any, dict]]:
    """The pure step ``train_step(params, opt_state, batch[, key]) -> (params, opt_state, metrics)``.

    ``metrics`` holds what ``loss_fn`` returns plus ``grad_norm`` (before clipping). Given a
    ``key`` (dropout), the step calls ``loss_fn(params, batch, key)``.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> loss_fn = lambda p, b: (jnp.mean((b["x"] * p - b["y"]) ** 2), {})
        >>> step = jax.jit(make_train_step(loss_fn, optax.sgd(0.1)))
        >>> p, s, m = step(jnp.array(0.0), optax.sgd(0.1).init(jnp.array(0.0)),
        ...                {"x": jnp.ones(4), "y": jnp.full(4, 2.0)})
        >>> round(float(p), 3), round(float(m["loss"]), 3)
        (0.4, 4.0)
    """

    def train_step(params, opt_state, batch, key=None):
        args = (params, batch) if key is None else (params, batch, key)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(*args)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}

    return train_step


def all_finite(tree: Any) -> jax.Array:
    """Whether every floating-point entry of ``tree`` is finite (a scalar bool array)."""
    leaves = [x for x in jax.tree.leaves(tree) if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)]
    return jax.numpy.all(jax.numpy.stack([jax.numpy.all(jax.numpy.isfinite(x)) for x in leaves]))


def evaluate(
    eval_step: Callable, task: Task, params: Any, dataset: Any, batch_size: int, dp: DataParallel
) -> dict[str, float]:
    """Runs ``eval_step`` over the whole test split; means of the masked sums."""
    totals: dict[str, float] = {}
    for batch in dataset.eval_batches(batch_size):
        sums = jax.device_get(eval_step(params, dp.put_batch(batch)))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return {k: float(v) for k, v in task.summarize(totals).items()}


# --- metrics files ---------------------------------------------------------------------------


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (process 0 only)."""

    def __init__(self, path: pathlib.Path, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def reset(self) -> None:
        """Empties the file (a run starting at step 0)."""
        if self.enabled:
            self._replace([])

    def truncate_after(self, step: int, log: Callable[[str], None] = print) -> None:
        """Drops records of steps after ``step`` and the resume records of ``step`` itself (a
        resumed run writes them again).

        A torn final line (a process killed while appending) is dropped with a note to ``log``.

        Raises:
            RunDirError: a line other than the last is not a JSON record (naming file and line).
        """
        if not (self.enabled and self.path.exists()):
            return
        lines = self.path.read_text().splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        keep = []
        for i, ln in enumerate(lines):
            if not ln.strip():
                continue
            record = _parse_record(ln)
            if record is None and i == len(lines) - 1:
                log(f"{self.path}: dropped the torn last line {i + 1} ({ln[:60]!r})")
                continue
            if record is None:
                raise RunDirError(
                    f"{self.path}, line {i + 1}: not a JSON metrics record ({ln[:60]!r}); "
                    f"repair or delete that line to resume"
                )
            at = record.get("step", 0)
            if at < step or (at == step and record.get("split") != "resume"):
                keep.append(ln)
        self._replace(keep)

    def _replace(self, lines: list[str]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in lines))
        os.replace(tmp, self.path)  # whole or not at all, should the process be killed here

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _parse_record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl`` file.

    Raises:
        ValueError: a line that is not a JSON record (naming the file and the line).
    """
    out = []
    for i, ln in enumerate(pathlib.Path(path).read_text().splitlines()):
        if ln.strip():
            record = _parse_record(ln)
            if record is None:
                raise ValueError(f"{path}, line {i + 1}: not a JSON metrics record ({ln[:60]!r})")
            out.append(record)
    return out


# what each task's numbers are, for the plots' axes
METRIC_LABELS = {
    "imdb": {"loss": "loss (binary cross-entropy)", "accuracy": "accuracy"},
    "shakespeare": {"loss": "loss (nats/char)", "accuracy": "next-character accuracy"},
    "adding": {"loss": "MSE"},
}


def plot_metrics(
    records: list[dict],
    png_path: str | os.PathLike,
    title: str = "",
    *,
    task: str | None = None,
    target: Target | None = None,
    steps_per_epoch: int | None = None,
) -> None:
    """Loss (and accuracy when recorded) against step, train and test, saved as a PNG; each
    axis named by the task's metric, the target as a dashed line on its panel, and epoch
    boundaries marked (when there are at most 20)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = METRIC_LABELS.get(task or "", {})
    panels = ["loss"] + (["accuracy"] if any("accuracy" in r for r in records) else [])
    fig = Figure(figsize=(5.5 * len(panels), 4))
    FigureCanvasAgg(fig)
    last = max((r["step"] for r in records if "step" in r), default=0)
    for i, name in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for split, style in (("train", "-"), ("test", "o-")):
            pts = [(r["step"], r[name]) for r in records if r.get("split") == split and name in r]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, label=split, markersize=3)
        if target is not None and target.metric in (
            f"test_{name}",
            "test_mse" if name == "loss" else "",
        ):
            ax.axhline(
                target.value, color="k", ls="--", lw=1, label=f"target {target.op} {target.value:g}"
            )
        if steps_per_epoch and 1 < last / steps_per_epoch <= 20:
            for e in range(1, int(last // steps_per_epoch) + 1):
                ax.axvline(e * steps_per_epoch, color="0.6", lw=0.6, ls=":")
            ax.set_xlabel(f"step (dotted: epochs of {steps_per_epoch} steps)")
        else:
            ax.set_xlabel("step")
        ax.set_ylabel(labels.get(name, name))
        if name == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)


# --- the loop --------------------------------------------------------------------------------


def total_steps(cfg: Config, steps_per_epoch: int) -> int:
    if cfg.train.steps is not None:
        return cfg.train.steps
    return max(1, math.ceil(cfg.train.epochs * steps_per_epoch))


class _Interrupt:
    """Turns the first SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.flag = False
        self._old = None

    def __enter__(self):
        if jax.process_count() == 1 and _in_main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.flag:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (mappings inside ``cell_options`` included)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


_ABSENT = "<absent>"


def config_changes(old: dict, new: dict) -> dict[str, list]:
    """``{"section.key": [old, new]}`` for every key whose value differs between two configs."""
    a, b = _flatten(old), _flatten(new)
    return {
        k: [a.get(k, _ABSENT), b.get(k, _ABSENT)]
        for k in sorted(set(a) | set(b))
        if a.get(k, _ABSENT) != b.get(k, _ABSENT)
    }


def _comparable(cfg_dict: dict) -> dict:
    """The parts of a config that must not change across ``--resume``. ``model.backend`` and
    ``model.remat`` may: they pick the code path, not the model (runs written before they
    existed lack them, or have the ``model.fast`` they replaced)."""
    out = {k: cfg_dict[k] for k in ("task", "seed", "data", "model")}
    out["model"] = {k: v for k, v in out["model"].items() if k not in ("backend", "fast", "remat")}
    return out


def _run_key(path: pathlib.Path) -> tuple[str, int]:
    """Orders run directories ``<date-time>[-n]`` by time, then ``n``."""
    stamp, _, n = path.name.partition("~")
    return stamp, int(n) if n.isdigit() else 0


def _runs_of(parent: pathlib.Path) -> list[pathlib.Path]:
    """The run directories under ``parent`` (those with checkpoints), oldest first."""
    if not parent.is_dir():
        return []
    return sorted((p for p in parent.iterdir() if (p / "checkpoints").is_dir()), key=_run_key)


def _new_run_dir(parent: pathlib.Path) -> pathlib.Path:
    """A new, empty ``parent/<date-time>`` (``~2``, ``~3``, ... within the same second).
    Every process of a multi-host run names the same one (the chief's clock)."""
    now = time.time()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        now = float(multihost_utils.broadcast_one_to_all(np.float64(now)))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = parent / (stamp if n == 1 else f"{stamp}~{n}")
        try:
            path.mkdir(exist_ok=jax.process_index() != 0)
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"{parent}: no free run directory name for {stamp}")


def run_directory(
    cfg: Config, resume: bool | str, log: Callable[[str], None]
) -> tuple[pathlib.Path, bool]:
    """Where a run writes, and whether it resumes there.

    * ``train.run_dir`` set: that directory (``resume`` as given).
    * ``resume`` a string: that run, a directory or a name under ``runs/<config name>/``.
    * ``resume=True``: the latest run of ``runs/<config name>/`` that has checkpoints (or
      ``runs/<config name>/`` itself where it holds them, the layout of older versions); with
      none, a new run.
    * otherwise a new ``runs/<config name>/<date-time>/``, so the same command runs twice.

    Raises:
        RunDirError: ``resume`` names a run that does not exist.
    """
    parent = pathlib.Path("runs") / cfg.name
    if isinstance(resume, str):
        for path in (pathlib.Path(resume), parent / resume):
            if (path / "checkpoints").is_dir():
                return path, True
        runs = ", ".join(p.name for p in _runs_of(parent)) or "none"
        raise RunDirError(
            f"--resume {resume}: no run with checkpoints at {resume} or {parent / resume}; "
            f"runs of {cfg.name} in {parent}: {runs}"
        )
    if cfg.train.run_dir:
        return pathlib.Path(cfg.train.run_dir), bool(resume)
    if resume:
        if (parent / "checkpoints").is_dir():
            return parent, True
        runs = _runs_of(parent)
        if runs:
            return runs[-1], True
        log(f"--resume: no earlier run of {cfg.name} in {parent}; starting a new one")
    return _new_run_dir(parent), False


def train(
    cfg: Config,
    *,
    resume: bool | str = False,
    stop_at_step: int | None = None,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Trains per ``cfg``; writes ``metrics.jsonl``, ``curves.png``, ``summary.json`` and
    checkpoints under the run directory.

    Args:
        cfg: a validated config.
        resume: continue from the latest checkpoint of the latest run (``True``) or of the run
            a string names (see :func:`run_directory`, which picks the directory).
        stop_at_step: stop (with a checkpoint) once this many steps are done, as Ctrl-C would.
        log: where messages go (default: stderr).

    Returns:
        A :class:`RunResult` (status ``"finished"`` or ``"interrupted"``).

    Raises:
        Diverged: the loss, the gradient norm, the parameters or the optimizer state became
            NaN/inf. The message names the step and the newest checkpoint that resumes (only a
            finite state is saved; a checkpoint whose parameters give a non-finite loss is
            removed; with none left, the initial state is saved as step 0).
        ConfigError: a batch size that the devices do not divide.
        CheckpointError: ``--resume`` from a corrupt checkpoint or one of another model config
            (naming the keys that differ), or a run directory that already holds checkpoints
            without ``resume``.
        RunDirError: another process holds the run directory, or ``metrics.jsonl`` has a
            damaged line before its last.

    On ``--resume``, ``config.yaml`` keeps the config the run started with; each resume appends
    ``{"step", "time", "changes": {"key": [old, new]}}`` to ``resumes.jsonl``, and, when it
    changed something, a ``{"split": "resume", "changes": ...}`` record to ``metrics.jsonl``.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    maybe_initialize_distributed()
    t_start = time.perf_counter()
    run_dir, resume = run_directory(cfg, resume, log)
    chief = jax.process_index() == 0
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"run directory: {run_dir}")
    # one writer per run directory (the chief writes for all processes)
    lock = RunDirLock(run_dir).acquire() if chief else None
    try:
        return _train(cfg, run_dir, resume, stop_at_step, log, t_start)
    finally:
        if lock is not None:
            lock.release()


def _train(
    cfg: Config,
    run_dir: pathlib.Path,
    resume: bool,
    stop_at_step: int | None,
    log: Callable[[str], None],
    t_start: float,
) -> RunResult:
    chief = jax.process_index() == 0
    dp = DataParallel.over_all_devices()
    for key_name in ("batch_size", "eval_batch_size"):
        if getattr(cfg.train, key_name) % dp.size:
            raise ConfigError(
                f"train.{key_name}={getattr(cfg.train, key_name)} must be a multiple of the "
                f"{dp.size} devices it is split over"
            )

    dataset = data_lib.make_dataset(cfg.task, cfg.data, cfg.seed, cfg.train.batch_size)
    task = make_task(cfg, dataset)
    n_steps = total_steps(cfg, dataset.steps_per_epoch)
    eval_every = cfg.train.eval_every or dataset.steps_per_epoch
    tx = make_optimizer(cfg.optim, n_steps)
    lr_at = make_schedule(cfg.optim, n_steps)

    key = jax.random.key(cfg.seed)

    def initial_state():
        params = dp.put_replicated(task.init(jax.random.fold_in(key, 0)))
        return params, dp.put_replicated(tx.init(params))

    params, opt_state = initial_state()
    xla = host.compiler_options()  # 512-bit vectors on an AVX-512 CPU
    base_step = make_train_step(task.loss_fn, tx)

    def checked_step(*args):
        """The step, plus whether the new parameters and optimizer state are all finite (a
        checkpoint is written only from a finite state)."""
        params, opt_state, metrics = base_step(*args)
        return params, opt_state, metrics, all_finite((params, opt_state))

    train_step = jax.jit(
        checked_step,
        in_shardings=(dp.replicated, dp.replicated, dp.batch)
        + ((dp.replicated,) if task.stochastic else ()),
        out_shardings=dp.replicated,
        compiler_options=xla,
    )
    dropout_key = jax.random.fold_in(key, DROPOUT_STREAM)  # step s: fold_in(dropout_key, s)
    eval_step = jax.jit(
        task.eval_fn,
        in_shardings=(dp.replicated, dp.batch),
        out_shardings=dp.replicated,
        compiler_options=xla,
    )

    ckpt = Checkpointer(run_dir / "checkpoints", keep=cfg.train.keep_checkpoints)
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", enabled=chief)
    cfg_dict = cfg.to_dict()
    start, window = 0, {"n": 0}
    latest = ckpt.latest_step()
    if resume and latest is not None:
        old_cfg = ckpt.read_meta(latest).get("config", {})
        old_cfg.setdefault("diagnostics", {"every": 0})  # a run from before the section: off
        differ = config_changes(_comparable(old_cfg), _comparable(cfg_dict))
        if differ:
            raise CheckpointError(
                f"checkpoint {ckpt.directory / str(latest)} was written with another task/seed/"
                f"data/model config than the one given: "
                + "; ".join(
                    f"{k}: {a!r} in the checkpoint, {b!r} given" for k, (a, b) in differ.items()
                )
                + "; resume with the same values"
            )
        state, meta = ckpt.restore(latest, {"params": params, "opt_state": opt_state})
        params, opt_state = state["params"], state["opt_state"]
        start, window = int(meta["step"]), dict(meta["window"])
        metrics_log.truncate_after(start, log)
        log(f"resumed from {ckpt.directory / str(latest)} at step {start}")
        if chief:  # provenance: what this resume changed, beside the original config.yaml
            changes = config_changes(old_cfg, cfg_dict)
            entry = {
                "step": start,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "changes": changes,
            }
            with open(run_dir / "resumes.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
            if changes:
                metrics_log.write({"step": start, "split": "resume", "changes": changes})
                log(
                    "resumed with changes: "
                    + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
                )
    elif latest is not None:
        raise CheckpointError(
            f"{run_dir} already holds checkpoints (latest step {latest}); pass --resume to "
            f"continue, or choose another --set train.run_dir=..."
        )
    elif resume:
        log(f"--resume: no checkpoint in {ckpt.directory}; starting at step 0")
    if chief and not (resume and latest is not None):  # a resumed run keeps its first config
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
        metrics_log.reset()
    # diagnostics.every: the full ||dL/ds_t|| curves, kept out of metrics.jsonl for its size
    diag_log = MetricsLog(run_dir / "diagnostics.jsonl", enabled=chief)
    if resume and latest is not None:
        diag_log.truncate_after(start, log)
    elif chief and diag_log.path.exists():
        diag_log.reset()
    diag_every = cfg.diagnostics.every
    if diag_every:  # its own jitted function: the train step is the same with diagnostics off
        from jaxrnn.analyze import grad_norm_curve, grad_norm_summary

        diag_step = jax.jit(grad_norm_curve(cfg.task, task.model_cfg), compiler_options=xla)

    def save(step: int) -> None:
        ckpt.save(
            step,
            {"params": params, "opt_state": opt_state},
            {"step": step, "window": window, "config": cfg_dict},
        )

    def diverged(what: str, step: int, parent_bad: bool) -> Diverged:
        """The error to raise; when the parameters of step - 1 gave the non-finite loss, their
        checkpoint cannot resume and is removed, so that ``--resume`` takes the one named."""
        bar.close()
        note = ""
        if parent_bad and (step - 1) in ckpt.all_steps():
            ckpt.delete(step - 1)
            note = f" (removed checkpoint {step - 1}: its parameters give a non-finite loss)"
        good = ckpt.latest_step()
        if good is None:  # the initial state, as step 0: resuming from it starts afresh
            nonlocal params, opt_state, window
            params, opt_state = initial_state()
            window = {"n": 0}
            save(0)
            good = 0
        return Diverged(
            f"{what}; stopped. Last good checkpoint: {ckpt.directory / str(good)} (step {good})"
            f"{note}. Try a smaller optim.learning_rate or set optim.clip_norm, then --resume."
        )

    last_eval: dict[str, float] = {}
    last_train: dict[str, float] = {}
    status = "finished"
    B = cfg.train.batch_size
    if start < n_steps:  # compiled before the bar starts: its rate and ETA are steady-state
        t_compile = time.perf_counter()
        log("compiling the training step ...")
        first = dp.put_batch(dataset.train_batch(start))
        extra = (jax.random.fold_in(dropout_key, start),) if task.stochastic else ()
        train_step = train_step.lower(params, opt_state, first, *extra).compile()
        log(f"compiled the training step in {time.perf_counter() - t_compile:.1f} s")
    bar = tqdm(
        total=n_steps,
        initial=start,
        disable=not (cfg.train.progress and chief),
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        dynamic_ncols=True,
        desc=cfg.name,
        file=sys.stderr,
    )
    t_window = time.perf_counter()
    with _Interrupt() as interrupt:
        step = start
        while step < n_steps:
            batch = dp.put_batch(dataset.train_batch(step))
            extra = (jax.random.fold_in(dropout_key, step),) if task.stochastic else ()
            new_params, new_opt_state, m, finite = train_step(params, opt_state, batch, *extra)
            m, finite = jax.device_get((m, finite))
            loss, grad_norm = float(m["loss"]), float(m["grad_norm"])
            step += 1
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise diverged(
                    f"non-finite loss or gradient at step {step} (loss {loss}, gradient norm "
                    f"{grad_norm})",
                    step,
                    parent_bad=True,
                )
            if not finite:
                raise diverged(
                    f"non-finite parameters or optimizer state after step {step} (loss {loss}, "
                    f"gradient norm {grad_norm})",
                    step,
                    parent_bad=False,
                )
            if diag_every and step % diag_every == 0:  # at the parameters this step updated
                curve = np.asarray(jax.device_get(diag_step(params, batch)))  # [T]
                metrics_log.write(
                    {"step": step, "split": "diagnostics", "grad_norm_t": grad_norm_summary(curve)}
                )
                diag_log.write({"step": step, "grad_norm_t": curve.tolist()})
            params, opt_state = new_params, new_opt_state
            for k, v in m.items():
                window[k] = window.get(k, 0.0) + float(v)
            window["n"] += 1
            bar.update(1)
            if step % cfg.train.log_every == 0 or step == n_steps:
                now = time.perf_counter()
                n = window.pop("n")
                last_train = {k: v / n for k, v in window.items()}
                metrics_log.write(
                    {
                        "step": step,
                        "split": "train",
                        **last_train,
                        "lr": float(lr_at(step - 1)),
                        "examples_per_s": n * B / max(now - t_window, 1e-9),
                        "epoch": step / dataset.steps_per_epoch,
                    }
                )
                bar.set_postfix(
                    {k: f"{v:.4g}" for k, v in last_train.items() if k in ("loss", "accuracy")}
                    | {"ex/s": f"{n * B / max(now - t_window, 1e-9):.0f}"},
                    refresh=False,
                )
                window, t_window = {"n": 0}, now
            if step % eval_every == 0 or step == n_steps:
                last_eval = evaluate(
                    eval_step, task, params, dataset, cfg.train.eval_batch_size, dp
                )
                metrics_log.write(
                    {
                        "step": step,
                        "split": "test",
                        **last_eval,
                        "epoch": step / dataset.steps_per_epoch,
                    }
                )
                bar.write(
                    f"step {step}: " + ", ".join(f"test {k} {v:.4f}" for k, v in last_eval.items())
                )
            if step % cfg.train.checkpoint_every == 0 or step == n_steps:
                save(step)
            if interrupt.flag or (
                stop_at_step is not None and step >= stop_at_step and step < n_steps
            ):
                save(step)
                status = "interrupted"
                bar.close()
                log(
                    f"interrupted at step {step}; checkpoint saved in {ckpt.directory}. "
                    f"Continue with --resume."
                )
                break
    bar.close()
    ckpt.close()
    seconds = time.perf_counter() - t_start
    result = RunResult(
        status,
        step,
        {
            **{f"test_{k}": v for k, v in last_eval.items()},
            **{f"train_{k}": v for k, v in last_train.items()},
        },
        run_dir,
        params,
        seconds,
    )
    if status == "finished" and chief:
        if cfg.task == "shakespeare" and cfg.train.sample_chars > 0:
            result.sample = sample_text(
                cfg, task, params, dataset, jax.random.fold_in(key, n_steps)
            )
            (run_dir / "sample.txt").write_text(result.sample)
        target = parse_target(cfg.target, cfg.task) if cfg.target else None
        plot_metrics(
            read_metrics(metrics_log.path), run_dir / "curves.png", title=cfg.name,
            task=cfg.task, target=target, steps_per_epoch=dataset.steps_per_epoch,
        )  # fmt: skip
        if diag_log.path.exists():
            from jaxrnn.analyze import plot_grad_flow_heatmap

            plot_grad_flow_heatmap(
                read_metrics(diag_log.path), run_dir / "grad_flow.png", title=cfg.name
            )
        summary = {
            "config": cfg.name,
            "steps": step,
            "seconds_this_run": round(seconds, 1),
            "devices": dp.size,
            **result.metrics,
        }
        if target is not None:
            summary["target"] = str(target)
            summary["target_met"] = target.metric in result.metrics and target.met(result.metrics)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"run directory: {run_dir}")
    return result


__all__ = [
    "DataParallel",
    "Diverged",
    "RunResult",
    "all_finite",
    "config_changes",
    "evaluate",
    "make_train_step",
    "maybe_initialize_distributed",
    "plot_metrics",
    "read_metrics",
    "train",
]
