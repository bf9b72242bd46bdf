"""A benchmark worker: one framework, one workload, in its own process.

Started by :mod:`benchmarks.run`; speaks a line protocol on stdin/stdout so the
runner can interleave frameworks round by round (while one worker times, the
others wait on ``stdin`` and use no CPU)::

    -> (start)                 <- @@{"ready": true, "first_s": ..., "warmup_s": [...], "rss_mb": ...}
    -> run 5 1                 <- @@{"times": [5 wall times in seconds]}  (after 1 untimed step)
    -> quit

Lines the frameworks print themselves are passed through; protocol lines start with ``@@``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux: ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def send(obj: dict) -> None:
    sys.stdout.write("@@" + json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", required=True)
    ap.add_argument("--spec", required=True, help="workload spec as JSON")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--inline-dispatch", action="store_true", help="jaxrnn.runtime.inline_cpu_dispatch()"
    )
    ap.add_argument(
        "--flush-denormal",
        action="store_true",
        help="PyTorch: torch.set_flush_denormal(True), as XLA runs on the CPU",
    )
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.inline_dispatch:  # before any framework creates JAX's CPU backend
        from jaxrnn import runtime

        runtime.inline_cpu_dispatch()
    if args.flush_denormal:
        # XLA's CPU runtime computes with denormals flushed to zero (FTZ/DAZ); PyTorch does
        # not by default, and on Intel CPUs the tiny gradients of a saturated LSTM/GRU then
        # take microcode assists (seen: seed LSTM step ~800 ms -> ~90 ms). Set here, before
        # the framework sets its thread count, so that its intra-op threads inherit the mode.
        import torch

        torch.set_flush_denormal(True)
    from benchmarks.frameworks import FRAMEWORKS

    spec = json.loads(args.spec)
    try:
        step = FRAMEWORKS[args.framework](spec, args.device)
        t0 = time.perf_counter()
        step()  # first call: tracing + compilation (+ the step)
        first = time.perf_counter() - t0
        warm = []
        for _ in range(args.warmup):
            t0 = time.perf_counter()
            step()
            warm.append(time.perf_counter() - t0)
    except Exception as e:  # reported, not fatal for the whole run
        send({"ready": False, "error": f"{type(e).__name__}: {e}"})
        return
    send({"ready": True, "first_s": first, "warmup_s": warm, "rss_mb": rss_mb()})
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        for _ in range(int(cmd[2]) if len(cmd) > 2 else 0):  # untimed: wake the process up
            step()
        times = []
        for _ in range(int(cmd[1])):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        send({"times": times, "rss_mb": rss_mb()})


if __name__ == "__main__":
    main()
