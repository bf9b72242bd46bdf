"""benchmarks/run.py and worker.py: the process settings each worker gets, the machine kind
that names a results file, and the jaxrnn rows of frameworks.py (one model, several backends)."""

import numpy as np
import pytest

from benchmarks import frameworks, run
from jaxrnn import backends
from jaxrnn.training import host

TINY = dict(mode="infer", cell="simple", B=2, T=3, H=4, V=10, E=2)
OURS = ":".join(host.HOST_TUNABLES)


@pytest.mark.parametrize("fw", ["jaxrnn", "jaxrnn-xla", "keras-jax", "flax", "torch", "numpy"])
def test_by_default_workers_run_as_a_plain_script(fw):
    """--host-env default: no worker but jaxrnn-host has jaxrnn's malloc tunables (those the
    caller's environment had are taken out, a user's own kept), inline dispatch or compiler
    options (--host-settings); PyTorch flushes denormals."""
    base = {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=4:{OURS}", "PATH": "/bin"}
    env, flags = run.worker_env(fw, "default", base)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=4"
    assert env["PATH"] == "/bin" and env["KERAS_BACKEND"] == "jax"
    assert "--host-settings" not in flags
    assert ("--flush-denormal" in flags) == fw.startswith("torch")
    env, _ = run.worker_env(fw, "default", {"GLIBC_TUNABLES": OURS})
    assert "GLIBC_TUNABLES" not in env


@pytest.mark.parametrize("host_env,fw", [("default", "jaxrnn-host"), ("tuned", "jaxrnn"),
                                         ("tuned", "torch"), ("tuned", "flax")])  # fmt: skip
def test_host_settings_where_asked_for(host_env, fw):
    env, flags = run.worker_env(fw, host_env, {})
    if host.glibc_version() and host.glibc_version() >= (2, 35):
        assert host.tunables_active(env)
    assert "--host-settings" in flags


def test_unknown_host_env_is_an_error():
    with pytest.raises(
        ValueError, match=r"host_env must be one of \('default', 'tuned'\); got 'jaxrnn'"
    ):
        run.worker_env("jaxrnn", "jaxrnn", {})


@pytest.mark.slow  # starts workers that compile real steps
def test_workers_report_the_settings_they_ran_with():
    """Real worker processes on a tiny model: the plain jaxrnn row reports no host settings
    at all, jaxrnn-host inline dispatch and (with glibc >= 2.35) jaxrnn's tunables."""
    workers = {fw: run.Worker(fw, TINY, "cpu", warmup=0, wait=False) for fw in ("jaxrnn", "jaxrnn-host")}  # fmt: skip
    try:
        got = {fw: w.ready() for fw, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    assert got["jaxrnn"]["ready"], got["jaxrnn"]
    assert got["jaxrnn"]["settings"] == {"glibc_tunables": None, "inline_dispatch": False,
                                         "compiler_options": {}, "flush_denormal": False}  # fmt: skip
    s = got["jaxrnn-host"]["settings"]
    assert got["jaxrnn-host"]["ready"] and s["inline_dispatch"] is True
    assert s["compiler_options"] == host.compiler_options("cpu")
    if host.glibc_version() and host.glibc_version() >= (2, 35):
        assert host.tunables_active({"GLIBC_TUNABLES": s["glibc_tunables"]})


@pytest.mark.parametrize(
    "gpu,cpu,kind",
    [
        ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)", {}, "gpu-h100"),
        ("GPU 0: NVIDIA H200 (UUID: GPU-2)", {}, "gpu-h200"),
        (None, {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17"}, "cpu-amd-zen4"),
        (None, {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "1"}, "cpu-amd-zen3"),
        (None, {"vendor_id": "AuthenticAMD", "cpu family": "26", "model": "2"}, "cpu-amd-zen5"),
        (None, {"vendor_id": "GenuineIntel", "model name": "Intel(R) Xeon(R) Processor"},
         "cpu-intel-xeon"),
    ],
)  # fmt: skip
def test_machine_kind(gpu, cpu, kind):
    assert run.machine_kind(gpu, cpu) == kind


def test_jaxrnn_rows_name_their_backends():
    assert frameworks.jaxrnn_backend("jaxrnn") == frameworks.jaxrnn_backend("jaxrnn-host") == "auto"
    assert frameworks.jaxrnn_backend("jaxrnn-scan") == "scan"
    b = frameworks.jaxrnn_backend("jaxrnn-pallas-reread")
    assert isinstance(b, backends.Backend) and b.name == "pallas" and b.gpu.hold is False
    assert set(frameworks.JAXRNN_ROWS) <= set(frameworks.FRAMEWORKS)
    with pytest.raises(
        ValueError, match=r"unknown framework 'jaxrnn-fast'; expected one of \[.*'jaxrnn'.*\]"
    ):
        frameworks.build("jaxrnn-fast", TINY, "cpu")


@pytest.mark.slow  # starts workers that compile real steps
def test_jaxrnn_rows_train_the_same_model():
    """Two training steps of the seed model on each CPU backend: the second step's loss (after
    one Adam update of every parameter) is the same on all of them (float32)."""
    spec = dict(TINY, mode="train", cell="lstm")
    losses = {}
    for fw in ("jaxrnn", "jaxrnn-xla", "jaxrnn-scan"):
        step = frameworks.build(fw, spec, "cpu")
        step()
        step()
        losses[fw] = float(step.loss)
    np.testing.assert_allclose(losses["jaxrnn"], losses["jaxrnn-scan"], rtol=1e-5)
    np.testing.assert_allclose(losses["jaxrnn-xla"], losses["jaxrnn-scan"], rtol=1e-5)
