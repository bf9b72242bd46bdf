"""The native kernels' cache (``jaxrnn.backends.cpu._build``): a cached library is loaded only
once its sha256, owner, permissions and symbols are checked, and rebuilt otherwise; one
process compiles while the others wait; an interrupted compile leaves no compiler running and
no temporary file.

The default tier builds with a stand-in compiler (``$CXX``, a shell script that compiles a
small C library exporting the kernels' symbols in a fraction of a second and logs each call),
so that every cache path runs in seconds; processes that load a library run in subprocesses
(a library's code runs when it is loaded, and ``_ffi`` loads once per process). The slow tier
repeats the main paths with the real compiler and runs the kernels.
"""

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxrnn.backends.cpu import _build, _ffi

pytestmark = pytest.mark.skipif(
    _build.isa() is None or shutil.which("cc") is None,
    reason="native kernels need AVX-512, or AVX2 and FMA, and a C compiler",
)

REPO = Path(__file__).resolve().parents[2]
SYMBOLS = tuple(_ffi._SYMBOLS.values())

# a compiler that logs its pid, can wait for a go-ahead or hang, then builds the stub
FAKE_CXX = r"""#!/bin/bash
echo $$ >> "$FAKE_LOG"
out=""
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done
if [ -n "$FAKE_READY" ]; then
  for _ in $(seq 600); do [ "$(ls "$FAKE_READY" | wc -l)" -ge 3 ] && break; sleep 0.1; done
  sleep 1
fi
if [ -n "$FAKE_HANG" ]; then echo partial > "$out"; sleep 120 & echo $! > "$FAKE_HANG"; wait; fi
exec cc -shared -fPIC -o "$out" "$FAKE_STUB"
"""


