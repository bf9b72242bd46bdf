"""Where one jaxrnn training step's time goes: the seed model's step run under the JAX profiler.

    PYTHONPATH=. python benchmarks/profile_step.py --cell lstm            # backend auto, seed sizes
    PYTHONPATH=. python benchmarks/profile_step.py --cell gru --backend scan --steps 10
    PYTHONPATH=. python benchmarks/profile_step.py --cell lstm --host-env tuned   # as train.py runs

The step is the one :mod:`benchmarks.run` times for a jaxrnn row
(:func:`benchmarks.frameworks.build_jaxrnn`: ``value_and_grad`` + Adam, jitted, donated), in
this process: by default as a user's own script runs it, with ``--host-env tuned`` with
jaxrnn's host settings (:mod:`jaxrnn.training.host`: the malloc tunables through a restart,
inline CPU dispatch, its XLA compiler options). Printed:

* the wall time of ``--steps`` back-to-back steps (percentiles; outside the profiler);
* for ``--profile-steps`` more steps under :func:`jax.profiler.trace`, every operation of the
  compiled step (an XLA fusion, dot, custom call, ...) with its time per step, summed over
  the threads that ran it, largest first; custom calls are named by their target (e.g.
  ``jaxrnn_lstm_backward``: the native CPU kernels), read from the compiled HLO; and the
  executable's own time per step, against which the operations' sum shows what is outside
  them (thunk dispatch, waiting). A ``while`` loop (``scan``, the XLA loops) is listed with its
  body's operations, whose times it includes.

A benchmark, not a test: nothing asserts a time. Profiling adds a little per operation, which
adds up where a loop runs many small ones: compare such steps by their wall times, measured
outside the profiler.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

EXECUTE = "ThunkExecutor::Execute"  # the compiled step's own span, per step, calling thread


def op_names(hlo_text: str) -> dict[str, str]:
    """``{instruction name: what it is}`` for a compiled module's text: a custom call's
    target (``ffi_call.19 -> "jaxrnn_lstm_backward"``), else its opcode (``"fusion"``)."""
    names = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+) = .*?\s([a-z][\w\-]*)\(", line)
        if m:
            target = re.search(r'custom_call_target="([^"]+)"', line)
            names[m.group(1)] = (
                target.group(1) if m.group(2) == "custom-call" and target else m.group(2)
            )
    return names


def trace_events(directory: Path) -> list[dict[str, Any]]:
    """The complete ("X") events of the newest Perfetto trace under ``directory``."""
    files = sorted(directory.rglob("*perfetto_trace.json.gz"), key=lambda f: f.stat().st_mtime)
    if not files:
        raise RuntimeError(f"profile_step: jax.profiler wrote no Perfetto trace under {directory}")
    data = json.loads(gzip.open(files[-1]).read())
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X"]


def summarize(events: list[dict[str, Any]], module: str, steps: int) -> dict[str, Any]:
    """Per-operation totals of module ``module`` over ``steps`` steps: ``{"ops": {name:
    {"calls", "ms_per_step"}}, "execute_ms_per_step", "ops_ms_per_step"}`` (times in ms).
    An operation inside another's span on the same thread (the body of a ``while`` loop) is
    listed with its own time, which its loop's time includes: ``ops_ms_per_step`` sums the
    outermost ones only (over all threads)."""
    ops: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"calls": 0, "us": 0.0})
    mine = [
        e for e in events if e.get("args", {}).get("hlo_module") == module and "hlo_op" in e["args"]
    ]
    for e in mine:
        ops[e["args"]["hlo_op"]]["calls"] += 1
        ops[e["args"]["hlo_op"]]["us"] += e["dur"]
    # the executable's time: its outermost spans on the calling thread (the thread with the
    # most; pool threads and loop bodies run executors of their own inside it)
    execute = max(_outermost([e for e in events if e["name"] == EXECUTE]).values(), default=0.0)
    return {
        "ops": {
            k: {"calls": v["calls"], "ms_per_step": v["us"] / steps / 1e3}
            for k, v in sorted(ops.items(), key=lambda kv: -kv[1]["us"])
        },
        "execute_ms_per_step": execute / steps / 1e3,
        "ops_ms_per_step": sum(_outermost(mine).values()) / steps / 1e3,
    }


def _outermost(events: list[dict[str, Any]]) -> dict[Any, float]:
    """``{thread: the summed durations of its events not inside another of its events}``."""
    total: dict[Any, float] = collections.defaultdict(float)
    ends: dict[Any, float] = {}  # per thread, where its current outermost event ends
    for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
        if e["ts"] >= ends.get(e["tid"], float("-inf")):
            total[e["tid"]] += e["dur"]
            ends[e["tid"]] = e["ts"] + e["dur"]
    return total


def profile(run, steps: int, profile_steps: int) -> dict[str, Any]:
    """Times ``run`` (a :func:`benchmarks.frameworks.build_jaxrnn` training step, warmed up)
    for ``steps`` steps, then profiles ``profile_steps`` more; returns the summary of
    :func:`summarize` with the operations named (``"what"``) and the wall times (ms)."""
    import jax

    wall = []
    for _ in range(steps):
        t = time.perf_counter()
        run()
        wall.append((time.perf_counter() - t) * 1e3)
    compiled = run.compiled()
    text = compiled.as_text()
    module = text.split("\n", 1)[0].split()[1].rstrip(",")  # "HloModule jit_step, ..."
    names = op_names(text)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(profile_steps):
                run()
        profiled_wall = (time.perf_counter() - t) * 1e3
        out = summarize(trace_events(Path(tmp)), module, profile_steps)
    for k, v in out["ops"].items():
        v["what"] = names.get(k, "?")
    out.update(module=module, wall_ms=wall, profiled_wall_ms=profiled_wall)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cell", default="lstm", choices=["simple", "lstm", "gru"])
    ap.add_argument(
        "--backend", default="auto", choices=["auto", "xla", "scan", "native", "pallas"],
        help="jaxrnn.rnn's backend= for the step",
    )  # fmt: skip
    ap.add_argument(
        "--host-env", default="default", choices=["default", "tuned"],
        help="tuned: with jaxrnn's host settings, as train.py runs (benchmarks/run.py's option)",
    )  # fmt: skip
    ap.add_argument(
        "--shape", default="64,250,100,5000,32", help="B,T,H,V,E (seed: 64,250,100,5000,32)"
    )
    ap.add_argument("--steps", type=int, default=100, help="timed back-to-back steps")
    ap.add_argument("--profile-steps", type=int, default=20, help="steps under the profiler")
    ap.add_argument("--top", type=int, default=15, help="operations listed")
    ap.add_argument("--out", default=None, help="also write the summary as JSON here")
    args = ap.parse_args()
    options = None
    if args.host_env == "tuned":
        from jaxrnn.training import host

        host.restart_with_tunables()  # replaces this process unless they are set already
        host.inline_cpu_dispatch()
        options = host.compiler_options() or None
    from benchmarks import frameworks

    B, T, H, V, E = (int(v) for v in args.shape.split(","))
    spec = dict(mode="train", cell=args.cell, B=B, T=T, H=H, V=V, E=E)
    run = frameworks.build_jaxrnn(spec, "auto", args.backend, compiler_options=options)
    for _ in range(5):
        run()
    res = profile(run, args.steps, args.profile_steps)
    q = np.percentile(res["wall_ms"], [0, 25, 50, 75, 100])
    print(
        f"{args.cell} backend={args.backend} host-env={args.host_env} B, T, H, V, E = "
        f"{args.shape}: {args.steps} steps, ms min {q[0]:.2f} / q1 {q[1]:.2f} / median "
        f"{q[2]:.2f} / q3 {q[3]:.2f} / max {q[4]:.2f}"
    )
    n = args.profile_steps
    print(
        f"under the profiler, {n} steps ({res['profiled_wall_ms'] / n:.2f} ms per step): "
        f"executable {res['execute_ms_per_step']:.2f} ms, its operations "
        f"{res['ops_ms_per_step']:.2f} ms per step (the outermost, summed over threads)"
    )
    for k, v in list(res["ops"].items())[: args.top]:
        share = v["ms_per_step"] / res["execute_ms_per_step"]
        print(
            f"  {v['ms_per_step']:8.3f} ms {share:6.1%}  {v['calls'] / n:4.0f}x  {v['what']:30s} {k}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), **res}, indent=1))


if __name__ == "__main__":
    main()
