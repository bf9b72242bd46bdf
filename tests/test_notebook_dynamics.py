"""The dynamics notebook: committed with the outputs of a clean full-size run, and it still runs
top to bottom at small sizes (generated reviews). Its printed checks compare the library's
results with closed forms and with the cell itself; the tests read them from the outputs."""

import math
import re

import notebook_run as nbrun
import pytest

NAME = "03_dynamics.ipynb"
NUMBER = r"([-+0-9.eE]+|nan|inf)"


def _numbers(pattern: str, text: str) -> list[float]:
    found = [float(m) for m in re.findall(pattern, text)]
    assert found, f"{NAME}: no output line matches {pattern!r}"
    return found


def _assert_results(text: str) -> None:
    # ||dL/ds_T|| = 2 |y_hat - y| ||w||: the loss reads the last state only through the readout
    # (12 models, float32)
    (dev,) = _numbers(rf"closed form at t = T: max relative deviation {NUMBER}", text)
    assert dev < 1e-4, dev
    # the minGRU's Jacobian is diag(1 - z_t): the sum of all H exponents is the time average of
    # sum_i log(1 - z_t,i), exact at any T (at init and trained)
    sums = _numbers(
        rf"minGRU (?:init|trained)\s*: sum of exponents vs mean log\(1 - z\): max relative "
        rf"deviation {NUMBER}",
        text,
    )
    assert len(sums) == 2 and max(sums) < 1e-4, sums
    # the LRU's exponents are log|λ| twice each: their sum, within a 1/T term (its output block
    # enters the first steps)
    found = re.findall(
        rf"LRU\s+(?:init|trained)\s*: sum of exponents vs 2 Σ log\|λ\|: max relative deviation "
        rf"{NUMBER} \(T = (\d+)\)",
        text,
    )
    assert len(found) == 2, found
    for dev, T in found:
        assert float(dev) < 10 / int(T), (dev, T)
    # the analysis reads the trained classifier: its logits from the visited states are the
    # model's own
    (logit_dev,) = _numbers(rf"logits equal the model's to {NUMBER}", text)
    assert logit_dev < 1e-4, logit_dev
    # the kept points are fixed or slow (q < 1e-6): one step of the cell itself moves each by
    # less than sqrt(2e-6)
    (moved,) = _numbers(rf"moves it by at most {NUMBER}", text)
    assert moved < math.sqrt(2e-6), moved
    (share,) = _numbers(rf"fixed points' variance on PC1 {NUMBER}", text)
    assert 0.0 <= share <= 1.0


def test_notebook_is_committed_with_outputs_of_a_clean_run():
    nb = nbrun.read(NAME)
    nbrun.assert_clean_run(nb, NAME)
    text = nbrun.output_text(nb)
    assert "full size" in text and "| small" not in text, "committed outputs must be full size"
    _assert_results(text)
    assert nbrun.has_image(nb)


@pytest.mark.slow  # trains six adding models and an IMDB GRU: about three minutes on 2 cores
def test_notebook_executes(monkeypatch):
    nb = nbrun.execute(NAME, monkeypatch)
    text = nbrun.output_text(nb)
    assert "| small" in text
    _assert_results(text)
