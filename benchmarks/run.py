"""Runs the benchmark workloads on every framework in one go and saves the raw times.

    PYTHONPATH=. python benchmarks/run.py --workload matmul,train,train-gated,infer
    PYTHONPATH=. python benchmarks/run.py --workload scaling --out /tmp/scaling.json
    PYTHONPATH=. python benchmarks/run.py --host-env tuned ...   # everyone on jaxrnn's host settings
    bash benchmarks/gpu.sh OUTDIR        # the GPU suite sized for a short lease (+ gpu_check.py)
    PYTHONPATH=. python benchmarks/report.py                      # tables and plots

The results go to ``benchmarks/results/<machine kind>-<date>.json`` unless ``--out`` says
otherwise (e.g. ``cpu-amd-zen4-2026-12-05.json``; :func:`machine_kind`).

How it measures (a benchmark, not a test: nothing asserts a time):

* each framework runs in its own process (:mod:`benchmarks.worker`), so thread
  pools do not fight; all the workers of one case are started and warmed up
  first (compilation and the first ``--warmup`` steps are excluded), then the
  runner goes round by round, asking each worker in turn for a few timed steps
  while the others sleep. Slow phases of a shared machine then hit every
  framework alike, and ratios are taken within the same run;
* the order of the workers is shuffled every round, and before each worker's
  turn the runner waits ``--settle`` seconds: a worker whose thread pool
  spin-waits after its turn (OpenMP in PyTorch, OpenBLAS in NumPy) would
  otherwise hold a core while the next one is timed;
* each turn starts with ``--round-warmup`` untimed steps (default 1): the first step after
  the quiet pays a wake-up cost that back-to-back training steps do not;
* each step is timed alone (wall clock, after ``block_until_ready`` /
  ``cuda.synchronize``); the report gives the median and the interquartile range;
* ``--device auto`` uses the GPU when JAX/PyTorch see one (``cpu`` / ``gpu`` to force);
* process settings (:func:`worker_env`): by default (``--host-env default``) every worker
  runs as a user's own script would, in the environment it was started in without jaxrnn's
  malloc tunables, JAX dispatching asynchronously, XLA's default compiler options; so the
  ``jaxrnn`` row is the plain script. The ``jaxrnn-host`` row always runs with jaxrnn's host
  settings (:mod:`jaxrnn.training.host`: the glibc malloc tunables, inline CPU dispatch, its
  XLA compiler options; what ``train.py`` runs with). ``--host-env tuned`` gives those
  settings to every worker (the compiler options to jaxrnn's rows only), for a comparison on
  equal terms. PyTorch always runs with denormals flushed to zero, as XLA does on the CPU.
  Each worker reports the settings it ran with; the JSON keeps them per case and framework.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from jaxrnn.training import host  # noqa: E402  (host_env: no JAX computation at import)

SETTLE_S = 0.5  # seconds of quiet before each worker's turn (see the module docstring)
ROUND_WARMUP = 1  # untimed steps at the start of each turn (see the module docstring)
SEED = dict(V=5000, E=32, B=64, T=250, H=100, cell="simple")  # the seed model of the issue
HOST_ENVS = ("default", "tuned")

PEERS = [
    "jaxrnn", "jaxrnn-host", "jaxrnn-xla", "jaxrnn-scan", "keras-jax", "keras-fit", "flax",
    "torch", "torch-1thread", "numpy",
]  # fmt: skip
GATED_PEERS = [p for p in PEERS if p not in ("keras-fit", "numpy")]  # NumPy: simple cell only
# On a GPU: no CPU-only rows (host settings, one CPU thread, the NumPy reference); "jaxrnn"
# runs the Pallas kernels where they apply, "jaxrnn-xla" the XLA loops; PyTorch is cuDNN.
GPU_PEERS = ["jaxrnn", "jaxrnn-xla", "jaxrnn-scan", "keras-jax", "flax", "torch"]


def case(mode: str = "train", **kw: Any) -> dict[str, Any]:
    spec = dict(SEED, mode=mode)
    spec.update(kw)
    return spec


def case_name(spec: dict[str, Any]) -> str:
    if spec["mode"] == "matmul":
        return f"matmul-N{spec['N']}"
    kind = f"{spec['cell']}-{spec['layers']}x-bi-lengths" if spec.get("layers") else spec["cell"]
    return f"{spec['mode']}-{kind}-B{spec['B']}-T{spec['T']}-H{spec['H']}"


def train_flop(spec: dict[str, Any]) -> float:
    """FLOP of one training step of the plain formulation (matmuls only).

    Forward ``x W_x`` and ``h W_h`` each step: ``2 B T (E + H) G H`` with ``G`` gate
    blocks (1 / 4 / 3); the backward pass costs twice that (input and weight
    gradients). The Dense head and Adam are negligible.
    """
    G = {"simple": 1, "lstm": 4, "gru": 3}[spec["cell"]]
    fwd = 2 * spec["B"] * spec["T"] * (spec["E"] + spec["H"]) * G * spec["H"]
    if spec.get("layers"):  # two directions per layer; layers after the first read [., 2H]
        deeper = 2 * spec["B"] * spec["T"] * (2 * spec["H"] + spec["H"]) * G * spec["H"]
        fwd = 2 * (fwd + (spec["layers"] - 1) * deeper)
    return 3 * fwd if spec["mode"] == "train" else fwd


def workloads(name: str, device: str) -> list[tuple[dict[str, Any], list[str]]]:
    """``[(spec, frameworks)]`` of a workload. The CPU grid is shrunk where a cell would take
    minutes (noted in RESULTS.md); on a GPU the full grid runs."""
    cpu = device == "cpu" or (device == "auto" and not _has_gpu())
    peers, gated = (PEERS, GATED_PEERS) if cpu else (GPU_PEERS, GPU_PEERS)
    if name == "matmul":  # a GPU needs a larger product to reach its peak
        sizes = (1024, 2048) if cpu else (2048, 8192)
        return [(dict(mode="matmul", N=n), ["matmul"]) for n in sizes]
    if name == "train":
        return [(case("train"), peers)]
    if name == "train-gated":
        return [(case("train", cell=c), gated) for c in ("lstm", "gru")]
    if name == "stack":  # nn.LSTM(num_layers=2, bidirectional=True) on packed sequences
        fws = ["jaxrnn", "jaxrnn-scan", "flax", "torch"] + (["torch-1thread"] if cpu else [])
        fws.append("torch-unpacked")
        return [(case("train", cell="lstm", layers=2), fws)]  # every layer bidirectional
    if name == "infer":
        infer = [p for p in peers if p != "keras-fit"] + (["keras-fit"] if cpu else [])
        return [(case("infer", B=b), infer) for b in (64, 1)]
    if name == "scaling":
        out = []
        # CPU: PyTorch with its default threads stalls on a shared machine (see RESULTS.md);
        # the grid uses one intra-op thread there
        quick = ["jaxrnn", "jaxrnn-scan", "keras-jax", "flax", "torch-1thread" if cpu else "torch"]
        for T in (100, 1000, 10000):
            out.append((case("train", T=T), quick + (["numpy"] if cpu and T <= 1000 else [])))
        for H in (64, 256, 1024):
            T = 100 if (cpu and H >= 1024) else 250  # CPU: H=1024 at T=100 (~55 GFLOP/step)
            out.append((case("train", H=H, T=T), quick))
        for B in (1, 16, 128, 512):
            out.append((case("train", B=B), quick + (["numpy"] if cpu and B <= 16 else [])))
        for c in ("lstm", "gru"):
            out.append((case("train", cell=c, H=256), quick))
        return out
    raise ValueError(f"unknown workload {name!r}")


def _has_gpu() -> bool:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        return out.returncode == 0 and "GPU" in out.stdout
    except (OSError, subprocess.TimeoutExpired):
        return False


def has_host_settings(fw: str, host_env: str) -> bool:
    """Whether worker ``fw`` runs with jaxrnn's host settings under ``--host-env host_env``."""
    if host_env not in HOST_ENVS:
        raise ValueError(f"host_env must be one of {HOST_ENVS}; got {host_env!r}")
    return fw == "jaxrnn-host" or host_env == "tuned"


