"""Training reliability (issue 39): no poisoned checkpoints, one writer per run directory, exit
codes, a torn metrics line, provenance on resume, and a kill -9 soak (slow)."""

import dataclasses
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import yaml
from conftest import raises_naming

from jaxrnn.training import cli
from jaxrnn.training import data as data_lib
from jaxrnn.training.checkpoint import Checkpointer, CheckpointError, RunDirError, RunDirLock
from jaxrnn.training.config import from_dict, load_config
from jaxrnn.training.loop import Diverged, read_metrics, train
from jaxrnn.training.optim import make_optimizer
from jaxrnn.training.tasks import make_task

ROOT = pathlib.Path(__file__).parents[2]
ADDING = ROOT / "configs" / "adding_problem.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAXRNN_HOST_TUNABLES": "0"}


def _config(tmp_path, **sections):
    """A tiny adding-problem IRNN (ReLU, identity recurrence: a large step overflows it)."""
    raw = {
        "task": "adding",
        "seed": 0,
        "data": {"T": 12, "test_size": 16},
        "model": {
            "hidden_size": 8,
            "cell_options": {"activation": "relu", "recurrent_initializer": "identity"},
        },
        "optim": {"name": "adam", "learning_rate": 1e-2},
        "train": {
            "batch_size": 8,
            "steps": 8,
            "log_every": 1,
            "eval_every": 4,
            "eval_batch_size": 16,
            "checkpoint_every": 1,
            "progress": False,
            "run_dir": str(tmp_path / "run"),
        },
    }
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return from_dict(raw, source="<test>")


def _restore(cfg, step):
    """(params, opt_state) of checkpoint ``step`` of ``cfg``'s run, read back from disk."""
    ds = data_lib.make_dataset(cfg.task, cfg.data, cfg.seed, cfg.train.batch_size)
    task = make_task(cfg, ds)
    params = task.init(jax.random.key(123))
    tx = make_optimizer(cfg.optim, cfg.train.steps)
    ckpt = Checkpointer(pathlib.Path(cfg.train.run_dir) / "checkpoints")
    try:
        state, _ = ckpt.restore(step, {"params": params, "opt_state": tx.init(params)})
    finally:
        ckpt.close()
    return state["params"], state["opt_state"], task


def _finite(tree):
    return all(
        bool(np.all(np.isfinite(np.asarray(x))))
        for x in jax.tree.leaves(tree)
        if np.issubdtype(np.asarray(x).dtype, np.inexact)
    )


def _named_step(message):
    return int(message.split("Last good checkpoint: ")[1].split("(step ")[1].split(")")[0])


# --- 1: no poisoned checkpoints --------------------------------------------------------------


