"""A/B timings of the native CPU kernels themselves: one thread, no XLA, no Python per step.

A change to the kernels of ``jaxrnn/backends/cpu/rnn_cpu.cc`` moves a whole training step by a
few percent, less than a shared machine's noise between runs. This builds
``benchmarks/kernels.cc`` against each given kernel source (the shipped one, or variants of it)
and runs the builds in turn, round after round, on one thread's share of the seed batch
(B = 32 rows; single-threaded runs vary far less than two threads do). Report: the best and the
median repetition of each build, and the ratio of bests against the first.

    PYTHONPATH=. python benchmarks/kernels.py                       # the shipped kernels
    PYTHONPATH=. python benchmarks/kernels.py --source jaxrnn/backends/cpu/rnn_cpu.cc \
        --source /tmp/v.cc --kernels lstm-forward,lstm-backward --rounds 6
    PYTHONPATH=. python benchmarks/kernels.py --define JAXRNN_OUTER_ROWS=4,JAXRNN_OUTER_VECS=5

``--define`` adds a build of the first source with those macros (comma-separated; repeatable),
on top of this CPU's register blocks (the kernels' build's ``tuning_defines``; a macro named in
both takes the ``--define`` value). Every build, the first included, gets those blocks.
Kernels: lstm-forward, lstm-backward (dW_h fused, all of D kept), lstm-backward-nodw,
lstm-backward-table (as the seed step: dW_h and the table's gradient in the loop), gru-forward,
simple-forward, simple-backward (the last state's gradient, dW_h fused), product-forward,
product-backward (the step products alone, no epilogue: the floor that the kernels' epilogues
and memory traffic add to). Needs an AVX-512 or AVX2 + FMA CPU and a C++ compiler, as the kernels do. A
benchmark: no test asserts a time (a slow test checks that the driver builds and that the
results do not depend on the register blocking).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jaxrnn.backends.cpu import _build

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "kernels.cc"
SOURCE = _build.SOURCE  # the shipped kernels
KERNELS = (
    "lstm-forward", "lstm-backward", "lstm-backward-nodw", "lstm-backward-table", "gru-forward",
    "simple-forward", "simple-backward", "product-forward", "product-backward",
)  # fmt: skip


def build(source: Path, defines: list[str], out: Path) -> Path:
    """Compiles the driver with ``source`` included (the kernels' own compiler and flags)."""
    macros = (f'JAXRNN_SOURCE="{source.resolve()}"', *defines)
    cmd = _build.compile_command(DRIVER, out, shared=False, defines=macros)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {DRIVER.name} with {source} failed:\n{proc.stderr[-4000:]}")
    return out


def run(binary: Path, kernel: str, reps: int, shape: list[str]) -> tuple[list[float], str]:
    """Times of ``reps`` calls (ms) and the checksum of the last one."""
    proc = subprocess.run(
        [str(binary), kernel, str(reps), *shape], check=True, capture_output=True, text=True
    )
    rows = [line.split() for line in proc.stdout.splitlines()]
    return [float(r[1]) for r in rows], rows[-1][2]


def measure(
    builds: list[tuple[str, Path, list[str]]],
    kernels: list[str],
    rounds: int = 4,
    reps: int = 12,
    shape: list[str] | None = None,
) -> dict[tuple[str, str], dict]:
    """``{(build name, kernel): {"ms": [...], "checksum": str}}`` for builds ``(name, source,
    macros)``, each kernel run ``rounds`` times per build, the builds in turn."""
    unknown = sorted(set(kernels) - set(KERNELS))
    if unknown:
        raise ValueError(f"unknown kernels {unknown}; expected some of {list(KERNELS)}")
    out = {(name, k): {"ms": [], "checksum": None} for name, _, _ in builds for k in kernels}
    with tempfile.TemporaryDirectory() as tmp:
        with ThreadPoolExecutor() as pool:  # the compiler runs single-threaded: builds side by side
            binaries = list(
                pool.map(
                    lambda i: build(builds[i][1], builds[i][2], Path(tmp) / f"kernels{i}"),
                    range(len(builds)),
                )
            )
        for _ in range(rounds):
            for k in kernels:
                for (name, _, _), b in zip(builds, binaries, strict=True):
                    t, out[name, k]["checksum"] = run(b, k, reps, shape or [])
                    out[name, k]["ms"] += t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", action="append", type=Path, help="kernel source (repeatable)")
    ap.add_argument("--define", action="append", default=[], help="a build with these macros")
    ap.add_argument("--kernels", default="lstm-forward,lstm-backward,gru-forward")
    ap.add_argument("--rounds", type=int, default=4, help="runs of every build, interleaved")
    ap.add_argument("--reps", type=int, default=12, help="calls per run (best and median kept)")
    ap.add_argument("--shape", default="32,250,100,5000", help="B,T,H,V")
    args = ap.parse_args()
    if _build.isa() is None:
        raise SystemExit("kernels.py: the kernels need AVX-512 or AVX2 + FMA; this CPU has neither")
    sources = args.source or [SOURCE]
    builds = [(str(s), s, []) for s in sources]
    builds += [(f"{sources[0]} -D{d}", sources[0], d.split(",")) for d in args.define]
    kernels = args.kernels.split(",")
    try:
        res = measure(builds, kernels, args.rounds, args.reps, args.shape.split(","))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print(f"B, T, H, V = {args.shape}; {args.rounds} rounds x {args.reps} calls, one thread")
    for k in kernels:
        best0 = min(res[builds[0][0], k]["ms"])
        for name, _, _ in builds:
            t, check = res[name, k]["ms"], res[name, k]["checksum"]
            print(
                f"{k:20s} best {min(t):8.3f} ms  median {statistics.median(t):8.3f} ms  "
                f"best/first {min(t) / best0:5.3f}  checksum {check}  {name}"
            )


if __name__ == "__main__":
    main()
