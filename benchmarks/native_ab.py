"""A/B timings of builds of the native CPU kernels inside the real step: one process, XLA's threads.

``benchmarks/kernels.py`` times the kernels alone on one thread. This runs the seed step of
``jaxrnn-fast`` (as ``benchmarks/run.py`` does: the classifier, Adam, jitted) once per given
build of ``jaxrnn/csrc/rnn_cpu.cc``, all in one process, step by step in turn (the order
reversed every round), so every build sees the same state of the machine: on this shared
2-core machine a two-thread step moves by +-20% within minutes, more than most kernel
changes, and separate processes minutes apart cannot tell them apart. Each build is
registered under FFI target names of its own (``jaxrnn.native.register_variant``); its step
is traced inside ``jaxrnn.native.variant``. Report per build: median and best step, and the
median over rounds of its time / the first build's time in the same round.

    PYTHONPATH=. python benchmarks/native_ab.py --source /tmp/before.cc --cells lstm,gru
    PYTHONPATH=. python benchmarks/native_ab.py --source /tmp/a.cc --source /tmp/b.cc \\
        --cells lstm --ids zipf --rounds 100

Without ``--source`` the shipped kernels are measured against themselves (the spread an
A/B of equal code shows). ``--xla`` adds the fast path's XLA loops (the kernels off) as one more
entry and traces every build with ``native.MAX_WEIGHT_BYTES`` lifted: how to measure where the
kernels stop paying off for large ``W_h`` on a new CPU (``--shape 64,100,1024``), the limit
``native.max_weight_bytes`` keeps per CPU kind. Every build must take the FFI calls of the installed
``jaxrnn/native.py`` (operands, attributes, result shapes). The builds' first steps must agree (losses compared; different
summation orders give float32-rounding differences). Restarts itself with jaxrnn's malloc
settings and uses inline CPU dispatch, as ``train.py`` and the benchmark workers do. Needs an
AVX-512 CPU and a C++ compiler, as the kernels do. A benchmark: no test asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jaxrnn import runtime  # noqa: E402


def build(source: Path, out: Path) -> Path:
    """Compiles ``source`` into a shared library with the flags the shipped build uses."""
    from jaxrnn import native

    cmd = native.compile_command(source, out)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {source} failed:\n{proc.stderr[-4000:]}")
    return out


def measure(
    sources: list[Path], cells: list[str], mode: str = "train", rounds: int = 40,
    overrides: dict | None = None, xla: bool = False,
) -> dict[str, dict[str, dict]]:  # fmt: skip
    """``{cell: {"times": [[s, ...] per entry], "first": [output of step 2 per entry]}}``:
    every build's step, ``rounds`` times, in turn (after two steps whose output is kept).
    ``xla``: one more entry, last, the fast path with the kernels off (its XLA loops); every
    build is then traced with ``native.MAX_WEIGHT_BYTES`` lifted, so its kernels run at any
    ``W_h``."""
    import numpy as np

    from benchmarks.frameworks import FRAMEWORKS
    from benchmarks.run import case
    from jaxrnn import native

    if not native.available():
        raise SystemExit(f"native kernels unavailable: {native.unavailable_reason()}")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        suffixes = []
        for i, src in enumerate(sources):
            suffix = f"_ab{i}"
            native.register_variant(build(src, Path(tmp) / f"ab{i}.so"), suffix)
            suffixes.append(suffix)
        for cell in cells:
            spec = case(mode, cell=cell, **(overrides or {}))
            steps, first = [], []
            # the XLA loops: what the fast path runs for a W_h past the limit (the projections
            # keep their kernels, as they do there)
            entries = [(s, 1 << 62 if xla else None) for s in suffixes]
            entries += [(suffixes[0], 0)] if xla else []
            for suffix, limit in entries:
                saved = native.MAX_WEIGHT_BYTES
                native.MAX_WEIGHT_BYTES = saved if limit is None else limit
                try:
                    with native.variant(suffix):  # traced (and compiled) here, on its 1st call
                        step = FRAMEWORKS["jaxrnn-fast"](spec, "cpu")
                        step()
                finally:
                    native.MAX_WEIGHT_BYTES = saved
                step()  # training: its loss depends on the first step's gradients
                steps.append(step)
                first.append(np.asarray(step.loss, np.float64))
            times = [[] for _ in entries]
            order = list(range(len(entries)))
            for r in range(rounds):
                for i in order if r % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    steps[i]()
                    times[i].append(time.perf_counter() - t0)
            out[cell] = {"times": times, "first": first}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", action="append", type=Path, help="kernel source (repeatable)")
    ap.add_argument("--cells", default="simple,lstm,gru")
    ap.add_argument("--mode", default="train", choices=["train", "infer"])
    ap.add_argument("--rounds", type=int, default=40, help="steps of every build, in turn")
    ap.add_argument("--ids", default="uniform", choices=["uniform", "zipf"],
                    help="token ids: uniform over the vocabulary, or Zipf-distributed as words")  # fmt: skip
    ap.add_argument("--shape", default=None, help="B,T,H to override the seed shape")
    ap.add_argument("--xla", action="store_true",
                    help="add the XLA loops; trace the kernels with no W_h limit")  # fmt: skip
    args = ap.parse_args()
    shipped = ROOT / "jaxrnn" / "csrc" / "rnn_cpu.cc"
    sources = [shipped] + list(args.source or [shipped])
    overrides = {"ids": args.ids}
    if args.shape:
        overrides.update(zip(("B", "T", "H"), map(int, args.shape.split(",")), strict=True))
    res = measure(sources, args.cells.split(","), args.mode, args.rounds, overrides, args.xla)
    names = [str(s) for s in sources] + (["the XLA loops (kernels off)"] if args.xla else [])
    print(f"{args.mode} step, ids {args.ids}, {args.rounds} rounds; ratio = median over rounds "
          f"of time / first build's time in the same round")  # fmt: skip
    for cell, r in res.items():
        base = r["times"][0]
        scale = 1.0 + max(float(abs(f).max()) for f in r["first"])
        diff = max(float(abs(f - r["first"][0]).max()) for f in r["first"]) / scale
        print(f"{cell}: second step's output, largest difference between builds {diff:.2e}")
        if diff > 1e-3:
            raise SystemExit(f"{cell}: the builds disagree ({diff:.2e}): not timed further")
        for i, (src, t) in enumerate(zip(names, r["times"], strict=True)):
            ratio = statistics.median(a / b for a, b in zip(t, base, strict=True))
            print(
                f"{cell:7s} median {statistics.median(t) * 1e3:8.3f} ms  best "
                f"{min(t) * 1e3:8.3f} ms  ratio {ratio:5.3f}  {'(shipped) ' if i == 0 else ''}{src}"
            )


if __name__ == "__main__":
    runtime.restart_with_tunables()
    runtime.inline_cpu_dispatch()
    main()
