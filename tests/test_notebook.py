"""The teaching notebook: committed with the outputs of a clean run, and it still runs top to
bottom (on small generated data)."""

import notebook_run as nbrun
import pytest

NAME = "01_rnn_from_scratch.ipynb"
SEED_ANSWER = "input (250, 32) -> output (100,)"


def test_notebook_is_committed_with_outputs_of_a_clean_run():
    nb = nbrun.read(NAME)
    nbrun.assert_clean_run(nb, NAME)
    assert SEED_ANSWER in nbrun.output_text(nb)
    assert nbrun.has_image(nb)  # the training curves


@pytest.mark.slow  # runs the whole notebook in a kernel
def test_notebook_executes(monkeypatch):
    nb = nbrun.execute(NAME, monkeypatch)
    assert SEED_ANSWER in nbrun.output_text(nb)
