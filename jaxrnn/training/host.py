"""Process settings for speed on a CPU host: keep XLA's per-step buffers mapped.

XLA:CPU allocates an executable's temporary buffer afresh at every call
(``posix_memalign``) and frees it when the call ends. glibc then hands the memory back
to the kernel in two ways: a request above the mmap threshold (adaptive, at most 32 MiB)
gets a fresh ``mmap`` and is ``munmap``-ed when freed, and the heaps of XLA's worker
threads are trimmed (``madvise(MADV_DONTNEED)``) when their free top grows. Either way
the next step faults the buffer in again, 4 KiB page by page, and the kernel zeroes each
page. Measured on this project's 2-core CPU machine (``strace``, ``getrusage``;
``benchmarks/RESULTS.md``):

* LSTM seed training step (B=64, T=250, H=100): one 84.8 MB buffer mapped and unmapped
  per step, 20,700 minor page faults (81 MiB) per step, 61 ms a step;
* simple-cell seed step as the benchmark runs it (parameters donated): 5,350 faults
  (21 MiB) per step, 12.0 ms a step.

Four glibc tunables (glibc >= 2.35) remove that cost, :data:`HOST_TUNABLES`:

* ``glibc.malloc.mmap_max=0``: no request gets a mapping of its own; all come from heaps,
  where memory freed after one step is reused by the next;
* ``glibc.malloc.top_pad=67108864`` (64 MiB): glibc unmaps an emptied worker-thread heap
  (at most 64 MiB each) unless the pad it must keep free exceeds the room left in the
  heap before it; a 64 MiB pad always does, so the heap that holds a step's buffer stays
  mapped between steps (the pad is address space, touched only when used);
* ``glibc.malloc.trim_threshold=2147483647``: heaps are never trimmed;
* ``glibc.malloc.hugetlb=1``: transparent huge pages for the heaps.

A single request above 64 MiB from a worker thread still gets a fresh mapping (a thread
heap cannot hold it), so :mod:`jaxrnn.fast` keeps the seed models' buffers below that:
the gated backward kernels keep their ``[T + 1, B, G H]`` gradient to themselves where
only its first row is needed (LSTM step 72 -> 47 MB, GRU 77 -> 58 MB). Seed training
steps then fault nothing: LSTM 23.2 -> 17.7 ms, GRU 19.8 -> 14.2 ms, simple cell
unchanged (interleaved A/B of benchmark worker processes, 2026-11-26; PyTorch's LSTM step
32.0 -> 28.2 ms with the same tunables). Freed memory stays with the process (its RSS
does not shrink back), which suits a training process. Tried and worse:
``glibc.malloc.arena_max=1`` (one heap that grows without limit, so no request is ever
mapped; but the simple step is ~8% slower, 4.43 -> 4.84 ms, presumably from all of XLA's
threads sharing one arena lock); the earlier set, ``mmap_threshold=33554432`` (32 MiB, its maximum) with
huge pages and no trimming, reused buffers up to 32 MiB only (the LSTM's 72 MB buffer:
~340 page faults per step, huge pages zeroed by the kernel); the trim or mmap threshold
alone without huge pages.

glibc reads tunables only when a process starts, so they are applied by starting the
program again with them (:func:`restart_with_tunables`, what ``train.py`` does), or by
exporting them yourself::

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:\\
    glibc.malloc.top_pad=67108864:glibc.malloc.trim_threshold=2147483647 python my_script.py

The second setting is :func:`inline_cpu_dispatch` (JAX starts each CPU computation from the
calling thread instead of queueing it for a worker thread; ``train.py`` turns it on): the LSTM seed step 19.7 -> 17.2 ms here, and
steps whose buffers exceed a thread heap (the LSTM at H = 256) stop faulting.

The third setting is per compilation, for jaxrnn's own jitted steps
(:func:`compiler_options`): on a CPU with AVX-512, XLA:CPU is asked for 512-bit vectors
(it prefers 256 by default, for Intel parts that slow their clock on wide vectors).
Element-wise fusions then run ~2x faster (tanh over ``[64, 400]``: 6.6 -> 3.3 us per
step) and whole training steps ~3-4% faster here (simple / LSTM / GRU seed steps,
in-process A/B); the matmuls (XNNPACK) are not affected.

Examples:
    >>> from jaxrnn import runtime
    >>> env = runtime.host_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, glibc=(2, 36))
    >>> env["GLIBC_TUNABLES"].split(":")  # doctest: +NORMALIZE_WHITESPACE
    ['glibc.malloc.arena_max=4', 'glibc.malloc.hugetlb=1', 'glibc.malloc.mmap_max=0',
     'glibc.malloc.top_pad=67108864', 'glibc.malloc.trim_threshold=2147483647']
    >>> runtime.host_env({}, glibc=None)  # not glibc (macOS, musl): nothing to set
    {}
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

HOST_TUNABLES = (
    "glibc.malloc.hugetlb=1",  # transparent huge pages for the heaps
    "glibc.malloc.mmap_max=0",  # no request mapped on its own: all from heaps, reused
    "glibc.malloc.top_pad=67108864",  # 64 MiB: an emptied thread heap stays mapped
    "glibc.malloc.trim_threshold=2147483647",  # never trim heaps: no re-faulting next step
)
OPT_OUT = "JAXRNN_HOST_TUNABLES"  # set to 0 to keep the process as started


def glibc_version() -> tuple[int, int] | None:
    """``(major, minor)`` of the C library this process runs on, or ``None`` if it is not glibc."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # e.g. "glibc 2.36"
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):  # no confstr / not glibc
        return None


