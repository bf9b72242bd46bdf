"""The linear-recurrence configs (LRU, minGRU) trained to a target (slow: minutes on 2 CPU cores).

The full configs take longer than CI's slow tier allows (the step-by-step LRU at T = 1,000,
three 512-wide minGRU layers), so each test runs a smaller variant of the real config, given
as ``--set`` overrides on top of it, in a fresh process as a user runs it (float32; the suite
enables x64). Each variant's target was measured on seeds 0, 1 and 2 and sits below the worst
of them by the margin stated beside it; ``--set target=...`` makes summary.json's
``target_met`` judge that target, and the test reads the number back too.
"""

import pathlib

import pytest
from test_training_slow import _train_summary

ROOT = pathlib.Path(__file__).parents[2]
DATA = ROOT.parent / "shared" / "data"

VARIANTS = {
    # T = 100 instead of 1,000 and 600 steps instead of 4,000: the same cell, encoder and
    # optimiser, and the full config's own target (seeds 0, 1, 2: test MSE 6.5e-5, 5.1e-5,
    # 2.2e-4; the target is 45x the worst, the mean predictor scores ~0.167).
    "adding_problem_lru": (
        [
            "data.T=100",
            "data.test_size=500",
            "train.steps=600",
            "train.eval_every=600",
        ],
        "test_mse < 0.01",
    ),
    # 5,000 reviews per split, E = H = 32, N = 64, two epochs (seeds 0, 1, 2: test accuracy
    # 0.819, 0.795, 0.793; the target is 0.023 below the worst).
    "imdb_lru": (
        [
            f"data.path={DATA / 'aclImdb_labeled.tar.gz'}",
            "data.limit=5000",
            "model.embed_dim=32",
            "model.hidden_size=32",
            "model.cell_options.state_size=64",
            "train.epochs=2",
        ],
        "test_accuracy >= 0.77",
    ),
    # two 128-wide minGRU layers on 64-character sequences, batch 32, 500 steps; no dropout
    # and a larger step, since the full config's 2e-3 with dropout 0.2 is still at 2.36
    # nats/char after 400 steps of this size (seed 0). Seeds 0, 1, 2: test loss 2.059, 2.069,
    # 2.050 nats/char; the target is 0.08 above the worst.
    "shakespeare_char_mingru": (
        [
            f"data.path={DATA / 'tinyshakespeare.txt'}",
            "model.hidden_size=128",
            "model.num_layers=2",
            "model.dropout=0.0",
            "data.seq_len=64",
            "train.batch_size=32",
            "train.steps=500",
            "train.eval_every=500",
            "train.sample_chars=0",
            "optim.learning_rate=5.0e-3",
            "optim.warmup_steps=50",
        ],
        "test_loss <= 2.15",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(VARIANTS))
def test_linear_config_variant_reaches_target(tmp_path, config):
    overrides, target = VARIANTS[config]
    for p in (DATA / "aclImdb_labeled.tar.gz", DATA / "tinyshakespeare.txt"):
        if any(str(p) in o for o in overrides) and not p.exists():
            pytest.fail(f"{p} not present: the data this test trains on")
    # one checkpoint, at the end
    sets = [*overrides, f"target={target}", "train.checkpoint_every=100000"]
    summary = _train_summary(tmp_path / "run", f"{config}.yaml", sets)
    metric, op, bound = target.split()
    assert summary["config"] == config and summary["target"] == target
    value = summary[metric]
    met = {"<": value < float(bound), "<=": value <= float(bound), ">=": value >= float(bound)}[op]
    assert met and summary["target_met"], (config, value, target)
