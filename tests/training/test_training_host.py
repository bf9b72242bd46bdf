"""jaxrnn.training.host: the malloc tunables are composed correctly and the restart keeps the
command line, the PID and the environment, once."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jaxrnn.training import host

ROOT = Path(__file__).resolve().parents[2]


OURS = ":".join(host.HOST_TUNABLES)


@pytest.mark.parametrize(
    "before,glibc,after",
    [
        (None, (2, 36), OURS),
        ("glibc.malloc.arena_max=4", (2, 35), f"glibc.malloc.arena_max=4:{OURS}"),
        ("glibc.malloc.hugetlb=0", (2, 40), OURS),  # replaced, not doubled
        ("glibc.malloc.arena_max=4", (2, 34), "glibc.malloc.arena_max=4"),  # tunable unknown
        (None, None, None),  # not glibc
    ],
)
def test_host_env(before, glibc, after):
    env = {"HOME": "/x"} if before is None else {"HOME": "/x", "GLIBC_TUNABLES": before}
    out = host.host_env(env, glibc=glibc)
    assert out.get("GLIBC_TUNABLES") == after
    assert out["HOME"] == "/x" and env.get("GLIBC_TUNABLES") == before  # a copy
    assert host.tunables_active(out) == (after is not None and OURS in after)


SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    print("start", os.getpid(), flush=True)
    from jaxrnn.training import host
    host.restart_with_tunables()
    print(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:],
                      "tunables": os.environ.get("GLIBC_TUNABLES")}))
    """
)


@pytest.mark.skipif(
    (host.glibc_version() or (0, 0)) < (2, 35), reason="needs glibc >= 2.35 (Linux)"
)
@pytest.mark.parametrize("opt_out", [False, True])
def test_restart_with_tunables(tmp_path, opt_out):
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update(PYTHONPATH=str(ROOT), GLIBC_TUNABLES="glibc.malloc.arena_max=8")
    if opt_out:
        env[host.OPT_OUT] = "0"
    out = subprocess.run(
        [sys.executable, str(script), "--flag", "a b"], env=env, capture_output=True, text=True,
        timeout=120, check=True,
    ).stdout.splitlines()  # fmt: skip
    starts = [line for line in out if line.startswith("start")]
    res = json.loads(out[-1])
    assert res["argv"] == ["--flag", "a b"]
    if opt_out:
        assert len(starts) == 1 and res["tunables"] == "glibc.malloc.arena_max=8"
    else:  # restarted exactly once, in place, other tunables kept
        assert len(starts) == 2 and starts[0] == starts[1] == f"start {res['pid']}"
        assert res["tunables"] == f"glibc.malloc.arena_max=8:{OURS}"


@pytest.mark.parametrize(
    "flags,expected", [("fpu avx2 avx512f avx512vl", True), ("fpu avx2", False)]
)
def test_cpu_has_avx512(tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert host.cpu_has_avx512(str(info)) is expected
    assert host.cpu_has_avx512(str(tmp_path / "missing")) is False


def test_compiler_options_keep_the_numbers(key):
    """The options are {} off CPU, and a jitted training gradient compiled with them
    equals the one compiled without (float32 rounding)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrnn import models

    assert host.compiler_options("gpu") == {}
    opts = host.compiler_options("cpu")
    assert opts == ({"xla_cpu_prefer_vector_width": 512} if host.cpu_has_avx512() else {})
    cfg = models.ClassifierConfig(vocab_size=50, embed_dim=4, hidden_size=8, cell="lstm")
    params = models.init_classifier(key, cfg)
    tokens = jax.random.randint(jax.random.key(1), (6, 20), 0, 50)
    labels = (jnp.arange(6) % 2).astype(jnp.float32)
    grad = jax.value_and_grad(lambda p: models.classifier_loss(cfg, p, tokens, labels))
    with_opts = jax.jit(grad, compiler_options={"xla_cpu_prefer_vector_width": 512})(params)
    without = jax.jit(grad)(params)
    for a, b in zip(jax.tree.leaves(with_opts), jax.tree.leaves(without), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


INLINE_SCRIPT = """
import json, jax, jax.numpy as jnp
from jaxrnn.training import host
first = host.inline_cpu_dispatch()  # before the CPU backend exists: takes effect
async_dispatch = jax.config.values["jax_cpu_enable_async_dispatch"]
y = float(jax.jit(lambda x: (x * 2).sum())(jnp.arange(4.0)))
second = host.inline_cpu_dispatch()  # the backend exists now: nothing changes
print(json.dumps([first, async_dispatch, y, second]))
"""


def test_inline_cpu_dispatch_only_before_the_backend_exists():
    out = subprocess.run(
        [sys.executable, "-c", INLINE_SCRIPT], env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert json.loads(out[-1]) == [True, False, 12.0, False]
