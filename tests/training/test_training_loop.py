"""The training loop: train_step against the NumPy reference, every leaf trained, no recompile,
same seed -> same numbers, resume equality, NaN stop, corrupt checkpoints, Ctrl-C, data parallel."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrnn import reference
from jaxrnn.training import data as data_lib
from jaxrnn.training.checkpoint import CheckpointError
from jaxrnn.training.config import from_dict
from jaxrnn.training.fixtures import write_fake_imdb
from jaxrnn.training.loop import Diverged, make_train_step, read_metrics, train
from jaxrnn.training.tasks import make_task

ROOT = pathlib.Path(__file__).parents[2]
SLOW = pytest.mark.slow


def _config(tmp_path, task, **sections):
    """A tiny config of ``task``; ``sections`` update its sections."""
    base = {
        "adding": {"data": {"T": 12, "test_size": 40}, "model": {"hidden_size": 8}},
        "imdb": {
            "data": {"num_words": 60, "maxlen": 30, "cache_dir": str(tmp_path / "cache")},
            "model": {"embed_dim": 6, "hidden_size": 8},
        },
        "shakespeare": {
            "data": {"seq_len": 16},
            "model": {"embed_dim": 6, "hidden_size": 8, "cell": "simple"},
        },
    }[task]
    if task == "imdb":
        base["data"]["path"] = str(write_fake_imdb(tmp_path / "imdb.tar.gz", per_class=20))
    if task == "shakespeare":
        (tmp_path / "tiny.txt").write_text("To be, or not to be: that is the question.\n" * 40)
        base["data"]["path"] = str(tmp_path / "tiny.txt")
    raw = {
        "task": task,
        "seed": 0,
        **base,
        "optim": {"name": "adam", "learning_rate": 1e-2},
        "train": {
            "batch_size": 8,
            "steps": 12,
            "log_every": 1,
            "eval_every": 4,
            "eval_batch_size": 16,
            "checkpoint_every": 5,
            "progress": False,
            "run_dir": str(tmp_path / "run"),
        },
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values} if isinstance(values, dict) else values
    return from_dict(raw, source="<test>")


def _task_and_batch(cfg):
    ds = data_lib.make_dataset(cfg.task, cfg.data, cfg.seed, cfg.train.batch_size)
    task = make_task(cfg, ds)
    batch = {k: jnp.asarray(v) for k, v in ds.train_batch(0).items()}
    return task, batch


@pytest.mark.parametrize("backend", ["scan", "auto"])
def test_train_step_equals_sgd_on_numpy_reference_gradients(tmp_path, backend):
    """One SGD step of the IMDB task == params - lr * (hand-derived BPTT gradients), on scan
    and on the default backend (``model.backend``)."""
    cfg = _config(tmp_path, "imdb", model={"embed_dim": 6, "hidden_size": 8, "backend": backend})
    task, batch = _task_and_batch(cfg)
    params = task.init(jax.random.key(1))
    lr = 0.5
    step = jax.jit(make_train_step(task.loss_fn, optax.sgd(lr)))
    new, _, metrics = step(params, optax.sgd(lr).init(params), batch)

    np_params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    loss, cache = reference.seed_forward(
        np_params, np.asarray(batch["tokens"]), np.asarray(batch["labels"])
    )
    grads = reference.seed_backward(np_params, cache)
    np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
    for name in ("embedding", "W_o", "b_o"):
        np.testing.assert_allclose(new[name], np_params[name] - lr * grads[name], atol=1e-5)
    for name in ("W_x", "W_h", "b"):
        np.testing.assert_allclose(
            getattr(new["rnn"], name),
            getattr(np_params["rnn"], name) - lr * grads["rnn"][name],
            atol=1e-5,
        )


@pytest.mark.parametrize("task_name", ["adding", "imdb", "shakespeare"])
def test_one_step_changes_every_leaf_and_does_not_recompile(tmp_path, task_name):
    cfg = _config(tmp_path, task_name)
    task, batch = _task_and_batch(cfg)
    traces = []

    def loss_fn(params, batch):
        traces.append(1)  # runs only while tracing
        return task.loss_fn(params, batch)

    tx = optax.adam(1e-2)
    step = jax.jit(make_train_step(loss_fn, tx))
    params = task.init(jax.random.key(0))
    new, state, metrics = step(params, tx.init(params), batch)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, new)
    assert all(jax.tree.leaves(changed)), changed
    assert np.isfinite(float(metrics["loss"]))
    step(new, state, batch)
    assert len(traces) == 1  # the second call reuses the compiled step


@pytest.mark.parametrize(
    "task_name,model",
    [
        ("imdb", {"cell": "simple"}),
        ("imdb", {"cell": "lstm"}),
        ("adding", {"cell": "lstm"}),
        ("adding", {"cell": "simple", "cell_options": {"activation": "relu"}}),
        pytest.param(
            "shakespeare", {"cell": "gru", "cell_options": {"reset_after": True}}, marks=SLOW
        ),
    ],
)
def test_backend_trains_to_the_same_numbers(tmp_path, task_name, model):
    """``model.backend`` picks what runs the recurrence and nothing else: the default (the
    fastest that applies) gives scan's losses, step by step."""
    runs = {}
    for backend in ("scan", "auto"):
        cfg = _config(
            tmp_path, task_name, model={**model, "hidden_size": 8, "backend": backend},
            train={"run_dir": str(tmp_path / backend)},
        )  # fmt: skip
        runs[backend] = train(cfg)
    scan, auto = (_losses(runs[b].run_dir) for b in ("scan", "auto"))
    assert [r[:2] for r in scan] == [r[:2] for r in auto] and len(scan) > 12
    np.testing.assert_allclose([r[2] for r in auto], [r[2] for r in scan], rtol=2e-5)


