"""Process settings for speed on a CPU host: big XLA buffers on transparent huge pages.

XLA:CPU allocates an executable's temporary buffer afresh at every call
(``posix_memalign``) and frees it when the call ends. glibc serves a request that
large (above its 32 MiB mmap threshold, or above 64 MiB from a worker thread's
arena, always) with a fresh ``mmap`` and returns it with ``munmap``, so every
training step faults the whole buffer in again, 4 KiB page by page, and the
kernel zeroes each page. Measured on this project's 2-core CPU machine
(``strace``, ``getrusage``; ``benchmarks/RESULTS.md``): the LSTM seed training step
(B=64, T=250, H=100) maps and unmaps one 84.8 MB buffer per step, 20,700 minor page
faults (81 MiB) per step, 61 ms a step. With the glibc tunable
``glibc.malloc.hugetlb=1`` (glibc >= 2.35) glibc asks for transparent huge pages on
such mappings (``madvise(MADV_HUGEPAGE)``): 276 faults per step and 42 ms; the GRU
step goes from 49 to 36 ms. Steps whose buffers stay under the threshold (the
simple-cell seed step) reuse their memory anyway and are unchanged.

glibc reads tunables only when a process starts, so the setting is applied by
starting the program again with it (:func:`restart_with_hugepages`, what
``train.py`` does), or by exporting it yourself::

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python my_script.py

Other allocator settings measured worse overall: ``MALLOC_ARENA_MAX=1`` with mmap
disabled removed every fault (LSTM 40 ms) but slowed the simple step by ~10%
(one arena lock for all of XLA's threads), and ``MALLOC_MMAP_MAX_=0`` or
``MALLOC_TRIM_THRESHOLD_`` alone switch off glibc's adaptive threshold and made the
simple step fault 20 MiB per step (6.6 -> 11.5 ms).

The second setting is per compilation, for jaxrnn's own jitted steps
(:func:`compiler_options`): on a CPU with AVX-512, XLA:CPU is asked for 512-bit vectors
(it prefers 256 by default, for Intel parts that slow their clock on wide vectors).
Element-wise fusions then run ~2x faster (tanh over ``[64, 400]``: 6.6 -> 3.3 us per
step) and whole training steps ~3-4% faster here (simple / LSTM / GRU seed steps,
in-process A/B); the matmuls (XNNPACK) are not affected.

Examples:
    >>> from jaxrnn import runtime
    >>> env = runtime.host_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, glibc=(2, 36))
    >>> env["GLIBC_TUNABLES"]
    'glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1'
    >>> runtime.host_env({}, glibc=None)  # not glibc (macOS, musl): nothing to set
    {}
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "JAXRNN_HUGEPAGES"  # set to 0 to keep the process as started


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
    """A copy of ``env`` (default ``os.environ``) with :data:`HUGEPAGE_TUNABLE` added to
    ``GLIBC_TUNABLES`` where the C library understands it (glibc >= 2.35); otherwise an
    unchanged copy. Other tunables already set are kept."""
    out = dict(os.environ if env is None else env)
    version = glibc_version() if glibc == "detect" else glibc
    if version is None or tuple(version) < (2, 35):
        return out
    tunables = [t for t in out.get("GLIBC_TUNABLES", "").split(":") if t]
    tunables = [t for t in tunables if not t.startswith("glibc.malloc.hugetlb=")]
    out["GLIBC_TUNABLES"] = ":".join([*tunables, HUGEPAGE_TUNABLE])
    return out


def hugepages_active(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``env`` (default: this process's) already carries :data:`HUGEPAGE_TUNABLE`."""
    env = os.environ if env is None else env
    return HUGEPAGE_TUNABLE in env.get("GLIBC_TUNABLES", "").split(":")


def restart_with_hugepages() -> None:
    """Start this program again (same interpreter, same command line, same PID) with
    :data:`HUGEPAGE_TUNABLE` set, unless it is set already, the C library is not a
    recent glibc, or ``JAXRNN_HUGEPAGES=0``. Call it first thing in a ``__main__``
    block: the process image is replaced, nothing after the call runs in this one."""
    if hugepages_active() or os.environ.get(OPT_OUT) == "0":
        return
    env = host_env()
    if not hugepages_active(env):
        return  # not glibc >= 2.35: nothing to gain
    argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, *sys.argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


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
