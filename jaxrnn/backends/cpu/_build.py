"""Compiles ``rnn_cpu.cc`` for this CPU and keeps the library in a cache.

The kernels are compiled on first use with the system C++ compiler (``$CXX``, else ``c++`` /
``g++`` / ``clang++``) against the XLA FFI headers that ship with jaxlib, for the CPU at hand
(``-march=native``), and cached under ``$JAXRNN_CACHE_DIR`` (default ``~/.cache/jaxrnn``),
keyed by the source's content, the compile command, the jax version and the CPU's flags.
They are written with AVX-512 intrinsics; on a CPU with AVX2 and FMA but no AVX-512,
``avx512_on_avx2.h`` gives the same operations on pairs of 256-bit vectors (:func:`isa`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax

SOURCE = Path(__file__).with_name("rnn_cpu.cc")
HEADERS = (SOURCE.with_name("avx512_on_avx2.h"),)
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")

# Register blocks per CPU core where they differ from the source's defaults (which suit an
# Intel Xeon with AVX-512); the results are bitwise the defaults' (same operations per element).
# Zen 4 runs 512-bit operations on 256-bit units, where blocks with more accumulators per
# loaded panel keep the FMA units busier.
_TUNING = {
    ("avx512", "AuthenticAMD", "25"): ("JAXRNN_LSTM_ROWS=6", "JAXRNN_OUTER_ROWS=8", "JAXRNN_OUTER_VECS=3"),
}  # fmt: skip
# AVX2 has 16 registers of 8 floats (two per 16-float vector): 6 rows x 1 vector keeps 12
# accumulators, a panel vector and a broadcast in registers.
_TUNING_AVX2 = (
    "JAXRNN_BLOCK_ROWS=6", "JAXRNN_BLOCK_VECS=1", "JAXRNN_LSTM_ROWS=6",
    "JAXRNN_OUTER_ROWS=6", "JAXRNN_OUTER_VECS=1",
)  # fmt: skip
# The largest W_h ([H, G H] float32, bytes) the kernels take: every thread streams all of W_h
# through its caches once per step, which beats the XLA loops while W_h is about the size of
# L2 (more on Zen 4's large L3).
_MAX_WEIGHT_BYTES = {("avx512", "AuthenticAMD", "25"): 8 << 20}
DEFAULT_MAX_WEIGHT_BYTES = 3 << 20


class BuildError(RuntimeError):
    """The kernels cannot be built or loaded here (the message says why)."""


def cpuinfo(field: str) -> str:
    """The value of the first ``field`` line of ``/proc/cpuinfo`` ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


def isa(flags: str | None = None) -> str | None:
    """The instruction set the kernels are built for on this CPU: ``"avx512"`` (``avx512f``),
    ``"avx2"`` (``avx2`` and ``fma``, no AVX-512), else ``None`` (no kernels here).

    ``flags``: a ``/proc/cpuinfo`` ``flags`` value (read when not given; ``None`` where it
    cannot be read)."""
    have = set((cpuinfo("flags") if flags is None else flags).split())
    if "avx512f" in have:
        return "avx512"
    if {"avx2", "fma"} <= have:
        return "avx2"
    return None


def cache_dir() -> Path:
    """Where built kernels are kept: ``$JAXRNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxrnn``
    (``~/.cache/jaxrnn``)."""
    if os.environ.get("JAXRNN_CACHE_DIR"):
        return Path(os.environ["JAXRNN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxrnn"


def compiler() -> str:
    """The C++ compiler to use: ``$CXX``, else the first of ``c++``, ``g++``, ``clang++``."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    raise BuildError("no C++ compiler found (set CXX, or install g++)")


def _cpu(vendor: str | None, family: str | None, isa_: str | None) -> tuple:
    return (
        isa() if isa_ is None else isa_,
        cpuinfo("vendor_id") if vendor is None else vendor,
        cpuinfo("cpu family") if family is None else family,
    )


def tuning_defines(
    vendor: str | None = None, family: str | None = None, isa: str | None = None
) -> tuple[str, ...]:
    """``-D`` macros (``NAME=value``) that set the kernels' register blocks for this CPU
    (``vendor``, ``family``: ``/proc/cpuinfo``'s ``vendor_id`` and ``cpu family``; ``isa``: as
    :func:`isa` gives; each read when not given); ``()`` where the source's defaults apply."""
    key = _cpu(vendor, family, isa)
    return _TUNING_AVX2 if key[0] == "avx2" else _TUNING.get(key, ())


def max_weight_bytes(
    vendor: str | None = None, family: str | None = None, isa: str | None = None
) -> int:
    """The largest ``W_h`` (bytes) the kernels take on this CPU (arguments as in
    :func:`tuning_defines`)."""
    return _MAX_WEIGHT_BYTES.get(_cpu(vendor, family, isa), DEFAULT_MAX_WEIGHT_BYTES)


def compile_command(
    source: Path, out: Path, *, shared: bool = True, defines: tuple[str, ...] = ()
) -> list[str]:
    """The compiler command line for ``source`` against the XLA FFI headers of the installed
    jaxlib, with :data:`FLAGS` (``shared=False``: an executable, e.g. the kernels' benchmark
    driver ``benchmarks/kernels.cc``) and ``-D`` macros: :func:`tuning_defines` for this CPU,
    then ``defines`` (``NAME=value``; a name in both takes its value from ``defines``)."""
    flags = FLAGS if shared else tuple(f for f in FLAGS if f not in ("-shared", "-fPIC"))
    macros = {d.partition("=")[0]: d for d in (*tuning_defines(), *defines)}
    # -iquote: a copy of the source elsewhere (a benchmark's variant) still finds the headers
    return [
        compiler(), *flags, *(f"-D{d}" for d in macros.values()),
        "-iquote", str(SOURCE.parent), "-isystem", jax.ffi.include_dir(), str(source),
        "-o", str(out),
    ]  # fmt: skip


def build(directory: Path | None = None, source: Path = SOURCE) -> Path:
    """Compiles ``source`` into a shared library (once; cached) and returns its path.

    Raises:
        BuildError: neither AVX-512 nor AVX2 and FMA, no compiler, or the compiler failed (its
            output is in the message).
    """
    if isa() is None:
        raise BuildError(
            "the CPU has neither AVX-512 (avx512f) nor AVX2 and FMA; the kernels need one"
        )
    command = compile_command(source, Path("rnn_cpu.so"))
    command = " ".join(c for c in command if c not in (str(source), str(SOURCE.parent)))
    parts = [
        source.read_bytes(),
        *(h.read_bytes() for h in HEADERS),
        command.encode(),
        jax.__version__.encode(),
        cpuinfo("flags").encode(),
    ]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    directory = Path(directory) if directory is not None else cache_dir()
    out = directory / f"rnn_cpu-{key}.so"
    if out.exists():
        return out
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    cmd = compile_command(source, Path(tmp))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise BuildError(
                f"compiling {source.name} failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}"
            )
        os.replace(tmp, out)  # atomic: concurrent builders never see half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
