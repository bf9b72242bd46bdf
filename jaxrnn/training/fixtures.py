"""Small generated data in the real formats, for tests, demos and the notebook.

:func:`write_fake_imdb` writes reviews in the official ``aclImdb/{train,test}/{pos,neg}/
<id>_<rating>.txt`` layout (as a ``.tar.gz`` or a directory). Each review is filler words
with a few sentiment words, so a model can learn the labels; markup (``<br />``), capitals and
punctuation exercise the tokenizer. The counts it holds are declared in
``aclImdb/jaxrnn-counts.json``, so the loader checks them (a copy cut short fails) instead of
the official 12,500 per class.

Examples:
    >>> import tempfile, pathlib
    >>> from jaxrnn.training.data import read_imdb
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> path = write_fake_imdb(d / "imdb.tar.gz", per_class=3)
    >>> raw = read_imdb(path)
    >>> len(raw["train"]), len(raw["test"]), [label for label, _ in raw["train"]]
    (6, 6, [0, 0, 0, 1, 1, 1])
"""

from __future__ import annotations

import io
import json
import pathlib
import tarfile

import numpy as np

FILLER = (
    "the movie film plot actor scene story it was this and a of to in with that "
    "director camera music ending character time people watch"
).split()
POSITIVE = "great excellent wonderful loved brilliant superb enjoyable".split()
NEGATIVE = "awful boring terrible hated dull waste poor".split()


def fake_review(
    rng: np.random.Generator, positive: bool, min_len: int = 20, max_len: int = 80
) -> str:
    n = int(rng.integers(min_len, max_len + 1))
    words = list(rng.choice(FILLER, n))
    cue = POSITIVE if positive else NEGATIVE
    for _ in range(3):  # three sentiment words, the last near the end
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(cue)))
    words.insert(len(words) - int(rng.integers(0, 5)), str(rng.choice(cue)))
    text = " ".join(words)
    return text[0].upper() + text[1:].replace(" scene ", " scene.<br /><br />") + "!"


def write_fake_imdb(
    path: str | pathlib.Path, per_class: int = 50, seed: int = 0, as_directory: bool = False
) -> pathlib.Path:
    """Writes ``per_class`` reviews per (split, label) in the official layout.

    Args:
        path: the ``.tar.gz`` to write, or (``as_directory=True``) the directory that will
            contain ``aclImdb/``.
        per_class: reviews in each of ``train/pos``, ``train/neg``, ``test/pos``, ``test/neg``.
        seed: the reviews are a function of the seed.

    Returns:
        ``path`` (for a directory: ``path / "aclImdb"``).
    """
    rng = np.random.default_rng(seed)
    path = pathlib.Path(path)
    counts = {s: {c: per_class for c in ("neg", "pos")} for s in ("train", "test")}
    files = {"aclImdb/jaxrnn-counts.json": json.dumps(counts)}  # first: a cut copy keeps it
    for split in ("train", "test"):
        for label in ("neg", "pos"):
            for i in range(per_class):
                rating = int(rng.integers(7, 11)) if label == "pos" else int(rng.integers(1, 5))
                files[f"aclImdb/{split}/{label}/{i}_{rating}.txt"] = fake_review(
                    rng, label == "pos"
                )
    if as_directory:
        for name, text in files.items():
            f = path / name
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
        return path / "aclImdb"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            blob = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path
