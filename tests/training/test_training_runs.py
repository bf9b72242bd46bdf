"""load_run: a trained run's parameters read back equal the ones training returned, for every
task; bad directories and steps are named."""

import jax
import numpy as np
import pytest

from jaxrnn.training.checkpoint import CheckpointError
from jaxrnn.training.config import from_dict
from jaxrnn.training.fixtures import write_fake_imdb
from jaxrnn.training.loop import train
from jaxrnn.training.runs import load_run


def _config(tmp_path, task):
    data = {
        "adding": {"T": 8, "test_size": 16},
        "imdb": {"num_words": 40, "maxlen": 12, "cache_dir": str(tmp_path / "cache"),
                 "path": str(write_fake_imdb(tmp_path / "imdb.tar.gz", per_class=20))},
        "shakespeare": {"seq_len": 8, "path": str(tmp_path / "t.txt")},
    }[task]  # fmt: skip
    (tmp_path / "t.txt").write_text("To be, or not to be: that is the question.\n" * 20)
    model = {"hidden_size": 6} | ({} if task == "adding" else {"embed_dim": 4})
    return from_dict(
        {"task": task, "data": data, "model": model,
         "train": {"batch_size": 8, "steps": 3, "eval_batch_size": 16, "checkpoint_every": 2,
                   "progress": False, "run_dir": str(tmp_path / "run")}},
        source="<test>", name=f"tiny_{task}",
    )  # fmt: skip


@pytest.mark.parametrize("task", ["adding", "imdb", "shakespeare"])
def test_load_run_gives_the_trained_parameters(tmp_path, task):
    result = train(_config(tmp_path, task))
    run = load_run(result.run_dir)
    assert run.step == 3 and run.cfg.name == f"tiny_{task}" and run.cfg.task == task
    for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(result.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    earlier = load_run(result.run_dir, step=2)
    assert earlier.step == 2
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(earlier.params), jax.tree.leaves(run.params), strict=True)
    )
    with pytest.raises(CheckpointError, match=r"no checkpoint of step 7; there are \[2, 3\]"):
        load_run(result.run_dir, step=7)


def test_load_run_names_a_directory_without_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path} is not a run directory"):
        load_run(tmp_path)
