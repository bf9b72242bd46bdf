"""Process settings for speed on a CPU host, which ``train.py`` applies to itself.

XLA:CPU allocates an executable's temporaries afresh at every call and frees them when the
call ends. glibc hands such memory back to the kernel (a request above the mmap threshold gets
a mapping of its own, unmapped when freed; the heaps of worker threads are trimmed), so the
next call faults every page in again, and the kernel zeroes each one: for a training step
with tens of MB of temporaries that is a large share of the step.

* :data:`HOST_TUNABLES`, glibc malloc tunables (glibc >= 2.35) read only at process start:
  ``mmap_max=0`` (no request gets a mapping of its own: all come from heaps, where memory
  freed after one step is reused by the next), ``top_pad`` 64 MiB (an emptied worker-thread
  heap stays mapped), ``trim_threshold`` at its maximum (heaps are never trimmed),
  ``hugetlb=1`` (transparent huge pages for the heaps). Freed memory stays with the process,
  which suits a training process. ``rnn`` sets all but ``hugetlb`` itself (``mallopt``)
  when the native kernels or the XLA loops first run on a CPU, so a user's own script gets
  them too; :func:`restart_with_tunables` starts the program again with all four; or export
  them::

      GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:\\
      glibc.malloc.top_pad=67108864:glibc.malloc.trim_threshold=2147483647 python my_script.py

* :func:`inline_cpu_dispatch`: JAX starts each CPU computation from the calling thread, so a
  step's temporaries come from the main heap, which has no per-heap size cap.
* :func:`compiler_options`: on a CPU with AVX-512, XLA:CPU is asked for 512-bit vectors (its
  default is 256) in jaxrnn's jitted steps.

Examples:
    >>> from jaxrnn.training import host
    >>> env = host.host_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, glibc=(2, 36))
    >>> env["GLIBC_TUNABLES"].split(":")  # doctest: +NORMALIZE_WHITESPACE
    ['glibc.malloc.arena_max=4', 'glibc.malloc.hugetlb=1', 'glibc.malloc.mmap_max=0',
     'glibc.malloc.top_pad=67108864', 'glibc.malloc.trim_threshold=2147483647']
    >>> host.host_env({}, glibc=None)  # not glibc (macOS, musl): nothing to set
    {}
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from jaxrnn.backends.cpu import _memory

HOST_TUNABLES = (
    "glibc.malloc.hugetlb=1",  # transparent huge pages for the heaps
    "glibc.malloc.mmap_max=0",  # no request mapped on its own: all from heaps, reused
    "glibc.malloc.top_pad=67108864",  # 64 MiB: an emptied thread heap stays mapped
    "glibc.malloc.trim_threshold=2147483647",  # never trim heaps: no re-faulting next step
)
OPT_OUT = _memory.OPT_OUT  # set to 0 to keep the process as started
glibc_version = _memory.glibc_version


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
    ``jax_cpu_enable_async_dispatch=False``; the work itself still runs on XLA's intra-op
    threads). A training loop waits for each step's results anyway (it logs the loss), and
    inline, the step's temporaries come from the calling thread's heap (glibc's main heap,
    which has no 64 MiB cap), so steps with larger buffers reuse them without page faults too.
    Takes effect only before JAX creates its CPU backend (the first computation, or
    ``jax.devices()``): returns ``False`` and changes nothing if it exists.
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
