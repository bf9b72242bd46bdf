"""The line attractor of trained IMDB classifiers (Maheswaranathan et al., NeurIPS 2019).

Reproduces the analysis of "Reverse engineering recurrent networks for sentiment
classification reveals line attractor dynamics" on runs written by ``train.py``:

1. the states ``s [S]`` the network visits while reading ``--reviews`` test reviews (the flat
   carry: ``S = H`` for a GRU, ``2H`` for an LSTM, ``h`` then ``c``);
2. ``--starts`` of them, with Gaussian noise of std ``--noise``, as starts of
   :func:`jaxrnn.dynamics.fixed_points` at input = the zero vector (no word), in float64;
   points with ``q = 1/2 ||F(s) - s||^2 < --q-tol`` kept (fixed and slow points), merged
   within ``--merge`` (:meth:`FixedPoints.unique`);
3. their line (first principal component), its share of their variance, the two largest
   eigenvalue moduli of ``dF/ds`` at each point, the cosine between the readout and the line
   (the readout acts on ``h`` only: :func:`jaxrnn.analyze.recurrence` gives it in the
   flat state's layout, zeros for an LSTM's ``c``);
4. for ``--words`` strongly positive and as many strongly negative words, chosen without the
   model (the largest and smallest smoothed log-odds of a word occurring in positive rather
   than negative training reviews, among words seen ``>= --min-count`` times in the reviews as
   the model reads them), the one-step input-driven change at every point projected on the
   line (:func:`jaxrnn.dynamics.input_projections`), averaged over the points.

Writes ``DIR/line_attractor.json`` (every number, per model; models that an earlier call with
the same settings wrote there are kept, so runs can be analysed one at a time) and per model
``DIR/<name>_pca.png``, ``DIR/<name>_spectra.png``, ``DIR/<name>_words.png``.

Usage::

    python benchmarks/line_attractor.py --run runs/imdb_gru_seed0 --run runs/imdb_lstm_seed0 \\
        --out docs/measured/line_attractor
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import dynamics
from jaxrnn.analyze import median_range, recurrence, word_log_odds

FORMAT = "jaxrnn.line_attractor/1"
# the keys of one model's entry in the JSON, checked by the tests against the committed file
MODEL_KEYS = (
    "run", "config", "cell", "line_direction", "hidden_size", "state_size", "step", "seed", "test_accuracy",
    "sampled_accuracy", "logit_check_max_abs_diff", "starts", "converged", "slow", "kept",
    "points", "pc1_share", "pc2_share", "states_variance_on_pc1", "states_variance_on_pc12",
    "leading_modulus", "second_modulus", "leading_time_constant_steps", "readout_cosine",
    "readout_cosine_h", "line_h_share",
    "line_extent", "words", "positive_words_toward_positive", "negative_words_toward_negative",
    "seconds", "figures",
)  # fmt: skip


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def visited_states(cell, params, embedding, tokens, lengths):
    """The flat states after every step of every review.

    Args:
        tokens: ``[B, T]`` int, post-padded; lengths: ``[B]``.

    Returns:
        ``states [B, T, S]`` (entries at ``t >= lengths`` are steps over padding, not used)
        and ``final [B, S]``, the state after each review's last word.
    """
    xs = jnp.take(embedding, jnp.asarray(tokens), axis=0)  # [B, T, E]
    states = dynamics.visited_states(cell, params, xs)  # [B, T, S]
    final = states[jnp.arange(tokens.shape[0]), jnp.asarray(lengths) - 1]  # [B, S]
    return states, final


def analyse(run_dir: str, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run's numbers (the JSON entry) and the arrays its figures need."""
    from jaxrnn import cells
    from jaxrnn.training import data as data_lib
    from jaxrnn.training.runs import load_run

    t0 = time.perf_counter()
    run = load_run(run_dir)
    mcfg = run.task.model_cfg
    if run.cfg.task != "imdb":
        raise ValueError(f"{run_dir}: expected a run of the imdb task; got task {run.cfg.task!r}")
    name = run.cfg.name or pathlib.Path(run_dir).name
    _log(f"[{name}] {mcfg.cell}({mcfg.hidden_size}) at step {run.step}, from {run_dir}")
    data = data_lib.load_imdb(run.cfg.data, verbose=False)
    # float64: the converged points' tolerance (q < 1e-20) is below float32 rounding
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), run.params)
    cell = cells.get(mcfg.cell).cell
    p_rnn, embedding = params["rnn"], params["embedding"]  # [V, E]
    w_o, b_o = params["W_o"][:, 0], params["b_o"][0]  # [H], scalar
    H = mcfg.hidden_size

    rng = np.random.default_rng(args.seed)
    n_test = len(data["y_test"])
    pick = np.sort(rng.choice(n_test, size=min(args.reviews, n_test), replace=False))
    tokens, lengths = data["x_test"][pick], np.maximum(data["len_test"][pick], 1)
    labels = data["y_test"][pick]
    states, final = visited_states(cell, p_rnn, embedding, tokens, lengths)  # [B, T, S], [B, S]
    S = states.shape[-1]
    # the readout in the flat state's layout (an LSTM's c block gets no weight)
    readout = recurrence("imdb", mcfg, params, {"tokens": tokens, "labels": labels}).readout
    logits = final @ readout + b_o  # [B]
    from jaxrnn import models

    ref = models.classifier_logits(mcfg, run.params, jnp.asarray(tokens), jnp.asarray(lengths))
    logit_diff = float(jnp.max(jnp.abs(logits - ref)))
    sampled_acc = float(np.mean((np.asarray(logits) > 0) == (labels == 1)))
    valid = np.arange(tokens.shape[1])[None, :] < lengths[:, None]  # [B, T]
    visited = np.asarray(states)[valid]  # [n_visited, S]
    _log(
        f"[{name}] {len(pick)} test reviews read: {len(visited)} states, accuracy on them "
        f"{sampled_acc:.3f}; logits equal the model's to {logit_diff:.1e}"
    )

    idx = rng.choice(len(visited), size=min(args.starts, len(visited)), replace=False)
    starts = visited[idx] + args.noise * rng.standard_normal((len(idx), S))
    t1 = time.perf_counter()
    _log(f"[{name}] fixed points from {len(idx)} starts ({args.max_steps} Adam steps) ...")
    fp = dynamics.fixed_points(
        cell, p_rnn, jnp.zeros(mcfg.embed_dim, jnp.float64), jnp.asarray(starts),
        max_steps=args.max_steps, newton_steps=args.newton_steps,
    )  # fmt: skip
    residuals = np.asarray(fp.residuals)
    keep = residuals < args.q_tol
    _log(
        f"[{name}] ... {time.perf_counter() - t1:.0f} s: {int(np.sum(fp.converged))} converged "
        f"(q < 1e-20), {int(np.sum(fp.slow))} slow (q < 1e-6), {int(keep.sum())} with "
        f"q < {args.q_tol:g}"
    )
    if keep.sum() < 2:
        raise RuntimeError(
            f"{run_dir}: {int(keep.sum())} points with q < {args.q_tol:g} (need >= 2); the "
            f"smallest q found is {residuals.min():.3g}: raise --max-steps or --q-tol"
        )
    kept = dynamics.FixedPoints(*(np.asarray(a)[keep] for a in fp))
    u = kept.unique(args.merge, converged_only=False)
    points, eig = np.asarray(u.points), np.asarray(u.eigenvalues)  # [N, S], [N, S]
    moduli = -np.sort(-np.abs(eig), axis=1)  # [N, S]
    lead, second = moduli[:, 0], moduli[:, 1]
    dev = visited - visited.mean(0)
    total = np.sum(dev**2)
    if len(points) >= 2:
        line = dynamics.line_attractor_summary(points, eig, readout)
        direction, center = np.asarray(line.direction), np.asarray(line.center)
        coords = np.asarray(line.coordinates)
        _, sv, vt = np.linalg.svd(points - center, full_matrices=False)
        pc2 = vt[1]
        share = sv**2 / np.sum(sv**2)
        pc1_share, pc2_share = float(line.pc1_share), float(share[1])
        cosine = float(line.readout_cosine)
        # how much of the visited states' spread the fixed points' line (and plane) captures
        on1 = float(np.sum((dev @ direction) ** 2) / total)
        on12 = on1 + float(np.sum((dev @ pc2) ** 2) / total)
    else:  # one fixed point: no line; words are projected on the readout direction instead
        center = points[0]
        direction = np.asarray(readout) / np.linalg.norm(readout)
        pc2 = np.linalg.svd(dev - np.outer(dev @ direction, direction), full_matrices=False)[2][0]
        coords = np.zeros(1)
        pc1_share = pc2_share = cosine = on1 = on12 = None

    lo, counts = word_log_odds(
        data["x_train"], data["y_train"], data["len_train"], mcfg.vocab_size, args.min_count
    )
    order = np.argsort(np.where(np.isnan(lo), 0.0, lo), kind="stable")
    ranked = [i for i in order if not np.isnan(lo[i])]
    n_words = min(args.words, len(ranked) // 2)
    pos_ids, neg_ids = ranked[::-1][:n_words], ranked[:n_words]
    ids = np.asarray(pos_ids + neg_ids, int)
    proj = dynamics.input_projections(cell, p_rnn, points, embedding[ids], direction)  # [M, N]
    proj_mean = np.asarray(proj).mean(axis=1)  # [M]
    vocab = data["vocab"]
    words = [
        {"word": str(vocab[i - 2]), "id": int(i), "sentiment": s, "log_odds": float(lo[i]),
         "count": int(counts[i]), "projection": float(m)}
        for i, s, m in zip(ids, ["positive"] * n_words + ["negative"] * n_words, proj_mean, strict=True)
    ]  # fmt: skip
    summary_path = pathlib.Path(run_dir) / "summary.json"
    test_acc = None
    if summary_path.exists():
        test_acc = json.loads(summary_path.read_text()).get("test_accuracy")
    tau = -1.0 / np.log(np.minimum(lead, 1 - 1e-12))  # steps for the slow mode to fall by e
    entry = {
        "run": str(run_dir),
        "config": name,
        "cell": mcfg.cell,
        "hidden_size": H,
        "state_size": S,
        "step": int(run.step),
        "seed": int(run.cfg.seed),
        "test_accuracy": test_acc,
        "sampled_accuracy": sampled_acc,
        "logit_check_max_abs_diff": logit_diff,
        "starts": len(idx),
        "converged": int(np.sum(fp.converged)),
        "slow": int(np.sum(fp.slow)),
        "kept": int(keep.sum()),
        "points": len(points),
        "line_direction": "PC1 of the fixed points" if len(points) >= 2 else "the readout",
        "pc1_share": pc1_share,
        "pc2_share": pc2_share,
        "states_variance_on_pc1": on1,
        "states_variance_on_pc12": on12,
        "leading_modulus": median_range(lead),
        "second_modulus": median_range(second),
        "leading_time_constant_steps": median_range(tau),
        "readout_cosine": cosine,
        # the readout sees h only: its cosine with the line's h block, and that block's weight
        "readout_cosine_h": None
        if cosine is None
        else float(
            abs(direction[:H] @ np.asarray(w_o))
            / np.linalg.norm(direction[:H])
            / np.linalg.norm(w_o)
        ),
        "line_h_share": None if cosine is None else float(np.sum(direction[:H] ** 2)),
        "line_extent": {
            "coordinate_range": float(np.ptp(coords)),
            "readout_logit_range": [
                float((points @ np.asarray(readout) + float(b_o)).min()),
                float((points @ np.asarray(readout) + float(b_o)).max()),
            ],
        },
        "words": words,
        "positive_words_toward_positive": float(np.mean(proj_mean[:n_words] > 0)),
        "negative_words_toward_negative": float(np.mean(proj_mean[n_words:] < 0)),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _log(
        f"[{name}] {len(points)} points: PC1 share {_f(entry['pc1_share'])}, |λ1| median "
        f"{entry['leading_modulus']['median']:.4f}, |λ2| median "
        f"{entry['second_modulus']['median']:.3f}, readout cosine {_f(entry['readout_cosine'])}, "
        f"positive words toward positive {entry['positive_words_toward_positive']:.2f}, "
        f"negative toward negative {entry['negative_words_toward_negative']:.2f} "
        f"({entry['seconds']:.0f} s)"
    )
    arrays = dict(
        points=points, eig=eig, center=center, direction=direction, pc2=pc2, readout=readout,
        b_o=float(b_o), states=np.asarray(states), lengths=lengths, labels=labels,
        coords=coords,
    )  # fmt: skip
    return entry, arrays


def figures(entry: dict[str, Any], arrays: dict[str, Any], out: pathlib.Path) -> list[str]:
    """The three figures of one model; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = entry["config"]
    pts, c, d, e2 = arrays["points"], arrays["center"], arrays["direction"], arrays["pc2"]
    readout = np.asarray(arrays["readout"])
    files = []

    fig, ax = plt.subplots(figsize=(6.4, 5))
    rng = np.random.default_rng(0)
    for label, color in ((1, "tab:green"), (0, "tab:red")):
        rows = np.flatnonzero(arrays["labels"] == label)
        for b in rng.choice(rows, size=min(5, len(rows)), replace=False):
            traj = arrays["states"][b, : arrays["lengths"][b]] - c  # [T_b, S]
            ax.plot(traj @ d, traj @ e2, color=color, lw=0.6, alpha=0.5)
            ax.plot(traj[-1] @ d, traj[-1] @ e2, "o", color=color, ms=4)
    logit = pts @ readout + arrays["b_o"]
    vmax = float(np.max(np.abs(logit)))  # symmetric: green is a positive logit, red negative
    sc = ax.scatter(
        (pts - c) @ d, (pts - c) @ e2, c=logit, cmap="RdYlGn", vmin=-vmax, vmax=vmax, s=10,
        edgecolors="k", linewidths=0.3, zorder=3,
    )  # fmt: skip
    fig.colorbar(sc, ax=ax, label="readout logit at the fixed point")
    if entry["pc1_share"] is None:
        ax.set_xlabel("readout direction (one fixed point: no line)")
        ax.set_ylabel("largest spread of the states across it")
    else:
        ax.set_xlabel(
            f"PC1 of the fixed points ({100 * entry['pc1_share']:.1f}% of their variance)"
        )
        ax.set_ylabel(f"PC2 ({100 * entry['pc2_share']:.1f}%)")
    ax.set_title(
        f"{name}: fixed points at zero input, and 10 reviews\n(green positive, red negative; dot = last word)"
    )
    fig.tight_layout()
    files.append(f"{name}_pca.png")
    fig.savefig(out / files[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8), sharey=True)
    # the fixed points with the most negative, the middle and the most positive readout
    order = np.argsort(pts @ readout)
    picks = [order[0], order[len(order) // 2], order[-1]]
    t = np.linspace(0, 2 * np.pi, 200)
    for ax, i, where in zip(axes, picks, ("negative end", "middle", "positive end"), strict=True):
        ev = arrays["eig"][i]
        ax.plot(np.cos(t), np.sin(t), color="0.7", lw=0.8)
        ax.plot(ev.real, ev.imag, ".", ms=5)
        ax.set_aspect("equal")
        ax.set_title(f"{where}: |λ1| = {abs(ev[0]):.4f}, |λ2| = {abs(ev[1]):.3f}", fontsize=9)
        ax.set_xlabel("Re λ")
    axes[0].set_ylabel("Im λ")
    fig.suptitle(f"{name}: eigenvalues of dF/ds at three fixed points along the line")
    fig.tight_layout()
    files.append(f"{name}_spectra.png")
    fig.savefig(out / files[-1], dpi=110)
    plt.close(fig)

    words = entry["words"]
    fig, ax = plt.subplots(figsize=(11, 4))
    colors = ["tab:green" if w["sentiment"] == "positive" else "tab:red" for w in words]
    ax.bar(range(len(words)), [w["projection"] for w in words], color=colors)
    ax.set_xticks(range(len(words)), [w["word"] for w in words], rotation=75, fontsize=8)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("push along the line (one step,\nmean over fixed points)")
    ax.set_title(
        f"{name}: words by training-set log-odds (green positive, red negative); "
        "the line points to the positive readout"
    )
    fig.tight_layout()
    files.append(f"{name}_words.png")
    fig.savefig(out / files[-1], dpi=110)
    plt.close(fig)
    return files


def _f(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def markdown_tables(result: dict[str, Any]) -> str:
    """The docs' tables of ``result`` (the JSON): the page quotes exactly these strings."""
    models = list(result["models"].values())
    head = "| | " + " | ".join(f"`{m['config']}`" for m in models) + " |"
    rule = "|---" * (len(models) + 1) + "|"

    def row(label, fn):
        return f"| {label} | " + " | ".join(fn(m) for m in models) + " |"

    def rng3(s, digits=3):
        return f"{_f(s['median'], digits)} ({_f(s['min'], digits)} – {_f(s['max'], digits)})"

    rows = [
        head, rule,
        row("test accuracy", lambda m: "—" if m["test_accuracy"] is None else _f(m["test_accuracy"])),
        row("training step", lambda m: str(m["step"])),
        row("starts / kept (q < tol) / points", lambda m: f"{m['starts']} / {m['kept']} / {m['points']}"),
        row("share of the points' variance on PC1", lambda m: _f(m["pc1_share"])),
        row("share on PC2", lambda m: _f(m["pc2_share"])),
        row("visited states' variance on the line (PC1, PC1+2)",
            lambda m: f"{_f(m['states_variance_on_pc1'])}, {_f(m['states_variance_on_pc12'])}"),
        row("leading \\|λ1\\|: median (min – max)", lambda m: rng3(m["leading_modulus"], 4)),
        row("second \\|λ2\\|: median (min – max)", lambda m: rng3(m["second_modulus"])),
        row("slow mode's time constant −1/ln\\|λ1\\|, steps: median",
            lambda m: "{:.0f}".format(m["leading_time_constant_steps"]["median"])),
        row("readout · line cosine", lambda m: _f(m["readout_cosine"])),
        row("readout · line cosine, h block only (line's weight on h)",
            lambda m: f"{_f(m['readout_cosine_h'])} ({_f(m['line_h_share'])})"),
        row("readout logit at the points (min – max)",
            lambda m: "{:.2f} – {:.2f}".format(*m["line_extent"]["readout_logit_range"])),
        row("positive words pushing to the positive end",
            lambda m: f"{_f(m['positive_words_toward_positive'], 2)}"),
        row("negative words pushing to the negative end",
            lambda m: f"{_f(m['negative_words_toward_negative'], 2)}"),
    ]  # fmt: skip
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", required=True, help="a run directory (repeatable)")
    ap.add_argument("--out", required=True, help="directory for the JSON and the figures")
    ap.add_argument("--starts", type=int, default=500, help="starts of the fixed-point search")
    ap.add_argument("--reviews", type=int, default=200, help="test reviews read for the states")
    ap.add_argument("--noise", type=float, default=0.01, help="std of the noise on the starts")
    ap.add_argument("--max-steps", type=int, default=1000, help="Adam steps per start")
    ap.add_argument("--newton-steps", type=int, default=5, help="Newton steps after Adam")
    ap.add_argument("--q-tol", type=float, default=1e-6, help="keep points with q below this")
    ap.add_argument("--merge", type=float, default=1e-4, help="merge points closer than this")
    ap.add_argument("--words", type=int, default=20, help="positive (and negative) words")
    ap.add_argument("--min-count", type=int, default=100, help="a word's minimum count")
    ap.add_argument("--seed", type=int, default=0, help="choice of reviews, starts, noise")
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "format": FORMAT,
        "settings": {k: v for k, v in vars(args).items() if k not in ("run", "out")},
        "machine": {"backend": jax.default_backend(), "jax": jax.__version__},
        "models": {},
    }
    previous = out / "line_attractor.json"
    if previous.exists():  # models analysed earlier with the same settings are kept
        old = json.loads(previous.read_text())
        if old.get("format") == FORMAT and old.get("settings") == result["settings"]:
            result["models"] = old["models"]
    for run_dir in args.run:
        entry, arrays = analyse(run_dir, args)
        entry["figures"] = figures(entry, arrays, out)
        result["models"][entry["config"]] = entry
    (out / "line_attractor.json").write_text(json.dumps(result, indent=1) + "\n")
    print(markdown_tables(result))
    _log(f"wrote {out / 'line_attractor.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
