"""The parallel-in-time notebook: committed with the outputs of a clean run, and it still runs
top to bottom (small sizes)."""

import notebook_run as nbrun
import pytest

NAME = "02_parallel_in_time.ipynb"


def _assert_results(texts: str) -> None:
    # the Newton iterations by hand reach the sequential trajectory, and parallel.rnn converges
    assert "newton:" in texts and "quasi:" in texts
    for method in ("newton", "quasi", "elk"):
        assert f"{method:10s} iterations" in texts
    # the expanding RNN: Newton overflows, ELK converges, the fallback gives the scan's result
    assert "newton     iterations    1  converged False  finite False" in texts
    assert "elk        iterations" in texts and "fell back True" in texts


def test_notebook_is_committed_with_outputs_of_a_clean_run():
    nb = nbrun.read(NAME)
    nbrun.assert_clean_run(nb, NAME)
    _assert_results(nbrun.output_text(nb))
    assert nbrun.has_image(nb)


@pytest.mark.slow  # a minute and a half of compiling: past the default suite's budget
def test_notebook_executes(monkeypatch):
    nb = nbrun.execute(NAME, monkeypatch)
    _assert_results(nbrun.output_text(nb))