def test_nan_learning_rate_names_the_initial_state_and_saves_nothing_non_finite(tmp_path):
    """lr = NaN (config validation refuses it; forced here): step 1's parameters are NaN, so no
    checkpoint of them is written; the one named is the initial state, which resumes."""
    cfg = _config(tmp_path, optim={"warmup_steps": 0})
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, learning_rate=float("nan")))
    with pytest.raises(Diverged) as info:
        train(cfg)
    msg = str(info.value)
    assert "non-finite parameters or optimizer state after step 1" in msg
    assert _named_step(msg) == 0 and "checkpoints/0" in msg
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps == [0]
    params, opt_state, task = _restore(cfg, 0)
    fresh = task.init(jax.random.fold_in(jax.random.key(cfg.seed), 0))  # the seed's init
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # resumed with a usable learning rate, it trains to the numbers of a fresh run
    good = _config(tmp_path)
    resumed = train(good, resume=True)
    fresh_run = train(_config(tmp_path, train={"run_dir": str(tmp_path / "fresh")}))
    assert resumed.status == "finished" and _finite(resumed.params)
    for a, b in zip(
        jax.tree.leaves(resumed.params), jax.tree.leaves(fresh_run.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cli_refuses_a_nan_learning_rate_as_a_config_error(tmp_path, capsys):
    code = cli.main(
        ["--config", str(ADDING), "--set", f"train.run_dir={tmp_path}", "--set",
         "optim.learning_rate=.nan"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == cli.CONFIG_ERROR == 2
    assert "--set optim.learning_rate=.nan" in err and "got nan" in err
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("keep", [1, 2])
def test_huge_learning_rate_names_a_checkpoint_that_resumes(tmp_path, keep):
    """lr = 1e6 with a checkpoint every step: step 1 moves every weight by ~1e6 and the ReLU
    recurrence overflows. Every checkpoint left is finite, the one named is the one --resume
    takes, and resuming from it with lr 1e-3 trains on with finite numbers."""
    cfg = _config(
        tmp_path,
        optim={"learning_rate": 1e6, "warmup_steps": 0},
        train={"steps": 30, "keep_checkpoints": keep},
    )
    with pytest.raises(Diverged) as info:
        train(cfg)
    msg = str(info.value)
    named = _named_step(msg)
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    on_disk = ckpt.all_steps()
    assert ckpt.latest_step() == named
    ckpt.close()
    for step in on_disk:
        assert _finite(_restore(cfg, step)[:2]), step
    calm = _config(tmp_path, optim={"learning_rate": 1e-3}, train={"steps": named + 4})
    resumed = train(calm, resume=True)
    assert resumed.status == "finished" and resumed.step == named + 4
    assert _finite(resumed.params)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert losses and all(np.isfinite(losses))


# --- 2: one writer per run directory ---------------------------------------------------------

_CLI_SMALL = [
    "--set", "data.T=10", "--set", "data.test_size=20", "--set", "model.hidden_size=8",
    "--set", "train.batch_size=8", "--set", "train.eval_batch_size=20",
    "--set", "train.log_every=1", "--set", "train.progress=false",
]  # fmt: skip


def _train_cmd(run, *extra):
    return [sys.executable, str(ROOT / "train.py"), "--config", str(ADDING), *_CLI_SMALL,
            "--set", f"train.run_dir={run}", *extra]  # fmt: skip


def _wait_for(predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_second_writer_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        _train_cmd(run, "--set", "train.steps=100000", "--set", "train.checkpoint_every=5"),
        env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        metrics = run / "metrics.jsonl"
        _wait_for(
            lambda: (metrics.exists() and metrics.stat().st_size > 0) or first.poll() is not None
        )
        assert first.poll() is None, first.communicate()[1][-2000:]
        second = subprocess.run(
            _train_cmd(run, "--set", "train.steps=3", "--set", "seed=7"),
            env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert second.returncode == cli.RUN_DIR_ERROR == 4, second.stderr[-2000:]
        assert f"in use by process {first.pid}" in second.stderr
        assert str(run / "train.lock") in second.stderr and "Traceback" not in second.stderr
        assert (run / "train.lock").read_text().strip() == str(first.pid)
        assert first.poll() is None  # the holder trains on, untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    # the OS dropped the dead holder's lock: the next writer gets it at once
    RunDirLock(run).acquire().release()


def test_lock_is_exclusive_within_a_process_and_released(tmp_path):
    lock = RunDirLock(tmp_path).acquire()
    with pytest.raises(RunDirError) as info:
        RunDirLock(tmp_path).acquire()
    assert f"in use by process {os.getpid()}" in str(info.value)
    lock.release()
    RunDirLock(tmp_path).acquire().release()  # free again


# --- 5: exit codes ---------------------------------------------------------------------------


def test_help_documents_every_exit_code(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for code, name in [(0, "finished"), (1, "diverged"), (2, "config"), (3, "data error"),
                       (4, "run directory"), (5, "out of memory"), (130, "interrupted")]:  # fmt: skip
        assert any(ln.split()[:1] == [str(code)] and name in ln for ln in out.splitlines()), code


def test_cell_option_typo_is_a_config_error_with_the_allowed_names(capsys):
    code = cli.main(["--config", str(ADDING), "--set", "model.cell_options.activaton=relu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "'model.cell_options.activaton'" in err and "--set model.cell_options.activaton" in err
    for allowed in ("activation", "kernel_initializer", "recurrent_initializer", "use_bias"):
        assert f"'{allowed}'" in err


def test_missing_data_is_exit_3(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    missing = tmp_path / "nope.txt"
    cfg.write_text(
        yaml.safe_dump({"task": "shakespeare", "data": {"path": str(missing)},
                        "train": {"steps": 2, "run_dir": str(tmp_path / "run")}})
    )  # fmt: skip
    code = cli.main(["--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == cli.DATA_ERROR == 3 and str(missing) in err


def test_data_error_is_exit_3(tmp_path, capsys, monkeypatch):
    def fail(cfg, resume=False):
        raise data_lib.DataError("/data/x.npz is corrupt; delete it to re-tokenise")

    monkeypatch.setattr("jaxrnn.training.loop.train", fail)
    assert cli.main(["--config", str(ADDING)]) == 3
    assert "/data/x.npz is corrupt; delete it" in capsys.readouterr().err


def test_out_of_memory_is_exit_5_with_a_hint(tmp_path, capsys, monkeypatch):
    def oom(cfg, resume=False):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123456789 bytes.\nmore"
        )

    monkeypatch.setattr("jaxrnn.training.loop.train", oom)
    code = cli.main(["--config", str(ADDING), "--set", "train.batch_size=64"])
    err = capsys.readouterr().err
    assert code == cli.OUT_OF_MEMORY == 5
    assert "123456789 bytes" in err and "--set train.batch_size=32" in err
    assert "model.remat" in err and len(err.strip().splitlines()) == 1


def test_other_runtime_errors_are_not_called_out_of_memory(monkeypatch):
    def broken(cfg, resume=False):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr("jaxrnn.training.loop.train", broken)
    with pytest.raises(jax.errors.JaxRuntimeError, match="^INTERNAL: something else$"):
        cli.main(["--config", str(ADDING)])


# --- 6: a resume with another model names the keys -------------------------------------------


def test_resume_with_another_model_names_the_keys_and_both_values(tmp_path, capsys):
    train(_config(tmp_path, train={"steps": 3}))
    other = _config(tmp_path, model={"hidden_size": 9}, data={"T": 13})
    with pytest.raises(CheckpointError) as info:
        train(other, resume=True)
    msg = str(info.value)
    assert "model.hidden_size: 8 in the checkpoint, 9 given" in msg
    assert "data.T: 12 in the checkpoint, 13 given" in msg
    assert "train.steps" not in msg  # may change


# --- 7: a torn metrics line ------------------------------------------------------------------


def test_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    ref = train(_config(tmp_path, train={"run_dir": str(tmp_path / "ref")}))
    cfg = _config(tmp_path)
    train(cfg, stop_at_step=5)
    metrics = tmp_path / "run" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 6, "split": "tr')  # a process killed while appending
    notes = []
    train(cfg, resume=True, log=notes.append)
    assert any(str(metrics) in n and "torn last line 7" in n for n in notes), notes
    assert _losses(metrics) == _losses(ref.run_dir / "metrics.jsonl")  # no gap, no repeat


def _losses(path):
    return [(r["step"], r["split"], r["loss"]) for r in read_metrics(path)]


def test_torn_metrics_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    cfg = _config(tmp_path)
    train(cfg, stop_at_step=5)
    metrics = tmp_path / "run" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines[2] = lines[2][:10]
    metrics.write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError) as info:
        train(cfg, resume=True)
    assert f"{metrics}, line 3:" in str(info.value)
    with raises_naming(ValueError, f"{metrics}, line 3: not a JSON metrics record ({lines[2]!r})"):
        read_metrics(metrics)


# --- 9: provenance on resume -----------------------------------------------------------------


def test_resume_keeps_the_original_config_and_records_the_changes(tmp_path):
    cfg = _config(tmp_path, train={"steps": 4, "keep_checkpoints": 10})
    train(cfg)
    original = (tmp_path / "run" / "config.yaml").read_text()
    assert yaml.safe_load(original) == cfg.to_dict()
    more = _config(
        tmp_path,
        optim={"learning_rate": 5e-3},
        train={"steps": 7, "batch_size": 4, "keep_checkpoints": 10},
    )
    train(more, resume=True)
    assert (tmp_path / "run" / "config.yaml").read_text() == original
    want = {
        "optim.learning_rate": [0.01, 0.005],
        "train.batch_size": [8, 4],
        "train.steps": [4, 7],
    }
    resumes_file = tmp_path / "run" / "resumes.jsonl"
    entries = [json.loads(ln) for ln in resumes_file.read_text().splitlines()]
    assert len(entries) == 1 and entries[0]["step"] == 4 and entries[0]["changes"] == want
    metrics = tmp_path / "run" / "metrics.jsonl"
    resumes = [r for r in read_metrics(metrics) if r["split"] == "resume"]
    assert resumes == [{"step": 4, "split": "resume", "changes": want}]
    # resumed once more from step 4: its resume record is replaced, not repeated
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    for step in (5, 6, 7):
        ckpt.delete(step)
    ckpt.close()
    train(more, resume=True)
    assert len(resumes_file.read_text().splitlines()) == 2  # the file keeps every resume
    resumes = [r for r in read_metrics(metrics) if r["split"] == "resume"]
    assert resumes == [{"step": 4, "split": "resume", "changes": want}]
    train_steps = [r["step"] for r in read_metrics(metrics) if r["split"] == "train"]
    assert train_steps == list(range(1, 8))


# --- soak: kill -9 at random moments ---------------------------------------------------------


@pytest.mark.slow  # ~20 process starts
def test_soak_random_kill_9_and_resume_equals_uninterrupted(tmp_path):
    steps = 100
    common = ["--set", f"train.steps={steps}", "--set", "train.checkpoint_every=1",
              "--set", "train.eval_every=10", "--set", "optim.warmup_steps=5"]  # fmt: skip
    ref = subprocess.run(
        _train_cmd(tmp_path / "ref", *common), env=ENV, cwd=ROOT, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-2000:]

    run = tmp_path / "run"
    metrics = run / "metrics.jsonl"
    rng = random.Random(0)
    kills = 0

    def lines():
        return metrics.read_text().count("\n") if metrics.exists() else 0

    while kills < 20:
        before = lines()
        proc = subprocess.Popen(
            _train_cmd(run, *common, "--resume"), env=ENV, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # kill while it trains: after its first new record, at a random moment
        _wait_for(lambda: lines() > before or proc.poll() is not None, timeout=240)  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        kills += 1
    assert kills == 20, f"the run finished after {kills} kills; give it more steps"
    final = subprocess.run(
        _train_cmd(run, *common, "--resume"), env=ENV, cwd=ROOT, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert final.returncode == 0, final.stderr[-2000:]

    got, want = read_metrics(metrics), read_metrics(tmp_path / "ref" / "metrics.jsonl")
    keys = [(r["step"], r["split"]) for r in got]
    assert len(keys) == len(set(keys))  # no duplicate
    assert [k for k in keys if k[1] == "train"] == [(s, "train") for s in range(1, steps + 1)]
    assert keys == [(r["step"], r["split"]) for r in want]  # none missing
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # bit-identical
    cfg = load_config(ADDING, [a for a in _CLI_SMALL + common if a != "--set"])
    for name in ("run", "ref"):
        assert (tmp_path / name / "checkpoints" / str(steps)).is_dir()
    a = _restore(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, run_dir=str(run))),
                 steps)  # fmt: skip
    b = _restore(
        dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, run_dir=str(tmp_path / "ref"))
        ),
        steps,
    )
    for x, y in zip(jax.tree.leaves(a[:2]), jax.tree.leaves(b[:2]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _cli_small(run, *extra):
    return ["--config", str(ADDING), *_CLI_SMALL, "--set", f"train.run_dir={run}", *extra]


def test_divergence_is_exit_1_and_a_corrupt_checkpoint_exit_4(tmp_path, capsys):
    diverge = _cli_small(
        tmp_path / "a", "--set", "optim.learning_rate=1e6", "--set", "optim.warmup_steps=0",
        "--set", "train.checkpoint_every=1", "--set", "train.steps=20",
    )  # fmt: skip
    assert cli.main(diverge) == cli.DIVERGED == 1
    err = capsys.readouterr().err
    assert (
        err.splitlines()[-1].startswith("diverged: non-finite") and "Last good checkpoint: " in err
    )
    assert str(tmp_path / "a" / "checkpoints") in err

    assert cli.main(_cli_small(tmp_path / "b", "--set", "train.steps=2")) == 0
    capsys.readouterr()
    for p in (tmp_path / "b" / "checkpoints" / "2").rglob("*"):
        if p.is_file():
            p.write_bytes(b"\x00garbage\xff")
    assert cli.main(_cli_small(tmp_path / "b", "--set", "train.steps=4", "--resume")) == 4
    err = capsys.readouterr().err
    assert "checkpoints/2 is corrupt or unreadable" in err and "Traceback" not in err