@pytest.mark.parametrize(
    "task_name,model,data",
    [
        # all slow (~20 s each): test_remat.py covers remat itself in the default suite
        pytest.param("imdb", {"cell": "lstm"}, {"padding": "post"}, marks=SLOW),
        # a stack in segments through both layers, its dropout masks redrawn per segment
        pytest.param(
            "shakespeare", {"cell": "lstm", "num_layers": 2, "dropout": 0.3}, {}, marks=SLOW
        ),
        pytest.param("imdb", {"cell": "gru", "backend": "scan", "dropout": 0.2}, {}, marks=SLOW),
        pytest.param("adding", {"cell": "simple"}, {}, marks=SLOW),
        pytest.param("shakespeare", {"cell": "lstm", "backend": "scan"}, {}, marks=SLOW),
    ],
)
def test_remat_trains_to_the_same_numbers(tmp_path, task_name, model, data):
    """``model.remat`` (checkpointed BPTT segments) gives the losses of the same run without
    it, step by step, on either path; it may change across ``--resume``."""
    runs = {}
    for remat in (None, 5):
        cfg = _config(
            tmp_path, task_name, model={**model, "hidden_size": 8, "remat": remat}, data=data,
            train={"run_dir": str(tmp_path / str(remat))},
        )  # fmt: skip
        runs[remat] = _losses(train(cfg).run_dir)
    assert [r[:2] for r in runs[None]] == [r[:2] for r in runs[5]] and len(runs[5]) > 12
    np.testing.assert_allclose([r[2] for r in runs[5]], [r[2] for r in runs[None]], rtol=2e-5)
    more = _config(
        tmp_path, task_name, model={**model, "hidden_size": 8, "remat": "sqrt"}, data=data,
        train={"run_dir": str(tmp_path / "5"), "steps": 14},
    )  # fmt: skip
    assert train(more, resume=True).step == 14


