"""diagnostics.every: ||dL/ds_t|| over t during training, its records, its heat map, resume,
and nothing at all when off."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cells, dynamics
from jaxrnn.training import data as data_lib
from jaxrnn.training.config import ConfigError, from_dict
from jaxrnn.training.loop import plot_metrics, read_metrics, train
from jaxrnn.training.runs import load_run


def _config(tmp_path, every, steps=5, name="run"):
    return from_dict(
        {"task": "adding", "data": {"T": 8, "test_size": 16}, "model": {"hidden_size": 6},
         "diagnostics": {"every": every},
         "train": {"batch_size": 8, "steps": steps, "eval_batch_size": 16, "checkpoint_every": 1,
                   "keep_checkpoints": 10, "log_every": 1, "progress": False,
                   "run_dir": str(tmp_path / name)}},
        source="<test>", name="tiny_adding",
    )  # fmt: skip


def _diagnostics(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "diagnostics"]


def test_diagnostics_record_the_gradient_flow_of_the_steps_batch(tmp_path):
    cfg = _config(tmp_path, every=2)
    run_dir = train(cfg, log=lambda s: None).run_dir
    records = _diagnostics(run_dir)
    assert [r["step"] for r in records] == [2, 4]
    curves = read_metrics(run_dir / "diagnostics.jsonl")
    assert [r["step"] for r in curves] == [2, 4] and all(len(r["grad_norm_t"]) == 8 for r in curves)
    assert (run_dir / "grad_flow.png").stat().st_size > 0
    plot_metrics(read_metrics(run_dir / "metrics.jsonl"), tmp_path / "c.png")  # ignores the split

    # step 2 updated the parameters of checkpoint 1 with the batch of step index 1
    p = load_run(run_dir, step=1).params
    batch = data_lib.make_dataset("adding", cfg.data, cfg.seed, 8).train_batch(1)
    xs, y = jnp.asarray(batch["xs"]), jnp.asarray(batch["y"])

    def own_loss(h_T, ys):  # each sequence's squared error, summed
        return jnp.sum((h_T @ p["W_o"][:, 0] + p["b_o"][0] - y) ** 2)

    want = dynamics.carry_grad_norms(own_loss, cells.simple.cell, p["rnn"], xs).mean(axis=0)
    np.testing.assert_allclose(curves[0]["grad_norm_t"], want, rtol=1e-5)
    summary = records[0]["grad_norm_t"]
    c = curves[0]["grad_norm_t"]
    assert summary == pytest.approx(
        {"T": c[7], "T/2": c[3], "1": c[0], "first_over_last": c[0] / c[7]}
    )


def test_diagnostics_off_writes_nothing(tmp_path):
    run_dir = train(_config(tmp_path, every=0, steps=2), log=lambda s: None).run_dir
    assert _diagnostics(run_dir) == []
    assert not (run_dir / "diagnostics.jsonl").exists() and not (run_dir / "grad_flow.png").exists()


def test_a_resumed_run_writes_the_diagnostics_of_an_uninterrupted_one(tmp_path):
    whole = train(_config(tmp_path, every=2, name="whole"), log=lambda s: None).run_dir
    cut = _config(tmp_path, every=2, name="cut")
    train(cut, stop_at_step=3, log=lambda s: None)
    # the stop is at step 3, a checkpoint; a diagnostics record of step 4 written by a killed
    # process after it must go on resume
    with open(tmp_path / "cut" / "diagnostics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "grad_norm_t": [0.0] * 8}) + "\n")
    train(cut, resume=True, log=lambda s: None)
    for name in ("diagnostics.jsonl",):
        a = read_metrics(whole / name)
        b = read_metrics(tmp_path / "cut" / name)
        assert [r["step"] for r in b] == [2, 4]
        np.testing.assert_allclose([r["grad_norm_t"] for r in b], [r["grad_norm_t"] for r in a])
    assert [r["step"] for r in _diagnostics(tmp_path / "cut")] == [2, 4]


def test_diagnostics_every_must_not_be_negative():
    with pytest.raises(ConfigError, match=r"'diagnostics.every' must be >= 0; got -1"):
        from_dict(
            {"task": "adding", "diagnostics": {"every": -1}, "train": {"steps": 1}},
            source="<test>",
        )


def test_resuming_a_run_from_before_the_diagnostics_section_changes_nothing(tmp_path):
    cut = _config(tmp_path, every=0, steps=3, name="old")
    train(cut, stop_at_step=2, log=lambda s: None)
    # the checkpoint's meta as versions without the diagnostics section wrote it
    (meta,) = (tmp_path / "old" / "checkpoints" / "2").rglob("meta/metadata")
    record = json.loads(meta.read_text())
    del record["config"]["diagnostics"]
    meta.write_text(json.dumps(record))
    train(cut, resume=True, log=lambda s: None)
    resumes = [
        json.loads(ln) for ln in (tmp_path / "old" / "resumes.jsonl").read_text().splitlines()
    ]
    assert [(r["step"], r["changes"]) for r in resumes] == [(2, {})]
    assert not [
        r for r in read_metrics(tmp_path / "old" / "metrics.jsonl") if r["split"] == "resume"
    ]