def worker_env(
    fw: str, host_env: str, base: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """The environment and the extra command-line flags of worker ``fw``.

    Without host settings the environment is ``base`` (default ``os.environ``) less
    jaxrnn's malloc tunables (a user's own tunables stay): a user's own script. With them,
    the tunables are added (where glibc takes them) and the worker applies inline dispatch
    and jaxrnn's compiler options itself (``--host-settings``). PyTorch workers flush
    denormals either way."""
    base = dict(os.environ if base is None else base)
    path = os.pathsep.join(p for p in (str(ROOT), base.get("PYTHONPATH")) if p)
    env = dict(base, PYTHONPATH=path, KERAS_BACKEND="jax")
    # several JAX workers share one GPU: each takes memory as it needs it, not 75% up front
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    flags = ["--flush-denormal"] if fw.startswith("torch") else []
    if has_host_settings(fw, host_env):
        return host.host_env(env), flags + ["--host-settings"]
    ours = set(host.HOST_TUNABLES)
    kept = [t for t in env.pop("GLIBC_TUNABLES", "").split(":") if t and t not in ours]
    if kept:
        env["GLIBC_TUNABLES"] = ":".join(kept)
    return env, flags


class Worker:
    """A framework in its own process (see :mod:`benchmarks.worker`)."""

    def __init__(
        self,
        fw: str,
        spec: dict[str, Any],
        device: str,
        warmup: int,
        host_env: str = "default",
        wait: bool = True,
    ):
        env, flags = worker_env(fw, host_env)
        self.fw = fw
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", "--framework", fw, "--spec",
             json.dumps(spec), "--device", device, "--warmup", str(warmup), *flags],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        self.info = self._read() if wait else None

    def ready(self) -> dict[str, Any]:
        """The worker's start report (compiled and warmed up), waiting for it if need be."""
        if self.info is None:
            self.info = self._read()
        return self.info

    def _read(self) -> dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        return {"ready": False, "error": f"worker exited with {self.proc.wait()}"}

    def run(self, n: int, untimed: int = 0) -> dict[str, Any]:
        self.proc.stdin.write(f"run {n} {untimed}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        self.proc.wait(timeout=60)
        self.proc.stdout.close()


def run_case(
    spec: dict[str, Any],
    fws: list[str],
    device: str,
    reps: int,
    budget_s: float,
    warmup: int,
    settle_s: float = SETTLE_S,
    host_env: str = "default",
    round_warmup: int = ROUND_WARMUP,
    parallel_start: bool = False,
) -> dict[str, Any]:
    """Times ``fws`` on ``spec``: ``reps`` rounds, each framework once per round, in an order
    shuffled every round (seeded), after ``settle_s`` seconds of quiet before each turn and
    ``round_warmup`` untimed steps at the start of each turn. ``parallel_start``: start,
    compile and warm up all workers at once (a GPU machine's many cores; the timed rounds
    stay one worker at a time); else one after the other (compilation is heavy too)."""
    print(f"== {case_name(spec)}", flush=True)
    workers, results = [], {}
    if parallel_start:
        started = [Worker(fw, spec, device, warmup, host_env, wait=False) for fw in fws]
    else:  # a generator: each worker starts once the one before it is warm
        started = (Worker(fw, spec, device, warmup, host_env) for fw in fws)
    for w in started:
        fw = w.fw
        w.ready()
        if not w.info.get("ready"):
            print(f"   {fw:12s} skipped: {w.info.get('error')}", flush=True)
            results[fw] = {"error": w.info.get("error"), "settings": w.info.get("settings")}
            w.close()
            continue
        est = min(w.info["warmup_s"] or [w.info["first_s"]])
        # steps per round so one framework spends about budget_s on the whole case
        w.per_round = max(1, min(20, int(budget_s / max(est, 1e-6) / reps)))
        w.rounds = reps if est * reps <= 4 * budget_s else max(1, int(4 * budget_s / est))
        results[fw] = {"times": [], "first_s": w.info["first_s"], "rss_mb": w.info["rss_mb"],
                       "settings": w.info.get("settings")}  # fmt: skip
        workers.append(w)
    rng = random.Random(0)
    for r in range(reps):
        order = rng.sample(workers, len(workers))
        for w in order:
            if r < w.rounds:
                time.sleep(settle_s)
                out = w.run(w.per_round, round_warmup)
                if "times" not in out:  # the worker died (e.g. out of memory): keep the others
                    print(f"   {w.fw:12s} failed: {out.get('error')}", flush=True)
                    results[w.fw]["error"] = out.get("error")
                    w.rounds = r
                    continue
                results[w.fw]["times"] += out["times"]
                results[w.fw]["rss_mb"] = out["rss_mb"]
    for w in workers:
        w.close()
    for fw, res in results.items():
        if res.get("times"):
            t = sorted(res["times"])
            res["median_s"] = (
                t[len(t) // 2] if len(t) % 2 else 0.5 * (t[len(t) // 2 - 1] + t[len(t) // 2])
            )
            print(f"   {fw:12s} median {1e3 * res['median_s']:10.2f} ms  (n={len(t)})", flush=True)
    return {
        "spec": spec,
        "name": case_name(spec),
        "flop": (2 * spec["N"] ** 3 if spec["mode"] == "matmul" else train_flop(spec)),
        "results": results,
    }


def cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` ({} where there is none)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                name, _, value = line.partition(":")
                out.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return out


# AMD families and models (/proc/cpuinfo's "cpu family", "model"): 0x19 is Zen 3 and Zen 4
_AMD_ZEN4_MODELS = (range(0x10, 0x20), range(0x60, 0x80), range(0xA0, 0xB0))


def machine_kind(gpu: str | None, cpu: Mapping[str, str]) -> str:
    """A short name of the machine kind, for results files: ``gpu-h100`` (from ``nvidia-smi
    -L``'s line, for a run on the GPU), ``cpu-amd-zen4``, ``cpu-intel-xeon``, ... (from
    ``/proc/cpuinfo``'s fields)."""
    if gpu:
        m = re.search(r"NVIDIA\s+(?:GeForce\s+)?([A-Za-z]*\d+\w*)", gpu)
        return f"gpu-{m.group(1).lower()}" if m else "gpu"
    vendor, name = cpu.get("vendor_id", ""), cpu.get("model name", "")
    if vendor == "AuthenticAMD":
        family, model = int(cpu.get("cpu family", "0")), int(cpu.get("model", "0"))
        zen = {0x17: "zen2", 0x1A: "zen5"}.get(family)
        if family == 0x19:
            zen = "zen4" if any(model in r for r in _AMD_ZEN4_MODELS) else "zen3"
        return f"cpu-amd-{zen}" if zen else "cpu-amd"
    if vendor == "GenuineIntel":
        return "cpu-intel-xeon" if "Xeon" in name else "cpu-intel"
    return f"cpu-{platform.machine().lower() or 'unknown'}"


def machine_info(on_gpu: bool) -> dict[str, Any]:
    import importlib.metadata as md

    info = cpuinfo()
    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "keras", "torch", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    gpu = None
    if _has_gpu():
        gpu = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    flags = info.get("flags", "").split()
    return {
        "kind": machine_kind(gpu if on_gpu else None, info),
        "cpu": info.get("model name") or platform.processor(), "vendor": info.get("vendor_id"),
        "cpu_family": info.get("cpu family"), "cpu_model": info.get("model"),
        "isa": [f for f in ("avx2", "avx512f", "amx_tile") if f in flags],
        "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
        "glibc": platform.libc_ver()[1] or None, "platform": platform.platform(),
        "versions": versions, "loadavg": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--workload",
        default="train",
        help="train | train-gated | infer | scaling | stack | matmul | all (comma-separated ok)",
    )
    ap.add_argument("--reps", type=int, default=10, help="rounds (each framework once per round)")
    ap.add_argument(
        "--budget",
        type=float,
        default=3.0,
        help="about this many timed seconds per framework per case",
    )
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    ap.add_argument(
        "--settle",
        type=float,
        default=SETTLE_S,
        help="seconds of quiet before each worker's turn (lets spinning thread pools sleep)",
    )
    ap.add_argument(
        "--round-warmup",
        type=int,
        default=ROUND_WARMUP,
        help="untimed steps at the start of each worker's turn (see the module docstring)",
    )
    ap.add_argument("--device", default="auto", help="auto | cpu | gpu")
    ap.add_argument(
        "--host-env",
        default="default",
        choices=HOST_ENVS,
        help="default: every worker as a user's own script (jaxrnn-host aside); tuned: every "
        "worker with jaxrnn's host settings (see the module docstring)",
    )
    ap.add_argument(
        "--parallel-start",
        default="auto",
        choices=["auto", "on", "off"],
        help="start and compile a case's workers all at once (auto: on a GPU machine)",
    )
    ap.add_argument("--frameworks", default=None, help="comma-separated subset (default: all)")
    ap.add_argument(
        "--extra",
        default=None,
        help="comma-separated frameworks added to every case (e.g. jaxrnn-pallas-reread)",
    )
    ap.add_argument(
        "--cases",
        default=None,
        help="keep only the cases whose name contains one of these comma-separated strings",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="JSON file (default benchmarks/results/<machine kind>-<date>.json)",
    )
    args = ap.parse_args()  # fmt: skip

    names = (
        ["matmul", "train", "train-gated", "infer", "scaling", "stack"]
        if args.workload == "all"
        else args.workload.split(",")
    )
    only = set(args.frameworks.split(",")) if args.frameworks else None
    gpu = args.device == "gpu" or (args.device == "auto" and _has_gpu())
    parallel = args.parallel_start == "on" or (args.parallel_start == "auto" and gpu)
    machine = machine_info(on_gpu=gpu)
    out = (
        Path(args.out)
        if args.out
        else ROOT / "benchmarks" / "results" / f"{machine['kind']}-{time.strftime('%Y-%m-%d')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(["python"] + sys.argv), "machine": machine, "device": args.device,
              "reps": args.reps, "settle_s": args.settle, "round_warmup": args.round_warmup,
              "host_env": args.host_env, "parallel_start": parallel,
              "workers": {},  # framework -> the process settings it reported
              "cases": []}  # fmt: skip
    for name in names:
        for spec, fws in workloads(name, args.device):
            if args.cases and not any(c in case_name(spec) for c in args.cases.split(",")):
                continue
            fws = [f for f in fws if only is None or f in only or f == "matmul"]
            if args.extra and fws != ["matmul"]:
                fws = fws[:1] + [f for f in args.extra.split(",") if f not in fws] + fws[1:]
            res = run_case(
                spec, fws, args.device, args.reps, args.budget, args.warmup, args.settle,
                args.host_env, args.round_warmup, parallel,
            )  # fmt: skip
            res["workload"] = name
            record["cases"].append(res)
            for fw, r in res["results"].items():
                if r.get("settings") is not None:
                    record["workers"].setdefault(fw, r["settings"])
            out.write_text(json.dumps(record, indent=1))  # partial results survive an interrupt
    record["machine"]["loadavg_end"] = os.getloadavg()
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