def host_env(
    env: Mapping[str, str] | None = None, *, glibc: tuple[int, int] | None | str = "detect"
) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) with :data:`HOST_TUNABLES` in
    ``GLIBC_TUNABLES`` where the C library understands them (glibc >= 2.35); otherwise an
    unchanged copy. Other tunables already set are kept; ours replace earlier values."""
    out = dict(os.environ if env is None else env)
    version = glibc_version() if glibc == "detect" else glibc
    if version is None or tuple(version) < (2, 35):
        return out
    ours = {t.split("=")[0] for t in HOST_TUNABLES}
    kept = [
        t for t in out.get("GLIBC_TUNABLES", "").split(":") if t and t.split("=")[0] not in ours
    ]
    out["GLIBC_TUNABLES"] = ":".join([*kept, *HOST_TUNABLES])
    return out


def tunables_active(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``env`` (default: this process's) already carries all :data:`HOST_TUNABLES`."""
    env = os.environ if env is None else env
    return set(HOST_TUNABLES) <= set(env.get("GLIBC_TUNABLES", "").split(":"))


def restart_with_tunables() -> None:
    """Start this program again (same interpreter, same command line, same PID) with
    :data:`HOST_TUNABLES` set, unless they are set already, the C library is not a
    recent glibc, or ``JAXRNN_HOST_TUNABLES=0``. Call it first thing in a ``__main__``
    block: the process image is replaced, nothing after the call runs in this one."""
    if tunables_active() or os.environ.get(OPT_OUT) == "0":
        return
    env = host_env()
    if not tunables_active(env):
        return  # not glibc >= 2.35: nothing to gain
    if not sys.executable:  # embedded interpreter: nothing to restart
        return
    argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, *sys.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    except OSError as e:  # e.g. a sandbox that forbids exec: run on, just slower
        print(f"jaxrnn: no restart with the malloc tunables ({e}); continuing", file=sys.stderr)


def cpu_has_avx512(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the host CPU reports AVX-512 (``avx512f``); ``False`` where unknown."""
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """XLA options for jaxrnn's jitted steps on ``backend`` (default: JAX's default backend):
    ``{"xla_cpu_prefer_vector_width": 512}`` on a CPU with AVX-512, else ``{}``.
    Pass as ``jax.jit(f, compiler_options=runtime.compiler_options())``."""
    if backend is None:
        import jax

        backend = jax.default_backend()
    if backend == "cpu" and cpu_has_avx512():
        return {"xla_cpu_prefer_vector_width": 512}
    return {}


def inline_cpu_dispatch() -> bool:
    """Starts jitted CPU computations inline, from the calling thread, instead of queueing
    each one for a worker thread and returning at once (JAX's
    ``jax_cpu_enable_async_dispatch=False``; what ``train.py`` does; the work itself still
    runs on XLA's intra-op threads). Takes effect only before JAX creates its CPU backend (the first
    computation, or ``jax.devices()``): returns ``False`` and changes nothing if it exists.

    A training loop waits for each step's results anyway (it logs the loss), so async
    dispatch buys little there; inline, the step's temporary buffer comes from the calling
    thread's heap (glibc's main heap, which has no 64 MiB cap), so the seed steps and the
    larger ones reuse it without faults. Measured here (interleaved A/B of benchmark worker
    processes with :data:`HOST_TUNABLES`, medians; ``benchmarks/RESULTS.md``): LSTM seed
    step 19.7 -> 17.2 ms, Keras's 60.1 -> 53.0, Flax's 53.9 -> 51.8; simple cell and GRU
    equal within noise (4.90 / 4.75, 13.2 / 13.1 ms); the LSTM at H = 256 100 -> 87 ms
    (649 -> 0 minor page faults per step).
    """
    import jax

    try:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return False
    except (ImportError, AttributeError):  # another JAX layout: set it and hope it is early
        pass
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True
