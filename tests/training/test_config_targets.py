"""Every shipped config's target is checked somewhere: a slow test trains it, or a committed run
of it (``docs/measured/<config>/summary.json``) met it.

Fast (reads files only): a config added to ``configs/`` without either fails the default suite.
The slow tests are found by reading the test files, so a new test file counts without a list here.
"""

import ast
import functools
import json
import pathlib
import sys

import pytest
import yaml

from jaxrnn.training.config import parse_target

ROOT = pathlib.Path(__file__).parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
MEASURED = ROOT / "docs" / "measured"


def _is_slow_mark(node: ast.AST) -> bool:
    """``pytest.mark.slow`` (also inside a list of marks)."""
    return any(
        isinstance(n, ast.Attribute) and n.attr == "slow" and "mark" in ast.unparse(n)
        for n in ast.walk(node)
    )


def _strings(node: ast.AST) -> set[str]:
    return {
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


@functools.cache
def slow_tested_configs(tests_dir: pathlib.Path) -> dict[str, list[str]]:
    """``{config name: [test ids]}``: the slow tests (``@pytest.mark.slow``, or a module-wide
    ``pytestmark``) that name a config as a string, ``"name"`` or ``"name.yaml"``, in their body
    or decorators (a parametrize list counts), or in a module-level constant they use (a dict of
    variants keyed by config name counts), and that read summary.json's ``"target_met"``."""
    found: dict[str, list[str]] = {}
    for path in sorted(tests_dir.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        module_slow = any(
            isinstance(n, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)
            and _is_slow_mark(n.value)
            for n in tree.body
        )
        module_consts = {
            t.id: n.value
            for n in tree.body
            if isinstance(n, ast.Assign)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if not fn.name.startswith("test"):
                continue
            if not (module_slow or any(_is_slow_mark(d) for d in fn.decorator_list)):
                continue
            used = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
            strings = _strings(fn).union(
                *(_strings(module_consts[n]) for n in used & module_consts.keys())
            )
            if "target_met" not in strings:
                continue  # trains a config without checking its target (e.g. a resume test)
            for s in strings:
                name = s.removesuffix(".yaml")
                found.setdefault(name, []).append(f"{path.relative_to(tests_dir)}::{fn.name}")
    return found


def _shown(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def committed_result(name: str) -> tuple[bool, str]:
    """(met, why) for ``docs/measured/<name>/summary.json`` against the shipped config's
    ``target`` (evaluated here from the config, since older runs' summaries lack the key)."""
    summary_path = MEASURED / name / "summary.json"
    if not summary_path.exists():
        return False, f"no {_shown(summary_path)}"
    cfg = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    summary = json.loads(summary_path.read_text())
    target = parse_target(cfg["target"], cfg["task"])
    if target.metric not in summary:
        return False, f"{_shown(summary_path)} has no {target.metric!r}"
    if "target" in summary and summary["target"] != str(target):
        return (
            False,
            f"{_shown(summary_path)} ran for {summary['target']!r}, the config says {target}",
        )
    met = target.met(summary) and summary.get("target_met", True) is True
    return (
        met,
        f"{_shown(summary_path)}: {target.metric} = {summary[target.metric]} for {target}",
    )


def test_configs_are_found():
    assert len(CONFIGS) >= 7, [p.name for p in CONFIGS]  # the shipped ones


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_has_its_target_checked(config):
    cfg = yaml.safe_load(config.read_text())
    assert cfg.get("target"), f"{config.name} has no 'target' key"
    tests = slow_tested_configs(ROOT / "tests").get(config.stem, [])
    met, why = committed_result(config.stem)
    assert tests or met, (
        f"{config.name} (target {cfg['target']!r}): expected a slow test naming "
        f"'{config.stem}.yaml' or a committed docs/measured/{config.stem}/summary.json that meets "
        f"the target; got no slow test and {why}"
    )


def test_committed_results_meet_their_configs_targets():
    # a committed run that misses its target is a failure even where a slow test also exists
    for path in sorted(MEASURED.glob("*/summary.json")):
        name = path.parent.name
        if not (ROOT / "configs" / f"{name}.yaml").exists():
            continue  # a benchmark's results, not a config's run
        met, why = committed_result(name)
        assert met, f"expected {name}'s committed run to meet its config's target; got {why}"


def _settings(tree: dict, prefix: str = "") -> dict:
    """The leaves of a nested config as ``{"a.b": value}`` (cell_options kept whole)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and k != "cell_options":
            out.update(_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize(
    "run", sorted(p.parent for p in MEASURED.glob("*/config.yaml")), ids=lambda p: p.name
)
def test_committed_runs_are_of_the_shipped_configs(run):
    shipped_path = ROOT / "configs" / f"{run.name}.yaml"
    if not shipped_path.exists():
        pytest.skip(f"{run.name} is not a shipped config")
    shipped = _settings(yaml.safe_load(shipped_path.read_text()))
    ran = _settings(yaml.safe_load((run / "config.yaml").read_text()))
    # what decides the numbers (not where the files went, nor the target, which older runs'
    # config.yaml lacks)
    where = {"data.path", "data.cache_dir", "train.run_dir", "train.progress"}
    decides = ("task", "seed", "data.", "model.", "optim.", "train.")
    differ = {
        k: (v, ran.get(k))
        for k, v in shipped.items()
        if k.startswith(decides) and k not in where and ran.get(k) != v
    }
    assert not differ, f"{shipped_path.name} (shipped, ran) differ: {differ}"
    # the summary is the run's own last evaluation
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["split"] == "test"][-1]
    for metric in ("loss", "accuracy", "mse"):
        if f"test_{metric}" in summary:
            assert last[metric] == pytest.approx(summary[f"test_{metric}"], rel=1e-12), metric
    assert last["step"] == summary["steps"]


def test_the_scan_finds_slow_tests_and_only_slow_ones(tmp_path):
    # the scanner itself, on a small test tree whose answer is known
    (tmp_path / "test_a.py").write_text(
        "import pytest\n"
        "@pytest.mark.slow\n"
        "@pytest.mark.parametrize('c', ['cfg_one', 'cfg_two.yaml'])\n"
        "def test_x(c): assert s['target_met']\n"
        "def test_fast(): load('cfg_three.yaml')['target_met']\n"
        "@pytest.mark.slow\n"
        "def helper(): 'cfg_four', 'target_met'\n"
        "@pytest.mark.slow\n"
        "def test_resume(): run('cfg_eight.yaml')\n"
    )
    (tmp_path / "test_c.py").write_text(
        "import pytest\n"
        "VARIANTS = {'cfg_six': ['x=1']}\n"
        "UNUSED = ['cfg_seven']\n"
        "@pytest.mark.slow\n"
        "@pytest.mark.parametrize('c', sorted(VARIANTS))\n"
        "def test_z(c): assert s['target_met']\n"
    )
    (tmp_path / "test_b.py").write_text(
        "import pytest\npytestmark = [pytest.mark.slow]\ndef test_y(): run('cfg_five.yaml')['target_met']\n"
    )
    found = slow_tested_configs(tmp_path)
    assert set(found) >= {"cfg_one", "cfg_two", "cfg_five", "cfg_six"}
    assert not {"cfg_three", "cfg_four", "cfg_seven", "cfg_eight"} & set(found)
    assert found["cfg_six"] == ["test_c.py::test_z"]


def test_a_committed_run_that_misses_or_lacks_its_target_does_not_count(tmp_path, monkeypatch):
    # summaries written here, judged against the shipped imdb_gru target (test_accuracy >= 0.88)
    monkeypatch.setattr(sys.modules[__name__], "MEASURED", tmp_path)
    summary = tmp_path / "imdb_gru" / "summary.json"
    summary.parent.mkdir()
    summary.write_text(json.dumps({"test_accuracy": 0.8799}))
    met, why = committed_result("imdb_gru")
    assert not met and "0.8799" in why and "test_accuracy >= 0.88" in why
    summary.write_text(json.dumps({"test_accuracy": 0.9, "target_met": False}))
    assert not committed_result("imdb_gru")[0]
    summary.write_text(json.dumps({"test_accuracy": 0.9, "target": "test_accuracy >= 0.8"}))
    met, why = committed_result("imdb_gru")
    assert not met and "test_accuracy >= 0.8'" in why and "test_accuracy >= 0.88" in why
    summary.write_text(json.dumps({"test_loss": 0.2}))
    met, why = committed_result("imdb_gru")
    assert not met and "'test_accuracy'" in why
    summary.write_text(json.dumps({"test_accuracy": 0.8801}))
    assert committed_result("imdb_gru")[0]
