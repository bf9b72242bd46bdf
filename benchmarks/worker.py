"""A benchmark worker: one framework, one workload, in its own process.

Started by :mod:`benchmarks.run`; speaks a line protocol on stdin/stdout so the
runner can interleave frameworks round by round (while one worker times, the
others wait on ``stdin`` and use no CPU)::

    -> (start)                 <- @@{"ready": true, "first_s": ..., "warmup_s": [...], "rss_mb": ...,
                                     "settings": {...}}
    -> run 5 1                 <- @@{"times": [5 wall times in seconds]}  (after 1 untimed step)
    -> quit

``settings`` are the process settings the worker ran with, as it saw them: ``GLIBC_TUNABLES``
of its environment, whether JAX dispatches CPU work inline, the XLA compiler options of its
jitted step, whether PyTorch flushes denormals. Lines the frameworks print themselves are
passed through; protocol lines start with ``@@``.
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


def apply_settings(framework: str, device: str, host: bool, flush_denormal: bool) -> dict:
    """Applies the process settings that must precede the framework's first computation and
    returns them (with the compiler options for :func:`benchmarks.frameworks.build`).

    ``host``: jaxrnn's host settings (:mod:`jaxrnn.training.host`, as ``train.py`` runs):
    inline CPU dispatch for the JAX frameworks and, for jaxrnn's rows, its XLA compiler
    options; the malloc tunables come with the environment the runner starts the worker in.
    ``flush_denormal``: PyTorch computes with denormals flushed to zero, as XLA's CPU runtime
    always does (unflushed, a saturated LSTM's tiny gradients take microcode assists on Intel
    CPUs); set before PyTorch sets its thread count, so its intra-op threads inherit the mode.
    """
    jax_framework = not framework.startswith("torch")
    settings = {
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "inline_dispatch": False,
        "compiler_options": {},
        "flush_denormal": False,
    }
    if host and jax_framework:
        from jaxrnn.training import host as host_settings

        settings["inline_dispatch"] = host_settings.inline_cpu_dispatch()
        if framework.startswith("jaxrnn"):  # {} off an AVX-512 CPU
            platform = None if device == "auto" else device
            settings["compiler_options"] = host_settings.compiler_options(platform)
    if flush_denormal and framework.startswith("torch"):
        import torch

        settings["flush_denormal"] = bool(torch.set_flush_denormal(True))
    return settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", required=True)
    ap.add_argument("--spec", required=True, help="workload spec as JSON")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--host-settings", action="store_true",
        help="jaxrnn's host settings: inline CPU dispatch, jaxrnn's XLA compiler options",
    )  # fmt: skip
    ap.add_argument(
        "--flush-denormal", action="store_true",
        help="PyTorch: torch.set_flush_denormal(True), as XLA runs on the CPU",
    )  # fmt: skip
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import frameworks

    spec = json.loads(args.spec)
    settings = None
    try:
        settings = apply_settings(
            args.framework, args.device, args.host_settings, args.flush_denormal
        )
        options = settings["compiler_options"] or None
        step = frameworks.build(args.framework, spec, args.device, compiler_options=options)
        t0 = time.perf_counter()
        step()  # first call: tracing + compilation (+ the step)
        first = time.perf_counter() - t0
        warm = []
        for _ in range(args.warmup):
            t0 = time.perf_counter()
            step()
            warm.append(time.perf_counter() - t0)
    except Exception as e:  # reported, not fatal for the whole run
        send({"ready": False, "error": f"{type(e).__name__}: {e}", "settings": settings})
        return
    send({"ready": True, "first_s": first, "warmup_s": warm, "rss_mb": rss_mb(),
          "settings": settings})  # fmt: skip
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
