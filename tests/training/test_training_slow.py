"""Real-data training runs reaching the README's targets (slow: minutes on 2 CPU cores).

They read ../shared/data (a missing file fails: CI has it) and write into tmp_path; each
asserts its config's own ``target`` (summary.json's ``target_met``).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from jaxrnn.training import data
from jaxrnn.training.config import load_config
from jaxrnn.training.loop import train

ROOT = pathlib.Path(__file__).parents[2]
SHARED = ROOT.parent / "shared" / "data" / "aclImdb_labeled.tar.gz"


def train_loss_spikes(metrics_path: pathlib.Path, after: int = 100) -> list[tuple[int, float]]:
    """The ``(step, loss)`` train records past step ``after`` whose loss is above the first
    train record's: the adding problem's "no spike" criterion (issue 38), read from a run's
    ``metrics.jsonl`` (window means over ``train.log_every`` steps)."""
    records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    train_loss = [(r["step"], r["loss"]) for r in records if r.get("split") == "train"]
    if not train_loss:
        raise ValueError(f"expected train records in {metrics_path}; got none of {len(records)}")
    start = train_loss[0][1]
    return [(step, loss) for step, loss in train_loss if step > after and loss > start]


def test_train_loss_spikes_finds_only_spikes_past_warmup(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 10, "split": "train", "loss": 4.0},  # the start value
        {"step": 50, "split": "train", "loss": 9.0},  # within the first 100 steps: allowed
        {"step": 100, "split": "test", "loss": 7.0},  # test records are not the train loss
        {"step": 110, "split": "train", "loss": 4.0},  # equal to the start: not above it
        {"step": 120, "split": "diagnostics", "grad_norm_t": {}},
        {"step": 430, "split": "train", "loss": 1.07e8},
        {"step": 440, "split": "train", "loss": 0.15},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert train_loss_spikes(path) == [(430, 1.07e8)]
    assert train_loss_spikes(path, after=40) == [(50, 9.0), (430, 1.07e8)]
    path.write_text(json.dumps(rows[2]) + "\n")
    with pytest.raises(ValueError, match="expected train records.*got none of 1"):
        train_loss_spikes(path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 3])  # seed 3 diverged before the config's Adam eps fix
def test_adding_problem_irnn_reaches_target(tmp_path, seed):
    # as a user runs it: a fresh process (float32 throughout; the suite enables x64)
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        str(ROOT / "configs" / "adding_problem.yaml"),
        "--set",
        f"train.run_dir={tmp_path}",
        "--set",
        "train.progress=false",
        "--set",
        f"seed={seed}",
    ]
    out = subprocess.run(
        cmd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["target"] == "test_mse < 0.01"  # the mean predictor scores ~0.167
    assert summary["target_met"] and result["test_mse"] == summary["test_mse"] < 0.01
    # the config's known spike (W_h's spectral radius drifting above 1 at the peak learning
    # rate) comes and goes before step 1000; past it the loss must stay below its start value
    spikes = train_loss_spikes(tmp_path / "metrics.jsonl", after=1000)
    assert not spikes, f"train loss above its start value after step 1000: {spikes[:5]}"


@pytest.mark.slow
def test_imdb_simple_rnn_reaches_target(tmp_path):
    if not SHARED.exists():
        pytest.fail(f"{SHARED} not present: the IMDB reviews this test trains on")
    cfg = load_config(
        ROOT / "configs" / "imdb_simple_rnn.yaml",
        [
            f"train.run_dir={tmp_path / 'run'}",
            "train.progress=false",
            f"data.path={SHARED}",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
    )
    result = train(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["target"] == "test_accuracy >= 0.85" and summary["target_met"]
    assert result.metrics["test_accuracy"] >= 0.85
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    assert data.load_imdb(cfg.data)["x_train"].shape[1] == 250


# --- the LSTM / GRU configs ------------------------------------------------------------------
# Each test trains the shipped config through train.py, as a user runs it (float32; a fresh
# process). A config whose full run takes longer than CI's slow tier can give it runs here at a
# smaller size: `--set` overrides of the shipped file (so the test cannot drift from it) with a
# target of its own, set below the seeds' measured results by a stated margin. The full runs'
# results are committed in docs/measured/<config>/ (docs/training.md, "Configs and what they
# reach").

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def imdb_cache(tmp_path_factory):
    """One tokenized-IMDB cache for the tests below (tokenizing is the same for each)."""
    return tmp_path_factory.mktemp("imdb_cache")


def _train_summary(run_dir: pathlib.Path, config: str, sets: list[str]) -> dict:
    """Runs ``train.py --config configs/<config>.yaml --set ...`` and returns its summary.json."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / config)]
    for s in [f"train.run_dir={run_dir}", "train.progress=false", *sets]:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["step"] == summary["steps"]
    return summary


@pytest.mark.slow
def test_adding_problem_lstm_reaches_target(tmp_path):
    # the shipped config at full size (4,000 steps, T = 200)
    summary = _train_summary(tmp_path, "adding_problem_lstm.yaml", [])
    assert summary["target"] == "test_mse < 0.01"  # the mean predictor scores ~0.167
    assert summary["target_met"] and summary["test_mse"] < 0.01


# Smaller runs of the configs whose full runs do not fit CI: the overrides, and a target past
# the worst of seeds 0-2's measured results (train.py, 2026-12-06) by at least the seeds' spread
# (max - min), so float rounding on another machine cannot flip it:
#   imdb_gru   1 epoch   0.8631 / 0.8616 / 0.8669   >= 0.85  (0.0116 below the worst; spread 0.0053)
#   imdb_lstm  1 epoch   0.8607 / 0.8635 / 0.8586   >= 0.85  (0.0086; spread 0.0049)
#   shakespeare_char     2.0127 / 2.0068 / 2.0097   <= 2.05  (0.037; spread 0.006)
#   shakespeare_char_lstm2  2.3538 / 2.3267 / 2.3690  <= 2.42  (0.051; spread 0.042)
# The test runs seed 0, the config's.
SMALL_VARIANTS = {
    "imdb_gru.yaml": (["train.epochs=1"], "test_accuracy >= 0.85"),
    "imdb_lstm.yaml": (["train.epochs=1"], "test_accuracy >= 0.85"),
    "shakespeare_char.yaml": (
        ["model.hidden_size=256", "train.steps=400", "train.sample_chars=0"],
        "test_loss <= 2.05",
    ),
    "shakespeare_char_lstm2.yaml": (
        [
            "model.hidden_size=128",
            "data.seq_len=64",
            "train.batch_size=32",
            "train.steps=400",
            "train.sample_chars=0",
        ],
        "test_loss <= 2.42",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(SMALL_VARIANTS))
def test_lstm_gru_config_small_variant_reaches_target(tmp_path, config, imdb_cache):
    overrides, target = SMALL_VARIANTS[config]
    data = SHARED if config.startswith("imdb") else SHAKESPEARE
    if not data.exists():
        pytest.fail(f"{data} not present: the data this test trains on")
    sets = [*overrides, f"data.path={data}", f"target={target}"]
    if config.startswith("imdb"):
        sets.append(f"data.cache_dir={imdb_cache}")
    summary = _train_summary(tmp_path, config, sets)
    metric, op, bound = target.split()
    assert summary["target"] == target and summary["target_met"], (summary[metric], target)
    assert {">=": summary[metric] >= float(bound), "<=": summary[metric] <= float(bound)}[op]
