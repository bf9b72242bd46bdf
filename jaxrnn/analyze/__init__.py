"""The dynamics of a trained run: gradient flow through time, Lyapunov spectrum, fixed points.

::

    python -m jaxrnn.analyze RUN_DIR [--step N] [--batch 32] [--out DIR] [--lyapunov-k K]

writes ``RUN_DIR/analysis/`` (or ``--out``): ``grad_flow.png``, ``lyapunov.png``, for
classifiers ``fixed_points.png``, and ``analysis.json`` with every number of the figures.

Each task's model is ``embedding -> recurrence -> readout``; :func:`recurrence` cuts out the
middle as :mod:`jaxrnn.dynamics` reads it: the cell, its parameters, the inputs the cell sees
(``embedding[tokens]`` for the text tasks) and the task's loss as a function of the final
carry and the outputs. A stack of layers (``model.num_layers > 1``) is one cell whose carry is
the list of all layers' carries, so ``s_t`` holds every layer's state (``S = L H``).

The loss of :func:`recurrence` is the *sum* over the batch of each sequence's own training loss
(its mean over positions for the language model): row ``b`` of ``carry_grad_norms`` is then the
gradient of sequence ``b``'s loss, whatever the batch size. Dropout is off (the deterministic
model), and post-padded IMDB reviews are read over all ``T`` steps, their padding included.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrnn import cells, dynamics
from jaxrnn.cells._common import carry_output

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Recurrence:
    """The recurrence inside a task's model, for one batch.

    Attributes:
        cell: ``cell(params, carry, x) -> (carry, y)``, with ``initial_carry``.
        params: the cell's parameters (a list of layers' for a stack).
        xs: ``[B, T, D]`` the inputs the cell sees.
        loss_fn: ``(final_carry, ys) -> scalar``, the batch's summed per-sequence loss.
        readout: ``[S]`` the vector the classifier's logit reads the flat state with, or ``None``.
        readout_bias: the logit's bias (classifiers), else ``None``.
    """

    cell: Callable
    params: Any
    xs: Array
    loss_fn: Callable[[Any, Any], Array]
    readout: Array | None = None
    readout_bias: Array | None = None


def _stacked(cell: Callable) -> Callable:
    """Layers run bottom to top within each step: one cell whose carry is the list of carries."""

    def stack_cell(params, carries, x):
        new = []
        for p, c in zip(params, carries, strict=True):
            c, x = cell(p, c, x)
            new.append(c)
        return new, x

    def initial_carry(params, batch_shape):
        return [cell.initial_carry(p, batch_shape) for p in params]

    stack_cell.initial_carry = initial_carry
    return stack_cell


def _readout_vector(cell: Callable, params: Any, w: Array) -> Array:
    """``w`` in the flat state's layout: the gradient of the (linear) logit ``h . w``."""
    example = cell.initial_carry(params, ())
    size = sum(int(np.prod(jnp.shape(a))) for a in jax.tree.leaves(example))
    return jax.grad(lambda s: carry_output(dynamics.unflatten(cell, params, s)) @ w)(
        jnp.zeros((size,), w.dtype)
    )


