"""Compiles ``rnn_cpu.cc`` for this CPU and keeps the library in a cache.

The kernels are compiled on first use with the system C++ compiler (``$CXX``, else ``c++`` /
``g++`` / ``clang++``) against the XLA FFI headers that ship with jaxlib, for the CPU at hand
(``-march=native``), and cached under ``$JAXRNN_CACHE_DIR`` (default ``~/.cache/jaxrnn``),
keyed by the source's content, the compile command, the jax version and the CPU's flags.
A cached library is loaded only after its sha256, owner, permissions and symbols are checked
(:func:`verify`); one process compiles at a time (a file lock), the others wait.
They are written with AVX-512 intrinsics; on a CPU with AVX2 and FMA but no AVX-512,
``avx512_on_avx2.h`` gives the same operations on pairs of 256-bit vectors (:func:`isa`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
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
# what the message while compiling promises: measured ~60 s on 2 idle cores, ~180 s on 2 busy
COMPILE_ESTIMATE = "~1-3 min"
COMPILE_TIMEOUT = 900


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


def build_key(source: Path = SOURCE) -> str:
    """The cache key of a build of ``source``: a hash of the source's and the headers' contents,
    the compile command without the source's location, the jax version and the CPU's flags (a
    copy of the source elsewhere is the same build)."""
    command = compile_command(source, Path("rnn_cpu.so"))
    command = " ".join(c for c in command if c not in (str(source), str(SOURCE.parent)))
    parts = [
        source.read_bytes(),
        *(h.read_bytes() for h in HEADERS),
        command.encode(),
        jax.__version__.encode(),
        cpuinfo("flags").encode(),
    ]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _writable_by_others(st: os.stat_result) -> str | None:
    """Why a file or directory with this ``stat`` could be changed by someone else (else
    ``None``): owned by another user, or writable by group or others."""
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):#o})"
    return None


def private_dir(directory: Path) -> Path:
    """``directory``, created (mode 0700) where missing, once it is checked to be a directory
    only this user can write: a library in it is run by every process that loads it.

    Raises:
        BuildError: it is not a directory, belongs to another user or is writable by group or
            others (the message names it and what to do).
    """
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise BuildError(f"the kernel cache {directory} is not a directory")
    why = _writable_by_others(st)
    if why is not None:
        raise BuildError(
            f"the kernel cache {directory} is {why}: another user could replace the library "
            f"there. Run `chmod go-w {directory}` or set JAXRNN_CACHE_DIR to a directory of your own"
        )
    return directory


def elf_symbols(data: bytes) -> set[str]:
    """The names a 64-bit little-endian ELF shared library defines in its dynamic symbol table
    (read from the file's bytes, without loading it).

    Raises:
        ValueError: not such an ELF file, or cut short.
    """
    if data[:4] != b"\x7fELF" or data[4:6] != b"\x02\x01":
        raise ValueError("not a 64-bit little-endian ELF file")
    try:
        (shoff,) = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
        sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]  # fmt: skip
        names = set()
        for section in (s for s in sections if s[1] == 11):  # SHT_DYNSYM
            strings = sections[section[6]][4]
            for at in range(section[4], section[4] + section[5], 24):  # Elf64_Sym
                name, _, _, shndx = struct.unpack_from("<IBBH", data, at)
                if shndx != 0:  # defined here, not imported
                    start = strings + name
                    names.add(data[start : data.index(b"\0", start)].decode("utf-8", "replace"))
    except (struct.error, IndexError, ValueError) as e:
        raise ValueError(f"a cut or malformed ELF file ({e})") from None
    return names


def verify(library: Path, symbols: tuple[str, ...] = ()) -> str | None:
    """Why ``library`` must not be loaded (``None``: it may be), checked without loading it:
    it must be a regular file of this user's that no one else can write, whose sha256 is the
    one recorded beside it (``<library>.sha256``, written by :func:`build` from the compiler's
    output) and which defines ``symbols``. Loading a library runs its code, so a file that was
    cut, emptied or put there by anyone else is never loaded."""
    library = Path(library)
    record = library.with_name(library.name + ".sha256")
    for path in (library, record):
        try:
            st = path.lstat()
        except FileNotFoundError:
            return f"{path.name} is missing"
        if not stat.S_ISREG(st.st_mode):
            return f"{path.name} is not a regular file"
        why = _writable_by_others(st)
        if why is not None:
            return f"{path.name} is {why}"
    data = library.read_bytes()
    if not data:
        return f"{library.name} is empty"
    want = record.read_text(errors="replace").strip()
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        return f"{library.name} has sha256 {got[:16]}..., not the recorded {want[:16]}..."
    if not symbols:
        return None
    try:
        missing = sorted(set(symbols) - elf_symbols(data))
    except ValueError as e:
        return f"{library.name} is {e}"
    if missing:
        return f"{library.name} lacks the symbols {', '.join(missing)}"
    return None


@contextlib.contextmanager
def _lock(path: Path):
    """Holds ``flock`` on ``path`` (which keeps the holder's pid): one process builds, the
    others wait with a message. The OS drops the lock when its holder dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            print(
                f"jaxrnn: waiting for process {holder}, which is compiling the native CPU "
                f"kernels into {path.parent} ...",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises ``SystemExit`` meanwhile (where it would otherwise end the process on the
    spot), so a terminated build still stops its compiler and removes its temporary files."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_compiler(cmd: list[str]) -> tuple[int, str]:
    """Runs ``cmd`` in a process group of its own; ``(exit status, stderr)``. The whole group
    (the compiler driver and the compiler, assembler and linker it starts) is killed if this
    process is interrupted or the compile runs past :data:`COMPILE_TIMEOUT`."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, err = proc.communicate(timeout=COMPILE_TIMEOUT)
    except BaseException as e:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(e, subprocess.TimeoutExpired):
            raise BuildError(f"compiling took over {COMPILE_TIMEOUT} s ({' '.join(cmd)})") from None
        raise
    return proc.returncode, err


def _fsync(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _compile(source: Path, out: Path) -> None:
    """Compiles ``source`` into ``out`` and records its sha256 in ``<out>.sha256``: both written
    to temporary files in ``out``'s directory, synced, then renamed over the final names (the
    record first), so no process ever sees half a library."""
    record = out.with_name(out.name + ".sha256")
    temps = []
    for _ in range(2):
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        temps.append(tmp)
    tmp_lib, tmp_record = temps
    cmd = compile_command(source, Path(tmp_lib))
    print(
        f"jaxrnn: compiling the native CPU kernels (first use, {COMPILE_ESTIMATE}) into {out} ...",
        file=sys.stderr,
        flush=True,
    )
    try:
        with _sigterm_raises():
            code, err = _run_compiler(cmd)
        if code != 0:
            raise BuildError(f"compiling {source.name} failed ({' '.join(cmd)}):\n{err[-4000:]}")
        os.chmod(tmp_lib, 0o755)  # whatever the umask: a library others can write is refused
        _fsync(tmp_lib)
        digest = hashlib.sha256(Path(tmp_lib).read_bytes()).hexdigest()
        Path(tmp_record).write_text(digest + "\n")
        _fsync(tmp_record)
        os.replace(tmp_record, record)
        os.replace(tmp_lib, out)
        _fsync(out.parent)  # the renames themselves survive a crash
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _age(path: Path) -> float:
    """Seconds since ``path`` was last written (0 where it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def build(
    directory: Path | None = None, source: Path = SOURCE, symbols: tuple[str, ...] = ()
) -> Path:
    """Compiles ``source`` into a shared library (once; cached) and returns its path, a library
    that :func:`verify` passes (with ``symbols``): safe to load.

    The cache (``directory``, else :func:`cache_dir`) must be this user's and writable by no
    one else (:func:`private_dir`). A cached library that fails :func:`verify` (cut, empty,
    replaced, lacking a symbol) is rebuilt. One process builds under a lock on
    ``rnn_cpu-<key>.lock``; others wait for it, then use its library. A build that is
    interrupted (Ctrl-C, SIGTERM) kills its compiler; temporary files a killed build left are
    removed by the next one.

    Raises:
        BuildError: neither AVX-512 nor AVX2 and FMA, no compiler, an unsafe cache directory,
            or the compiler failed (its output is in the message).
    """
    if isa() is None:
        raise BuildError(
            "the CPU has neither AVX-512 (avx512f) nor AVX2 and FMA; the kernels need one"
        )
    key = build_key(source)
    directory = private_dir(directory if directory is not None else cache_dir())
    out = directory / f"rnn_cpu-{key}.so"
    if verify(out, symbols) is None:
        return out
    with _lock(directory / f"rnn_cpu-{key}.lock"):
        reason = verify(out, symbols)  # another process may have built it meanwhile
        if reason is None:
            return out
        if os.path.lexists(out):
            print(f"jaxrnn: rebuilding the native CPU kernels: {reason}", file=sys.stderr)
        # under the lock no other build of this key runs: its temporaries are a dead build's
        stale = [out, out.with_name(out.name + ".sha256"), *directory.glob(f".{out.name}.*.tmp")]
        # earlier versions' temporaries (tmp*.so): an hour old, no compile still writes them
        stale += [p for p in directory.glob("tmp*.so") if _age(p) > 3600]
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        _compile(source, out)
        reason = verify(out, symbols)
        if reason is not None:
            raise BuildError(f"the library just built fails its check: {reason}")
    return out
