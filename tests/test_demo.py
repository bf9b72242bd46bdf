"""The README's demo trains: the seed model's loss falls on generated data."""

from jaxrnn import demo


def test_demo_loss_falls(capsys):
    final = demo.main(["--steps", "200", "--maxlen", "30", "--seed", "0"])
    out = capsys.readouterr().out
    first = float(out.split("loss ")[1].split()[0])  # the loss printed at step 1
    assert first > 0.6  # chance level for balanced labels is ln 2 = 0.693
    assert final < 0.5 * first, out