def recurrence(task: str, model_cfg: Any, params: Any, batch: dict) -> Recurrence:
    """The recurrence of ``task``'s model (``imdb``, ``shakespeare``, ``adding``) on ``batch``.

    Args:
        task: the config's ``task``.
        model_cfg: ``Task.model_cfg`` (``ClassifierConfig``, ``CharLMConfig``,
            ``RegressorConfig``).
        params: the model's parameters.
        batch: a training or test batch of the task (``tokens [B, T]`` and ``labels [B]``;
            ``tokens [B, L + 1]``; ``xs [B, T, 2]`` and ``y [B]``).

    Raises:
        ValueError: an unknown task.
    """
    cell = cells.get(model_cfg.cell).cell
    if task == "imdb":
        xs = jnp.take(params["embedding"], batch["tokens"], axis=0)  # [B, T] -> [B, T, E]
        w, b = params["W_o"][:, 0], params["b_o"][0]

        def loss_fn(final, ys):
            z = carry_output(final) @ w + b  # [B]
            labels = jnp.asarray(batch["labels"]).astype(z.dtype)
            return jnp.sum(optax.sigmoid_binary_cross_entropy(z, labels))

        return Recurrence(
            cell, params["rnn"], xs, loss_fn, _readout_vector(cell, params["rnn"], w), b
        )
    if task == "shakespeare":
        tokens = jnp.asarray(batch["tokens"])
        xs = jnp.take(params["embedding"], tokens[:, :-1], axis=0)  # [B, L, E]
        rnn_params = params["rnn"]
        if model_cfg.num_layers > 1:
            cell = _stacked(cell)

        def loss_fn(final, ys):  # ys [B, L, H], the top layer's outputs
            z = ys @ params["W_o"] + params["b_o"]  # [B, L, V]
            ce = optax.softmax_cross_entropy_with_integer_labels(z, tokens[:, 1:])
            return jnp.sum(jnp.mean(ce, axis=1))

        return Recurrence(cell, rnn_params, xs, loss_fn)
    if task == "adding":
        w, b = params["W_o"][:, 0], params["b_o"][0]

        def loss_fn(final, ys):
            err = carry_output(final) @ w + b - batch["y"]  # [B]
            return jnp.sum(err**2)

        return Recurrence(cell, params["rnn"], jnp.asarray(batch["xs"]), loss_fn)
    raise ValueError(f"unknown task {task!r}; expected one of ['adding', 'imdb', 'shakespeare']")


def grad_norm_curve(task: str, model_cfg: Any) -> Callable[[Any, dict], Array]:
    """``(params, batch) -> [T]``: the batch mean of ``||dL/ds_t||`` (:func:`recurrence`'s
    loss), a pure function to ``jit`` (the training loop's ``diagnostics.every``)."""

    def curve(params, batch):
        rec = recurrence(task, model_cfg, params, batch)
        norms = dynamics.carry_grad_norms(rec.loss_fn, rec.cell, rec.params, rec.xs)  # [B, T]
        return jnp.mean(norms, axis=0)

    return curve


