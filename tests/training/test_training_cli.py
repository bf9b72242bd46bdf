"""train.py as a newcomer runs it: the same command twice (each run its own directory),
--resume of the latest or a named run, the compile reported apart from the progress bar, and
--help at once, listing every config key."""

import json
import pathlib
import subprocess
import sys
import time

import pytest

from jaxrnn.training import cli
from jaxrnn.training.checkpoint import RunDirError
from jaxrnn.training.config import from_dict
from jaxrnn.training.loop import read_metrics, run_directory

ROOT = pathlib.Path(__file__).parents[2]
ADDING = ROOT / "configs" / "adding_problem.yaml"
SMALL = [
    "--set", "data.T=10", "--set", "data.test_size=20", "--set", "model.hidden_size=8",
    "--set", "train.batch_size=8", "--set", "train.eval_batch_size=20",
    "--set", "train.log_every=1", "--set", "optim.warmup_steps=0",
]  # fmt: skip


def _steps(run: pathlib.Path) -> list[int]:
    return [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]


def test_the_same_command_twice_then_resume_the_latest_or_a_named_run(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    command = ["--config", str(ADDING), *SMALL, "--set", "train.steps=3"]
    assert cli.main(command) == 0
    first_err = capsys.readouterr().err
    assert cli.main(command) == 0  # the second run does not collide with the first
    parent = tmp_path / "runs" / "adding_problem"
    first, second = sorted(parent.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert _steps(first) == _steps(second) == [1, 2, 3]
    summary = json.loads((first / "summary.json").read_text())  # the config's target, checked
    assert summary["target"] == "test_mse < 0.01"
    assert summary["target_met"] == (summary["test_mse"] < 0.01)
    # the directory is printed at the start and the end; the compile has its own line, before
    # any progress
    lines = first_err.splitlines()
    where = [
        i for i, ln in enumerate(lines) if ln == f"run directory: runs/adding_problem/{first.name}"
    ]
    assert len(where) == 2 and where[0] == 0 and where[1] == len(lines) - 1, lines
    compiled = [ln for ln in lines if ln.startswith("compiled the training step in ")]
    assert len(compiled) == 1 and float(compiled[0].split()[-2]) > 0

    longer = ["--config", str(ADDING), *SMALL, "--set", "train.steps=5"]
    assert cli.main([*longer, "--resume"]) == 0  # the latest run continues
    assert _steps(second) == [1, 2, 3, 4, 5] and _steps(first) == [1, 2, 3]
    assert cli.main([*longer, "--resume", first.name]) == 0  # a named one
    assert _steps(first) == [1, 2, 3, 4, 5]
    assert len(list(parent.iterdir())) == 2
    capsys.readouterr()
    assert cli.main([*longer, "--resume", "nope"]) == cli.RUN_DIR_ERROR
    err = capsys.readouterr().err
    assert "--resume nope" in err and first.name in err and second.name in err


def _cfg(**train):
    return from_dict(
        {"task": "adding", "name": "x", "train": {"steps": 1, **train}}, source="<test>"
    )


def test_run_directory_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = []
    a, resume = run_directory(_cfg(), False, log.append)
    b, _ = run_directory(_cfg(), False, log.append)
    assert not resume and a != b and a.parent == b.parent == pathlib.Path("runs/x")
    assert b.name == a.name + "~2" or b.name > a.name  # the same second gets ~2
    # resume=True: the latest run with checkpoints; none yet: a new run, said so
    c, resume = run_directory(_cfg(), True, log.append)
    assert not resume and "no earlier run of x" in log[-1] and c not in (a, b)
    for run in (a, b):
        (run / "checkpoints").mkdir()
    assert run_directory(_cfg(), True, log.append) == (b, True)
    assert run_directory(_cfg(), a.name, log.append) == (a, True)
    assert run_directory(_cfg(), str(a), log.append) == (a, True)
    # a named train.run_dir is used as is; the layout of older versions resumes in place
    assert run_directory(_cfg(run_dir="mine"), False, log.append) == (pathlib.Path("mine"), False)
    (pathlib.Path("runs/x/checkpoints")).mkdir()
    assert run_directory(_cfg(), True, log.append) == (pathlib.Path("runs/x"), True)
    with pytest.raises(
        RunDirError, match=rf"--resume zzz: .*runs of x in runs/x: {a.name}, {b.name}"
    ):
        run_directory(_cfg(), "zzz", log.append)


def test_help_answers_without_importing_jax_and_lists_every_key():
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--help"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    seconds = time.perf_counter() - t0
    for text in ("model.cell_options", "optim.learning_rate", "train.keep_checkpoints",
                 "imdb_simple_rnn.yaml", "target: test_accuracy >= 0.85", "exit status:",
                 "--resume [RUN]"):  # fmt: skip
        assert text in out, text
    code = "import sys, runpy; sys.argv = ['train.py', '--help']\n"
    code += (
        "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
    )
    code += "assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
    assert seconds < 30  # a loose bound for a loaded machine; the import check is the real one
