"""The malloc settings the native backend applies (jaxrnn/backends/cpu/_memory.py).

Each check runs in a fresh interpreter: the settings are process-wide and applied once.
glibc's ``mallinfo2`` says where memory came from: ``hblkhd`` counts bytes in requests mapped
on their own, ``arena`` bytes in the heaps.
"""

import os
import subprocess
import sys

import pytest

from jaxrnn.backends.cpu import _memory

pytestmark = pytest.mark.skipif(
    (_memory.glibc_version() or (0, 0)) < (2, 33), reason="needs glibc >= 2.33 (mallinfo2)"
)

PROBE = """
import ctypes, json, sys
import jax
from jaxrnn import backends, cells
libc = ctypes.CDLL(None)

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]

libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
if sys.argv[1] == "native":  # what rnn(..., backend="native") calls when it picks the kernels
    from jaxrnn.backends import cpu
    cpu.impl("lstm")
if sys.argv[1] == "xla":  # rnn(..., backend="xla") on the CPU picks the hoisted XLA loops
    import jax.numpy as jnp
    params = cells.lstm.init(jax.random.key(0), 3, 4)
    assert backends.select(cells.lstm.cell, params, jnp.float32, "xla").name == "xla"
before = libc.mallinfo2()
block = libc.malloc(48 << 20)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(json.dumps(dict(
    mapped_alone=during.hblkhd - before.hblkhd,        # the block as a mapping of its own
    heap_growth=during.arena - before.arena,            # the block from a heap
    kept_after_free=after.arena - before.arena,         # heap memory not given back on free
)))
"""


def _probe(mode: str, **env) -> dict:
    import json

    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300,
        env={**os.environ, **env},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_by_default_a_large_block_is_mapped_alone_and_given_back():
    got = _probe("plain")
    assert got["mapped_alone"] >= 48 << 20 and got["heap_growth"] < 1 << 20, got


@pytest.mark.parametrize("mode", ["native", "xla"])
def test_cpu_backends_serve_large_blocks_from_the_heap_and_keep_them(mode):
    got = _probe(mode)
    assert got["mapped_alone"] == 0, got
    assert got["heap_growth"] >= 48 << 20 and got["kept_after_free"] >= 48 << 20, got


def test_the_opt_out_leaves_malloc_alone():
    got = _probe("native", **{_memory.OPT_OUT: "0"})
    assert got["mapped_alone"] >= 48 << 20 and got["heap_growth"] < 1 << 20, got