def grad_norm_summary(curve: Any) -> dict[str, float]:
    """The few numbers of a ``[T]`` curve ``||dL/ds_t||`` (``t = 1 .. T``) that a metrics
    record keeps: at ``t = T``, ``T/2`` (``T // 2``, at least 1) and ``1``, and the ratio
    ``first_over_last`` = ``||dL/ds_1|| / ||dL/ds_T||`` (below 1: vanishing towards the start)."""
    c = np.asarray(curve, dtype=np.float64)
    T = c.shape[0]
    last = float(c[-1])
    return {
        "T": last,
        "T/2": float(c[max(T // 2, 1) - 1]),
        "1": float(c[0]),
        "first_over_last": float(c[0] / last) if last > 0 else None,
    }


def plot_grad_flow_heatmap(records: list[dict], png_path: str | pathlib.Path, title: str = ""):
    """Heat map of ``||dL/ds_t||`` (log colour scale): training step (rows) by time step
    ``t`` (columns), from the records ``{"step", "grad_norm_t": [T]}`` of ``diagnostics.jsonl``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    records = [r for r in records if isinstance(r.get("grad_norm_t"), list)]
    if not records:
        return
    steps = [r["step"] for r in records]
    grid = np.array([r["grad_norm_t"] for r in records], dtype=np.float64)  # [n, T]
    positive = grid[grid > 0]
    lo, hi = (positive.min(), positive.max()) if positive.size else (1e-12, 1.0)
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    T = grid.shape[1]
    im = ax.imshow(
        np.where(grid > 0, grid, lo),
        aspect="auto",
        origin="lower",
        norm=LogNorm(vmin=lo, vmax=max(hi, lo * 1.0001)),
        extent=(0.5, T + 0.5, 0, len(steps)),
        interpolation="nearest",
    )
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 6)).round().astype(int)
    ax.set_yticks(ticks + 0.5, [str(steps[i]) for i in ticks])
    ax.set_xlabel("time step t")
    ax.set_ylabel("training step")
    fig.colorbar(im, ax=ax, label="||dL/ds_t|| (batch mean)")
    ax.set_title(title or "gradient flow through time")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)


# --- python -m jaxrnn.analyze ------------------------------------------------------------------


def _test_batch(run: Any, size: int) -> dict:
    """The first ``size`` test sequences of the run's task (the language model: windows of
    ``data.seq_len + 1`` characters of the validation text)."""
    from jaxrnn.training import data as data_lib

    cfg = run.cfg
    dataset = run.dataset or data_lib.make_dataset(cfg.task, cfg.data, cfg.seed, size)
    batch = next(iter(dataset.eval_batches(size)))
    keep = np.asarray(batch.pop("mask")) > 0
    batch = {k: np.asarray(v)[keep] for k, v in batch.items()}
    if cfg.task == "shakespeare":
        batch["tokens"] = batch["tokens"][:, : cfg.data.seq_len + 1]
    return batch


def _flat_rows(tree: Any) -> np.ndarray:
    """Carries with a leading axis -> ``[N, S]`` in :mod:`jaxrnn.dynamics`' layout (real
    leaves concatenated in order)."""
    leaves = [np.asarray(a) for a in jax.tree.leaves(tree)]
    return np.concatenate([a.reshape(a.shape[0], -1) for a in leaves], axis=1)


def median_range(a: Any) -> dict[str, float]:
    """``{"median", "min", "max"}`` of the numbers ``a`` (any shape), as floats for JSON."""
    a = np.asarray(a, dtype=np.float64)
    return {"median": float(np.median(a)), "min": float(a.min()), "max": float(a.max())}


def word_log_odds(
    x_train: np.ndarray, y_train: np.ndarray, len_train: np.ndarray, vocab_size: int, min_count: int
):
    """Smoothed log-odds of each word in positive versus negative training reviews.

    ``log((n_pos(w) + 1) / (N_pos + V)) - log((n_neg(w) + 1) / (N_neg + V))`` with ``n`` the
    word's occurrences in the positive (negative) reviews as the model reads them (the kept
    ``maxlen`` words), ``N`` all words of that class, ``V`` the vocabulary; ``NaN`` for
    padding, the unknown word and words seen fewer than ``min_count`` times.

    Args:
        x_train: ``[N, T]`` word ids (0 padding, 1 unknown), as ``load_imdb`` gives them.
        y_train: ``[N]`` labels, 1 positive.
        len_train: ``[N]`` the words each review keeps.

    Returns:
        ``(log_odds [V], counts [V])``.
    """
    mask = np.arange(x_train.shape[1])[None, :] < len_train[:, None]  # [N, T]
    pos = np.bincount(x_train[mask & (y_train[:, None] == 1)], minlength=vocab_size)
    neg = np.bincount(x_train[mask & (y_train[:, None] == 0)], minlength=vocab_size)
    counts = pos + neg
    lo = np.log((pos + 1) / (pos.sum() + vocab_size)) - np.log((neg + 1) / (neg.sum() + vocab_size))
    lo = lo.astype(np.float64)
    lo[:2] = np.nan  # 0 padding, 1 unknown
    lo[counts < min_count] = np.nan
    return lo, counts


def analyze(
    run_dir: str | pathlib.Path,
    *,
    step: int | None = None,
    batch: int = 32,
    out: str | pathlib.Path | None = None,
    lyapunov_k: int | None = None,
    lyapunov_batch: int = 8,
    fixed_point_starts: int = 128,
    fixed_point_steps: int = 2000,
    progress: bool = True,
) -> dict:
    """Analyses a trained run's checkpoint; writes the figures and ``analysis.json``.

    Args:
        run_dir: a run directory of ``train.py`` (with ``checkpoints/``).
        step: which checkpoint; ``None``: the latest.
        batch: test sequences the curves and spectra are computed on.
        out: where to write; ``None``: ``run_dir/analysis``.
        lyapunov_k: exponents to compute; ``None``: all ``S`` when ``S <= 256``, else 32.
        lyapunov_batch: the spectrum is computed on the first this many of the ``batch``
            sequences (each step costs a QR of ``[S, k]`` per sequence).
        fixed_point_starts: classifiers: starts of :func:`jaxrnn.dynamics.fixed_points`, drawn
            from the states visited on the test batch.
        fixed_point_steps: Adam steps of the fixed-point search.
        progress: a tqdm bar over the stages.

    Returns:
        The numbers written to ``analysis.json``.

    Raises:
        CheckpointError: ``run_dir`` is not a run directory, or has no such step.
        ValueError: a ``batch``, ``lyapunov_k`` or ``fixed_point_starts`` out of range.
    """
    from tqdm import tqdm

    from jaxrnn.training.runs import load_run

    for name, value in (
        ("batch", batch),
        ("lyapunov_batch", lyapunov_batch),
        ("fixed_point_starts", fixed_point_starts),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"analyze: {name} must be an int >= 1; got {value!r}")
    run = load_run(run_dir, step)
    classifier = run.cfg.task == "imdb"
    stages = ["test batch", "gradient flow", "Lyapunov spectrum"]
    stages += ["fixed points"] if classifier else []
    bar = tqdm(total=len(stages) + 1, disable=not progress, desc="analyze", unit="stage")
    out = pathlib.Path(out) if out is not None else run.directory / "analysis"
    out.mkdir(parents=True, exist_ok=True)

    bar.set_postfix_str(stages[0])
    data = _test_batch(run, batch)
    rec = recurrence(run.cfg.task, run.task.model_cfg, run.params, data)
    B, T, _ = rec.xs.shape
    S = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(rec.cell.initial_carry(rec.params, ())))
    result: dict[str, Any] = {
        "run": str(run.directory),
        "step": run.step,
        "task": run.cfg.task,
        "cell": run.task.model_cfg.cell,
        "state_size": S,
        "batch": B,
        "T": T,
    }
    bar.update(1)

    bar.set_postfix_str(stages[1])
    norms = np.asarray(
        jax.jit(lambda p, xs: dynamics.carry_grad_norms(rec.loss_fn, rec.cell, p, xs))(
            rec.params, rec.xs
        )
    )  # [B, T]
    mean = norms.mean(axis=0)
    result["grad_flow"] = {
        "loss": "each sequence's own training loss",
        "mean": mean.tolist(),
        "p10": np.quantile(norms, 0.1, axis=0).tolist(),
        "p90": np.quantile(norms, 0.9, axis=0).tolist(),
        "summary": grad_norm_summary(mean),
    }
    bar.update(1)

    bar.set_postfix_str(stages[2])
    k = lyapunov_k if lyapunov_k is not None else (S if S <= 256 else 32)
    lyap = np.asarray(
        jax.jit(lambda p, xs: dynamics.lyapunov_spectrum(rec.cell, p, xs, k=k))(
            rec.params, rec.xs[:lyapunov_batch]
        )
    )  # [min(B, lyapunov_batch), k]
    result["lyapunov"] = {
        "k": k,
        "sequences": int(lyap.shape[0]),
        "per_step": "natural log",
        "mean": lyap.mean(axis=0).tolist(),
        "std": lyap.std(axis=0).tolist(),
        "max": float(lyap.max()),
    }
    bar.update(1)

    fp_info = None
    if classifier:
        bar.set_postfix_str(stages[3])
        fp_info = _fixed_point_stage(rec, fixed_point_starts, fixed_point_steps)
        result["fixed_points"] = fp_info["numbers"]
        bar.update(1)

    bar.set_postfix_str("figures")
    _plot_grad_flow(out / "grad_flow.png", norms, result)
    _plot_lyapunov(out / "lyapunov.png", lyap, result)
    if fp_info is not None:
        _plot_fixed_points(out / "fixed_points.png", fp_info, result)
        np.savez(
            out / "fixed_points.npz", points=fp_info["points"], eigenvalues=fp_info["eigenvalues"]
        )
    (out / "analysis.json").write_text(json.dumps(result, indent=1) + "\n")
    bar.update(1)
    bar.close()
    return result


def _fixed_point_stage(rec: Recurrence, n_starts: int, max_steps: int) -> dict:
    """Fixed points at zero input from states visited on the batch, and the line fit."""
    states = dynamics.visited_states(rec.cell, rec.params, rec.xs)  # [B, T, S]
    visited = jnp.swapaxes(states, 0, 1).reshape(-1, states.shape[-1])  # [T * B, S]
    n = visited.shape[0]
    rows = np.random.default_rng(0).choice(n, size=min(n_starts, n), replace=False)
    starts = visited[rows]
    x0 = jnp.zeros(rec.xs.shape[-1:], rec.xs.dtype)
    fp = dynamics.fixed_points(rec.cell, rec.params, x0, starts, max_steps=max_steps)
    found = fp.unique(1e-5, converged_only=False)
    keep = np.asarray(found.converged) | np.asarray(found.slow)
    points = np.asarray(found.points)[keep]
    eigs = np.asarray(found.eigenvalues)[keep]
    numbers: dict[str, Any] = {
        "input": "zero vector",
        "starts": int(len(rows)),
        "converged": int(np.sum(fp.converged)),
        "slow": int(np.sum(fp.slow)),
        "distinct": int(len(points)),
        "residual_max": float(np.max(np.asarray(found.residuals)[keep])) if len(points) else None,
    }
    info = {"numbers": numbers, "points": points, "eigenvalues": eigs, "visited": visited}
    if len(points) >= 2:
        line = dynamics.line_attractor_summary(points, eigs, rec.readout)
        centered = points - points.mean(axis=0)
        var = np.linalg.svd(centered, compute_uv=False) ** 2
        numbers["line"] = {
            "pc1_share": float(line.pc1_share),
            "pc_shares": (var[:5] / max(var.sum(), 1e-300)).tolist(),
            "leading_modulus": median_range(line.leading_modulus),
            "second_modulus": median_range(line.second_modulus),
            "readout_cosine": float(line.readout_cosine),
        }
        info["line"] = line
    else:
        numbers["line"] = None  # a line needs two distinct points
    return info


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _title(result: dict) -> str:
    return f"{pathlib.Path(result['run']).name} ({result['task']}, {result['cell']}), step {result['step']}"


def _plot_grad_flow(path: pathlib.Path, norms: np.ndarray, result: dict) -> None:
    fig = _figure(6.5, 4)
    ax = fig.add_subplot(1, 1, 1)
    t = np.arange(1, norms.shape[1] + 1)
    g = result["grad_flow"]
    ax.fill_between(t, g["p10"], g["p90"], alpha=0.3, label="10-90% of sequences")
    ax.plot(t, g["mean"], label=f"mean over {norms.shape[0]} test sequences")
    if np.any(norms > 0):
        ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("||dL/ds_t||")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(_title(result), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_lyapunov(path: pathlib.Path, lyap: np.ndarray, result: dict) -> None:
    fig = _figure(6.5, 4)
    ax = fig.add_subplot(1, 1, 1)
    i = np.arange(1, lyap.shape[1] + 1)
    ax.errorbar(i, lyap.mean(axis=0), yerr=lyap.std(axis=0), fmt="o-", markersize=3, capsize=2)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xlabel("exponent index")
    ax.set_ylabel("Lyapunov exponent (log per step)")
    ax.grid(alpha=0.3)
    ax.set_title(_title(result), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_fixed_points(path: pathlib.Path, info: dict, result: dict) -> None:
    fig = _figure(15, 4.5)
    points, eigs = info["points"], info["eigenvalues"]
    visited = _flat_rows(info["visited"])
    ax1, ax2, ax3 = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    base = points if len(points) >= 2 else visited
    center = base.mean(axis=0)
    _, _, vt = np.linalg.svd(base - center, full_matrices=False)
    pcs = vt[:2] if vt.shape[0] >= 2 else np.vstack([vt, np.zeros_like(vt)])
    v = (visited - center) @ pcs.T
    ax1.scatter(v[:, 0], v[:, 1], s=2, c="0.7", label="visited states")
    if len(points):
        p = (points - center) @ pcs.T
        ax1.scatter(p[:, 0], p[:, 1], s=12, c="C3", label="fixed points")
    ax1.set_xlabel("PC 1 of the " + ("fixed points" if len(points) >= 2 else "visited states"))
    ax1.set_ylabel("PC 2")
    ax1.legend(fontsize=8)
    line = result["fixed_points"]["line"]
    if line:
        ax1.set_title(f"PC1 share {line['pc1_share']:.3f}", fontsize=9)
    if len(points):
        theta = np.linspace(0, 2 * np.pi, 200)
        ax2.plot(np.cos(theta), np.sin(theta), "k", lw=0.8)
        ax2.scatter(eigs.real.ravel(), eigs.imag.ravel(), s=3, alpha=0.5)
        ax2.set_aspect("equal")
        ax2.set_title("eigenvalues of dF/ds at the fixed points", fontsize=9)
        ax2.set_xlabel("Re")
        ax2.set_ylabel("Im")
    if "line" in info and info["line"].readout_cosine is not None:
        la = info["line"]
        coords = np.asarray(la.coordinates)
        mods = np.sort(np.abs(eigs), axis=1)[:, ::-1]
        order = np.argsort(coords)
        for j in range(min(3, mods.shape[1])):
            ax3.plot(coords[order], mods[order, j], "o-", markersize=3, label=f"|λ_{j + 1}|")
        ax3.axhline(1.0, color="k", lw=0.8)
        ax3.set_xlabel("position along the line (PC 1)")
        ax3.set_ylabel("eigenvalue modulus")
        ax3.legend(fontsize=8)
        ax3.set_title(f"readout cosine with the line {float(la.readout_cosine):.3f}", fontsize=9)
    else:
        ax3.text(0.5, 0.5, f"{len(points)} distinct fixed point(s):\nno line to fit",
                 ha="center", va="center", transform=ax3.transAxes)  # fmt: skip
        ax3.set_axis_off()
    fig.suptitle(_title(result), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    """``python -m jaxrnn.analyze RUN_DIR [...]``: one line on stderr and status 2 (usage,
    bad values) or 4 (not a run directory, no such checkpoint) on failure."""
    import argparse
    import sys

    p = argparse.ArgumentParser(
        prog="python -m jaxrnn.analyze",
        description="Gradient flow, Lyapunov spectrum and (classifiers) fixed points of a "
        "trained run; writes RUN_DIR/analysis/.",
    )
    p.add_argument("run_dir", help="a run directory of train.py (runs/<config>/<date-time>)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--batch", type=int, default=32, help="test sequences (default 32)")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/analysis)")
    p.add_argument(
        "--lyapunov-k",
        type=int,
        default=None,
        help="exponents to compute (default: all S when S <= 256, else 32)",
    )
    p.add_argument(
        "--lyapunov-batch", type=int, default=8, help="sequences the spectrum uses (default 8)"
    )
    p.add_argument("--fixed-point-starts", type=int, default=128)
    p.add_argument("--fixed-point-steps", type=int, default=2000)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from jaxrnn.training.checkpoint import CheckpointError
    from jaxrnn.training.data import DataError

    try:
        result = analyze(
            args.run_dir,
            step=args.step,
            batch=args.batch,
            out=args.out,
            lyapunov_k=args.lyapunov_k,
            lyapunov_batch=args.lyapunov_batch,
            fixed_point_starts=args.fixed_point_starts,
            fixed_point_steps=args.fixed_point_steps,
            progress=not args.no_progress,
        )
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 4
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out) if args.out else pathlib.Path(result["run"]) / "analysis"
    print(f"wrote {out}/analysis.json", file=sys.stderr)
    return 0


__all__ = [
    "Recurrence",
    "analyze",
    "main",
    "grad_norm_curve",
    "grad_norm_summary",
    "median_range",
    "plot_grad_flow_heatmap",
    "recurrence",
    "word_log_odds",
]