def _stub(path: Path, symbols=SYMBOLS, marker: Path | None = None) -> Path:
    """A C library defining ``symbols`` (never called) and, with ``marker``, a constructor that
    creates that file when the library is loaded."""
    code = "".join(f"void {s}(void) {{}}\n" for s in symbols)
    if marker is not None:
        code += (
            "#include <stdio.h>\n__attribute__((constructor)) static void planted(void) "
            f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
        )
    src = path.with_suffix(".c")
    src.write_text(code)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(path), str(src)], check=True)
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The stand-in compiler as ``$CXX`` and a private cache as ``$JAXRNN_CACHE_DIR`` (both also
    for subprocesses); ``fake.calls()``: how many compiles ran."""
    cxx = tmp_path / "fake-c++"
    cxx.write_text(FAKE_CXX)
    cxx.chmod(0o755)
    log, cache = tmp_path / "compiles.log", tmp_path / "cache"
    stub_src = _stub(tmp_path / "stub.so").with_suffix(".c")
    for name, value in {
        "CXX": str(cxx), "FAKE_LOG": str(log), "FAKE_STUB": str(stub_src),
        "JAXRNN_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO),
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)

    class Fake:
        dir = cache
        path = tmp_path

        @staticmethod
        def calls() -> int:
            return len(log.read_text().split()) if log.exists() else 0

        @staticmethod
        def library() -> Path:
            return cache / f"rnn_cpu-{_build.build_key()}.so"

    return Fake


LOAD = "from jaxrnn.backends.cpu import _ffi; print(_ffi.available(), _ffi.unavailable_reason())"


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def _recorded(lib: Path) -> str:
    return lib.with_name(lib.name + ".sha256").read_text().strip()


# ------------------------------------------------------------------------- verify (no build)


def test_verify_accepts_only_the_recorded_hash_and_all_symbols(tmp_path):
    lib = _stub(tmp_path / "lib.so")
    record = tmp_path / "lib.so.sha256"
    assert _build.verify(lib) == "lib.so.sha256 is missing"
    digest = hashlib.sha256(lib.read_bytes()).hexdigest()
    record.write_text(digest + "\n")
    assert _build.verify(lib, SYMBOLS) is None
    assert _build.elf_symbols(lib.read_bytes()) >= set(SYMBOLS)

    # a symbol the caller needs and the library lacks (its hash matches: it is what was built)
    short = _stub(tmp_path / "short.so", SYMBOLS[1:])
    short.with_name("short.so.sha256").write_text(hashlib.sha256(short.read_bytes()).hexdigest())
    assert _build.verify(short, SYMBOLS) == f"short.so lacks the symbols {SYMBOLS[0]}"

    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 2])  # cut short
    want = hashlib.sha256(data[: len(data) // 2]).hexdigest()[:16]
    assert _build.verify(lib) == f"lib.so has sha256 {want}..., not the recorded {digest[:16]}..."
    lib.write_bytes(b"")
    assert _build.verify(lib) == "lib.so is empty"
    lib.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit off
    assert "not the recorded" in _build.verify(lib)

    # a cut file whose hash was recorded anyway is still refused, by its ELF tables
    cut = tmp_path / "cut.so"
    cut.write_bytes(data[:100])
    cut.with_name("cut.so.sha256").write_text(hashlib.sha256(data[:100]).hexdigest())
    assert _build.verify(cut, SYMBOLS).startswith("cut.so is a cut or malformed ELF file")


def test_verify_refuses_files_others_can_write_or_links(tmp_path):
    lib = _stub(tmp_path / "lib.so")
    record = tmp_path / "lib.so.sha256"
    record.write_text(hashlib.sha256(lib.read_bytes()).hexdigest())
    assert _build.verify(lib, SYMBOLS) is None
    lib.chmod(0o775)
    assert _build.verify(lib) == "lib.so is writable by group or others (mode 0o775)"
    lib.chmod(0o755)
    record.chmod(0o646)
    assert _build.verify(lib) == "lib.so.sha256 is writable by group or others (mode 0o646)"
    record.chmod(0o644)
    link = tmp_path / "link.so"
    link.symlink_to(lib)
    tmp_path.joinpath("link.so.sha256").write_text(record.read_text())
    assert _build.verify(link) == "link.so is not a regular file"


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_cache_directory_others_can_write_is_refused(tmp_path, mode, fake):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(_build.BuildError) as err:
        _build.build(shared, symbols=SYMBOLS)
    msg = str(err.value)
    assert str(shared) in msg and f"mode {mode:#o}" in msg and "JAXRNN_CACHE_DIR" in msg
    assert list(shared.iterdir()) == [] and fake.calls() == 0
    # a directory it creates is private
    made = _build.private_dir(tmp_path / "new" / "cache")
    assert stat.S_IMODE(made.stat().st_mode) == 0o700


def test_shared_cache_directory_falls_back_with_one_warning(fake):
    """Through ``_ffi``: an unsafe cache directory means the XLA loops and one warning (and an
    error under ``JAXRNN_NATIVE=require``), in a fresh process."""
    fake.dir.mkdir(mode=0o777)
    fake.dir.chmod(0o777)
    code = "import warnings; warnings.simplefilter('always'); " + LOAD + "; print(_ffi.available())"
    out = _python(code)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().split("\n")
    assert first.startswith("False the kernel cache") and "mode 0o777" in first
    assert second == "False" and out.stderr.count("native CPU kernels unavailable") == 1
    out = _python(LOAD, JAXRNN_NATIVE="require")
    assert out.returncode == 1 and "BuildError: the kernel cache" in out.stderr
    assert "mode 0o777" in out.stderr and fake.calls() == 0


# ------------------------------------------------------------- rebuilds (stand-in compiler)


def test_build_records_the_hash_and_reuses_the_library(fake):
    lib = _build.build(symbols=SYMBOLS)
    assert lib == fake.library() and fake.calls() == 1
    assert _recorded(lib) == hashlib.sha256(lib.read_bytes()).hexdigest()
    assert _build.build(symbols=SYMBOLS) == lib and fake.calls() == 1
    names = sorted(p.name for p in fake.dir.iterdir())
    assert names == sorted([lib.name, lib.name + ".sha256", lib.name[:-3] + ".lock"])


@pytest.mark.parametrize("damage", ["cut", "empty", "hash", "record", "symbol", "mode"])
def test_damaged_library_is_rebuilt(fake, damage):
    lib = _build.build(symbols=SYMBOLS)
    good = lib.read_bytes()
    if damage == "cut":
        lib.write_bytes(good[: len(good) // 3])
    elif damage == "empty":
        lib.write_bytes(b"")
    elif damage == "hash":
        lib.with_name(lib.name + ".sha256").write_text("0" * 64)
    elif damage == "record":
        lib.with_name(lib.name + ".sha256").unlink()
    elif damage == "symbol":  # a library without one symbol, its hash recorded
        _stub(lib, SYMBOLS[:-1])
        lib.with_name(lib.name + ".sha256").write_text(hashlib.sha256(lib.read_bytes()).hexdigest())
    else:
        lib.chmod(0o777)
    assert _build.verify(lib, SYMBOLS) is not None
    assert _build.build(symbols=SYMBOLS) == lib and fake.calls() == 2
    assert lib.read_bytes() == good and _build.verify(lib, SYMBOLS) is None
    assert stat.S_IMODE(lib.stat().st_mode) & 0o022 == 0


def test_truncated_library_is_rebuilt_in_a_fresh_process_without_sigbus(fake):
    lib = _build.build(symbols=SYMBOLS)
    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 2])
    out = _python(LOAD)
    assert out.returncode == 0 and out.stdout.strip() == "True None", out.stderr
    assert "rebuilding the native CPU kernels: rnn_cpu-" in out.stderr and "sha256" in out.stderr
    assert fake.calls() == 2 and lib.read_bytes() == data


def test_planted_library_is_never_loaded(fake):
    """A library put under the expected name (the key is computable) with a constructor that
    would leave a marker: its hash is not the recorded one, so it is rebuilt, never loaded;
    likewise with a matching hash but writable by others."""
    lib = _build.build(symbols=SYMBOLS)
    marker = fake.path / "planted-ran"
    _stub(lib, marker=marker)
    # the stub really does run on load (what the check guards against)
    probe = _stub(fake.path / "probe.so", marker=fake.path / "probe-ran")
    out = _python(f"import ctypes; ctypes.CDLL({str(probe)!r})")
    assert out.returncode == 0 and (fake.path / "probe-ran").exists(), out.stderr
    out = _python(LOAD)
    assert out.returncode == 0 and out.stdout.strip() == "True None", out.stderr
    assert not marker.exists() and fake.calls() == 2

    # build() checks before anything loads the file, so the rest needs no fresh process
    _stub(lib, marker=marker)
    lib.with_name(lib.name + ".sha256").write_text(hashlib.sha256(lib.read_bytes()).hexdigest())
    lib.chmod(0o757)
    assert _build.verify(lib, SYMBOLS) == f"{lib.name} is writable by group or others (mode 0o757)"
    assert _build.build(symbols=SYMBOLS) == lib and _build.verify(lib, SYMBOLS) is None
    assert not marker.exists() and fake.calls() == 3


@pytest.mark.slow  # three fresh processes at once: about 20 s on 2 loaded cores
def test_three_processes_compile_once(fake):
    """Three processes start a build together: one compiles (the stand-in compiler waits until
    all three are in ``build``), the other two say they wait for it, by pid; all get the
    library."""
    ready = fake.path / "ready"
    ready.mkdir()
    code = (
        "import sys; from pathlib import Path; from jaxrnn.backends.cpu import _build, _ffi\n"
        f"Path({str(ready)!r}, sys.argv[1]).touch()\n"
        "print(_build.build(symbols=tuple(_ffi._SYMBOLS.values())))\n"
    )
    env = {**os.environ, "FAKE_READY": str(ready)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(3)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert {o.strip() for o, _ in outs} == {str(fake.library())}
    assert fake.calls() == 1
    errs = [e for _, e in outs]
    compiling = [i for i, e in enumerate(errs) if "jaxrnn: compiling the native CPU kernels" in e]
    assert len(compiling) == 1, errs
    pid = str(procs[compiling[0]].pid)
    waiting = [e for e in errs if f"waiting for process {pid}, which is compiling" in e]
    assert len(waiting) == 2, errs
    assert _build.verify(fake.library(), SYMBOLS) is None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_compile_kills_the_compiler_and_leaves_no_temporary(fake, sig):
    hang = fake.path / "hang.pid"
    # Ctrl-C's handler as in a terminal: a job started in the background (`cmd &`, as CI may run
    # the suite) inherits SIGINT ignored, and the signal would then never arrive.
    code = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from jaxrnn.backends.cpu import _build; _build.build()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ, "FAKE_HANG": str(hang)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    compilers = []
    try:
        deadline = time.monotonic() + 120
        while not (hang.exists() and hang.read_text().strip()):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        assert [p.name for p in fake.dir.glob(".rnn_cpu-*.tmp")]  # the compile is under way
        log = (fake.path / "compiles.log").read_text().split()
        compilers = [int(hang.read_text()), *map(int, log)]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0, err
        time.sleep(0.5)
        for pid in compilers:  # the script and the `sleep` it started, a grandchild
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]  # fmt: skip
        assert list(fake.dir.glob(".rnn_cpu-*.tmp")) == [] and not fake.library().exists()
    except BaseException:  # a failed check leaves no process behind for the next test
        for pid in (proc.pid, *compilers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()
        raise


def test_stray_temporaries_of_a_killed_build_are_removed(fake):
    """A build killed with SIGKILL cannot clean up: the next build of that key (holding its
    lock, so no live build owns them) removes its temporaries."""
    fake.dir.mkdir(mode=0o700)
    name = fake.library().name
    stray = [fake.dir / f".{name}.abc123.tmp", fake.dir / f".{name}.xyz789.tmp"]
    other = fake.dir / ".rnn_cpu-0000000000000000.so.abc.tmp"  # another key's, maybe live
    old, recent = fake.dir / "tmpold.so", fake.dir / "tmpnew.so"  # an earlier version's names
    for p in (*stray, other, old, recent):
        p.write_bytes(b"half a library")
    hours_ago = time.time() - 7200
    os.utime(old, (hours_ago, hours_ago))
    _build.build(symbols=SYMBOLS)
    assert not any(p.exists() for p in (*stray, old)) and other.exists() and recent.exists()


# ---------------------------------------------------------------------- the real compiler


def _real_env(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "JAXRNN_NATIVE")}
    return {**env, "JAXRNN_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}


RUN = """
import numpy as np, jax.numpy as jnp
from jaxrnn.backends.cpu import _ffi
assert _ffi.available(), _ffi.unavailable_reason()
r = np.random.default_rng(0)
U, W, h = r.normal(size=(5, 3, 7)), r.normal(size=(7, 7)) / 3, r.normal(size=(3, 7))
S = np.asarray(_ffi.simple_forward(*(jnp.asarray(a, jnp.float32) for a in (U,)), None,
               jnp.asarray(W, jnp.float32), jnp.asarray(h, jnp.float32), "tanh"))
for t in range(5):
    h = np.tanh(U[t] + h @ W)
    np.testing.assert_allclose(S[t + 1], h, rtol=1e-5, atol=1e-5)
print("ok")
"""


@pytest.mark.slow  # two builds of the real kernels: 358 s in all on 2 busy cores
def test_real_build_once_for_three_processes_then_rebuilt_when_cut(tmp_path):
    cache = tmp_path / "cache"
    env = _real_env(cache)
    procs = [
        subprocess.Popen([sys.executable, "-c", RUN], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]  # fmt: skip
    outs = [p.communicate(timeout=900) for p in procs]
    assert [o for o, _ in outs] == ["ok\n"] * 3, outs
    assert sum("jaxrnn: compiling the native CPU kernels" in e for _, e in outs) == 1, outs
    (lib,) = cache.glob("rnn_cpu-*.so")
    assert _build.verify(lib, SYMBOLS) is None
    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 2])
    out = subprocess.run([sys.executable, "-c", RUN], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr  # rebuilt: no SIGBUS
    assert "rebuilding the native CPU kernels" in out.stderr
    assert _build.verify(lib, SYMBOLS) is None
