"""The documentation: the site builds with warnings as errors, and its code blocks run as shown.

A ```python block runs unless it has a title (``title="Signature"`` in docs/, shown as such) or,
in README.md, its first line is ``# signature``. The blocks of a page run in order in one
namespace, in a fresh process (the user's defaults: float32, no test settings).
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]
FENCE = re.compile(r"^( *)```python([^\n]*)\n(.*?)^\1```", re.S | re.M)
IMPORT = re.compile(r"^\s*(?:from|import) +([A-Za-z_]\w*)", re.M)
PAGES = [
    "README.md",
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")),
]


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
        if "title=" in info or code.lstrip().startswith("# signature"):
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


# README's blocks run in the default suite; the guide's (a few minutes of compiling) are slow.
@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=() if p == "README.md" else pytest.mark.slow) for p in PAGES],
)
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
