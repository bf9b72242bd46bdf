"""The documentation: the site builds with warnings as errors, its code blocks run as shown, and
its measured figures are those of the committed run files.

A ```python block of README.md or docs/ runs unless its info string has a title
(```` ```python title="Signature" ````, or another title for pseudo-code): a titled block is
shown, not run (docs/development.md states this). The blocks of a page run in order in one
namespace, in a fresh process (the user's defaults: float32, no test settings).
"""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).parents[1]
FENCE = re.compile(r"^( *)```python([^\n]*)\n(.*?)^\1```", re.S | re.M)
IMPORT = re.compile(r"^\s*(?:from|import) +([A-Za-z_]\w*)", re.M)


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "NO_MKDOCS_2_WARNING": "1", "KERAS_BACKEND": "jax"}


def code_blocks(page: str) -> list[tuple[int, str]]:
    """``(line, code)`` of each block of ``page`` that runs."""
    text = (ROOT / page).read_text(encoding="utf-8")
    blocks = []
    for m in FENCE.finditer(text):
        indent, info, body = m.groups()
        code = "\n".join(line[len(indent) :] for line in body.split("\n"))
        if "title=" in info:
            continue
        blocks.append((text.count("\n", 0, m.start()) + 2, code))
    return blocks


def test_site_builds_strict(tmp_path):
    needed = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(
            f"the docs extra is not installed (no {', '.join(missing)}): pip install -e '.[docs]'"
        )
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (site / "api" / "rnn" / "index.html").is_file()
    assert (site / "benchmarks" / "RESULTS" / "index.html").is_file()


PAGES = [
    page
    for page in [
        "README.md",
        *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")),
    ]
    if code_blocks(page)
]


# Slow: compiling the pages' models takes minutes (README's alone about a minute on 2 cores).
@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_code_blocks_run(page, tmp_path):
    blocks = code_blocks(page)
    modules = {m for _, code in blocks for m in IMPORT.findall(code)}
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    if missing:
        pytest.skip(f"{page} needs {', '.join(missing)} (pip install -e '.[parity]')")
    script = tmp_path / "blocks.py"
    # each block compiled at its own lines of the page, so a traceback points into the page
    runs = [
        f"exec(compile({chr(10) * (line - 1) + code!r}, {page!r}, 'exec'))" for line, code in blocks
    ]
    script.write_text("\n".join(runs))
    r = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=_env(), capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


RUN = ROOT / "docs" / "measured" / "imdb_simple_rnn"  # the main job's committed run
# how the pages state the run's figures: accuracy to 3 places, wall time in whole seconds
STATED = re.compile(r"reached test accuracy \*\*(0\.\d+)\*\* in \*\*(\d+) s\*\* of wall time")


def test_readme_figures_are_those_of_the_committed_run():
    summary = json.loads((RUN / "summary.json").read_text())
    machine = json.loads((RUN / "machine.json").read_text())
    records = [json.loads(line) for line in (RUN / "metrics.jsonl").read_text().splitlines()]
    final_test = [r for r in records if r["split"] == "test"][-1]
    # the summary is the run's own last evaluation, after all 5 epochs
    assert final_test["accuracy"] == pytest.approx(summary["test_accuracy"])
    epochs = yaml.safe_load((RUN / "config.yaml").read_text())["train"]["epochs"]
    assert final_test["epoch"] == pytest.approx(epochs)
    stated = (f"{summary['test_accuracy']:.3f}", f"{machine['wall_seconds']:.0f}")
    for page in ("README.md", "docs/installation.md", "docs/training.md"):
        text = " ".join((ROOT / page).read_text(encoding="utf-8").split())  # line breaks: spaces
        assert STATED.findall(text) == [stated], f"{page} states {STATED.findall(text)}"
        assert f"trains {epochs:g} epochs" in text, page
        for fact in (machine["cpu"], machine["jax"], machine["date"]):
            assert fact in text, f"{page} does not name the run's {fact!r}"