def _losses(run_dir):
    return [(r["step"], r["split"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl")]


def test_same_seed_same_numbers_and_resume_equals_uninterrupted(tmp_path):
    a = train(_config(tmp_path, "adding", train={"run_dir": str(tmp_path / "a")}))
    b = train(_config(tmp_path, "adding", train={"run_dir": str(tmp_path / "b")}))
    assert a.status == "finished" and a.step == 12
    assert _losses(a.run_dir) == _losses(b.run_dir)  # same seed -> same numbers, exactly

    # interrupted after 7 steps (between the checkpoints at 5 and 10), then resumed
    cfg_c = _config(tmp_path, "adding", train={"run_dir": str(tmp_path / "c")})
    c1 = train(cfg_c, stop_at_step=7)
    assert c1.status == "interrupted" and c1.step == 7
    assert max(r["step"] for r in read_metrics(tmp_path / "c" / "metrics.jsonl")) == 7
    c2 = train(cfg_c, resume=True)
    assert c2.status == "finished"
    assert _losses(a.run_dir) == _losses(c2.run_dir)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(c2.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for name in ("curves.png", "summary.json", "config.yaml"):
        assert (c2.run_dir / name).exists()

    d = train(_config(tmp_path, "adding", seed=1, train={"run_dir": str(tmp_path / "d")}))
    assert _losses(d.run_dir) != _losses(a.run_dir)  # another seed -> other numbers


@pytest.mark.parametrize(
    "task_name,drop",
    [
        pytest.param(  # Keras's
            "imdb", {"cell": "lstm", "dropout": 0.3, "recurrent_dropout": 0.2}, marks=SLOW
        ),
        # char-rnn's: between two stacked layers and on the top layer's outputs
        pytest.param("shakespeare", {"cell": "lstm", "num_layers": 2, "dropout": 0.3}, marks=SLOW),
    ],
)
def test_dropout_runs_are_reproducible_resumable_and_evaluated_without_dropout(
    tmp_path, task_name, drop
):
    cfg_a = _config(tmp_path, task_name, model=drop, train={"run_dir": str(tmp_path / "a")})
    a = train(cfg_a)
    b = train(_config(tmp_path, task_name, model=drop, train={"run_dir": str(tmp_path / "b")}))
    assert _losses(a.run_dir) == _losses(b.run_dir)  # the dropout keys come from the seed
    cfg_c = _config(tmp_path, task_name, model=drop, train={"run_dir": str(tmp_path / "c")})
    assert train(cfg_c, stop_at_step=7).status == "interrupted"
    c = train(cfg_c, resume=True)
    assert _losses(a.run_dir) == _losses(c.run_dir)  # step s's masks do not depend on resuming
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    no_drop = {k: v for k, v in drop.items() if not k.endswith("dropout")}
    plain = train(
        _config(tmp_path, task_name, model=no_drop, train={"run_dir": str(tmp_path / "p")})
    )
    first = lambda run: [r["loss"] for r in read_metrics(run / "metrics.jsonl")][0]  # noqa: E731
    assert first(a.run_dir) != first(plain.run_dir)  # same init and batch; dropout changed step 1

    # evaluation is deterministic: the test loss of a's final params, recomputed without a key
    cfg = cfg_a
    ds = data_lib.make_dataset(cfg.task, cfg.data, cfg.seed, cfg.train.batch_size)
    task = make_task(cfg, ds)
    sums = {}
    for batch in ds.eval_batches(16):
        for k, v in task.eval_fn(a.params, {k: jnp.asarray(v) for k, v in batch.items()}).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    np.testing.assert_allclose(task.summarize(sums)["loss"], a.metrics["test_loss"], rtol=1e-5)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    # a "step" schedule multiplies the learning rate by 1e30 after 6 steps: the loss blows up
    cfg = _config(
        tmp_path,
        "adding",
        optim={
            "name": "sgd",
            "learning_rate": 0.01,
            "schedule": "step",
            "step_every": 6,
            "step_factor": 1e30,
        },
        train={"steps": 40, "checkpoint_every": 3},
    )
    pattern = r"non-finite (loss or gradient at|parameters or optimizer state after) step (\d+) "
    with pytest.raises(Diverged, match=pattern) as info:
        train(cfg)
    kind, bad_step = re.search(pattern, str(info.value)).groups()
    assert 7 <= int(bad_step) < 20
    # a non-finite loss condemns the parameters it came from: the newest checkpoint before them
    # is named (and the one of them, if any, removed); a non-finite update keeps step - 1's
    good = (int(bad_step) - (2 if kind.startswith("loss") else 1)) // 3 * 3
    assert f"step {good})" in str(info.value)
    steps = sorted(
        int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()
    )
    assert steps[-1] == good


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    cfg = _config(tmp_path, "adding", train={"steps": 5})
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "5"
    files = [p for p in ckpt.rglob("*") if p.is_file()]
    assert files
    for p in files:
        p.write_bytes(b"\x00garbage\xff" * 3)
    with pytest.raises(CheckpointError, match=r"checkpoints/5 is corrupt or unreadable"):
        train(cfg, resume=True)


def test_existing_checkpoints_need_resume_and_same_config(tmp_path):
    cfg = _config(tmp_path, "adding", train={"steps": 5})
    train(cfg)
    with pytest.raises(
        CheckpointError, match=r"already holds checkpoints \(latest step 5\); pass --resume"
    ):
        train(cfg)
    other = _config(tmp_path, "adding", train={"steps": 8}, model={"hidden_size": 9})
    with pytest.raises(
        CheckpointError,
        match="another task/seed/data/model config.*model.hidden_size: 8 in the checkpoint, 9 given",
    ):
        train(other, resume=True)
    more = train(_config(tmp_path, "adding", train={"steps": 8}), resume=True)  # extend a run
    assert more.step == 8
    # the code path may change across --resume (same model, same numbers)
    faster = _config(
        tmp_path, "adding", train={"steps": 10}, model={"hidden_size": 8, "backend": "xla"}
    )
    assert train(faster, resume=True).step == 10


def _start_script(code, env_extra):
    """A fresh Python process running ``code`` (the repository on its path)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env_extra},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _results(procs, timeout=240):
    """Waits for every process; each must succeed. The last stdout line of the first, as JSON."""
    try:
        outs = [proc.communicate(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:  # a process whose peer died would wait for it forever
            proc.kill()
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    return json.loads(outs[0][0].strip().splitlines()[-1])


def _run_script(code, env_extra, timeout=240):
    return _results([_start_script(code, env_extra)], timeout)


SHARDED = """
    import json, sys, jax
    from jaxrnn.training.config import from_dict
    from jaxrnn.training.loop import train, read_metrics
    cfg = from_dict({"task": "adding", "seed": 3, "data": {"T": 10, "test_size": 16},
                     "model": {"hidden_size": 8},
                     "optim": {"learning_rate": 0.01, "clip_norm": 1.0},
                     "train": {"batch_size": 8, "steps": 5, "log_every": 1, "eval_every": 5,
                               "eval_batch_size": 8, "progress": False,
                               "run_dir": sys.argv[1] if len(sys.argv) > 1 else "%s"}})
    r = train(cfg)
    if jax.process_index() == 0:  # the chief writes the metrics; another process may end first
        print(json.dumps({"devices": jax.device_count(), "processes": jax.process_count(),
                          "shards": len(r.params["W_o"].sharding.device_set),
                          "losses": [m["loss"] for m in read_metrics(r.run_dir / "metrics.jsonl")]}))
"""


@pytest.mark.slow  # two fresh processes (one device, four host devices)
def test_data_parallel_over_4_devices_equals_single_device(tmp_path):
    one = _run_script(SHARDED % (tmp_path / "one"), {"XLA_FLAGS": ""})
    four = _run_script(
        SHARDED % (tmp_path / "four"), {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    )
    assert one["devices"] == 1 and four["devices"] == 4
    assert four["shards"] == 4  # parameters replicated over the 4 devices
    assert len(one["losses"]) == 6  # 5 train records + 1 evaluation
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # two fresh processes (~16 s); runs in .ci/run's slow part
def test_two_processes_over_jax_distributed_equal_single_device(tmp_path):
    # the multi-host path on one machine: 2 processes x 2 host devices, connected by
    # jax.distributed (JAX_COORDINATOR_ADDRESS & co., read by the loop), Gloo collectives
    one = _run_script(SHARDED % (tmp_path / "one"), {"XLA_FLAGS": ""})
    port = _free_port()
    env = {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
        "JAX_NUM_PROCESSES": "2",
    }
    two = _results(
        [
            _start_script(SHARDED % (tmp_path / "two"), {**env, "JAX_PROCESS_ID": str(i)})
            for i in (0, 1)
        ],
        timeout=300,
    )  # process 0 prints
    assert two["processes"] == 2 and two["devices"] == 4 and two["shards"] == 4
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "two" / "checkpoints" / "5").is_dir()  # written jointly, once


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        str(ROOT / "configs" / "adding_problem.yaml"),
        "--set",
        "train.steps=100000",
        "--set",
        "data.T=10",
        "--set",
        "train.log_every=1",
        "--set",
        "train.progress=false",
        "--set",
        f"train.run_dir={run}",
    ]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert "interrupted at step" in err
    stopped = json.loads(out.strip().splitlines()[-1])
    assert stopped["status"] == "interrupted"
    saved = [int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()]
    assert stopped["step"] in saved
