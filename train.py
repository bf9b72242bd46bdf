"""Train a jaxrnn model: ``python train.py --config configs/imdb_simple_rnn.yaml``.

Thin entry point; the logic lives in :mod:`jaxrnn.training` (also installed as ``jaxrnn-train``).
On Linux the process first restarts itself with glibc malloc tunables that keep XLA's per-step
host buffers mapped (:mod:`jaxrnn.training.host`); ``JAXRNN_HOST_TUNABLES=0`` skips it.
"""

if __name__ == "__main__":
    from jaxrnn.training.cli import run

    run()  # the restart, then the CLI (the same entry point as ``jaxrnn-train``)
