"""Data sets for training: IMDB reviews, tiny-shakespeare, the adding problem.

Every data set here answers two questions, deterministically::

    ds.train_batch(step, batch_size)  -> dict of NumPy arrays   # the batch of global step `step`
    ds.eval_batches(batch_size)       -> iterator of dicts       # the whole test split, padded

The batch of a step depends only on ``(seed, step)``: the example order of epoch ``e`` is a
permutation drawn from ``numpy.random.default_rng([seed, e])`` (generated data: the batch is
drawn from ``default_rng([seed, step])``). So a run resumed at step ``k`` sees the very batches
an uninterrupted run sees. Evaluation batches carry a ``mask [B]`` (1 = real example) so the
last, partial batch keeps the compiled shape.

IMDB tokenizer (like Keras's IMDB preprocessing): lower-case, ``<br />`` removed, Keras's
``Tokenizer`` punctuation filter, split on white space; the ``num_words - 2`` most frequent
training words (ties: first seen first, files in sorted order) get ids ``2 .. num_words - 1``
by rank; **0 is padding and 1 is unknown**. Unlike ``keras.datasets.imdb.load_data`` there is
no start token and no ``index_from=3`` offset, so the vocabulary has exactly ``num_words`` rows
and every id but 0/1 is a word. Pre-padding and pre-truncating to ``maxlen`` by default. The
tokenized arrays are cached in ``cache_dir`` as ``.npz`` keyed by a hash of the source's content
and the settings.

IMDB checks (each failure a :class:`DataError` naming the file and what to do): the reviews per
split and class are counted and printed, and each class must hold at least 90 % of the official
12,500 (:data:`IMDB_PER_CLASS`; a data set of one's own declares its counts in
``aclImdb/jaxrnn-counts.json``, :func:`imdb_counts_manifest`) unless ``allow_incomplete=True``;
an archive under a known name (``aclImdb_v1.tar.gz``, the official one) must have its sha256;
invalid UTF-8 is counted and reported (files and bytes replaced by U+FFFD).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import sys
import tarfile
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np


class DataError(ValueError):
    """A data set that is missing, incomplete, corrupt or cached wrongly; the message names the
    file and what to do."""


IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_SHA256 = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"
SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# Archives known by name, checked by sha256 whenever a file has that name: the official one and
# the copy of its labeled part kept for machines without internet (ids 0-9 of each folder left
# out: 12,490 reviews per class).
KNOWN_IMDB = {
    "aclImdb_v1.tar.gz": IMDB_SHA256,
    "aclImdb_labeled.tar.gz": "ebb8f7209c1856441f3601ace092842ae9aa862b4dc752c159e98e2c0ce85e09",
}
IMDB_PER_CLASS = 12_500  # reviews per split and class in the official data set
MIN_FRACTION = 0.9  # fewer than this share of the expected reviews: cut short, not a sample
COUNTS_MANIFEST = "jaxrnn-counts.json"  # in aclImdb/: a data set's own counts per split, class

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Copies provided next to checkouts on machines without internet (../shared/data/...).
LOCAL_IMDB = ("aclImdb_labeled.tar.gz", "aclImdb_v1.tar.gz")
LOCAL_SHAKESPEARE = ("tinyshakespeare.txt", "input.txt")

PAD, UNK = 0, 1
TOKENIZER_VERSION = 1
CACHE_VERSION = 2  # 2: the source's counts and invalid UTF-8 stored beside the arrays
_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'  # Keras Tokenizer's default filters
_TABLE = str.maketrans({c: " " for c in _FILTERS})
_IMDB_NAME = re.compile(r"(?:^|/)aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")


# --- files -----------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, sha256: str, cache_dir: str | os.PathLike) -> pathlib.Path:
    """Downloads ``url`` into ``cache_dir`` (once) and checks its sha256.

    Returns:
        The path of the verified file.

    Raises:
        DataError: the downloaded file's checksum differs (the file is removed).
    """
    cache = pathlib.Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / url.rsplit("/", 1)[-1]
    if not dest.exists():
        tmp = dest.with_suffix(dest.suffix + ".part")
        print(f"downloading {url} -> {dest}", file=sys.stderr)
        urllib.request.urlretrieve(url, tmp)
        os.replace(tmp, dest)
    got = sha256_file(dest)
    if got != sha256:
        dest.unlink()
        raise DataError(
            f"{dest}: sha256 {got} differs from the expected {sha256} (a partial or altered "
            f"download); removed it, download it again"
        )
    return dest


def _find(
    path: str | None, local_names: tuple[str, ...], cache_dir: str, what: str, url: str, sha256: str
) -> pathlib.Path:
    """Resolves a data file: the configured path, else a local shared copy, else the cache."""
    if path is not None:
        p = pathlib.Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(
                f"{what} not found at data.path={path!r}. Get it from {url} "
                f"(sha256 {sha256}) and pass --set data.path=/path/to/it"
            )
        return p
    candidates = []
    for base in (pathlib.Path.cwd(), REPO_ROOT):
        candidates += [base.parent / "shared" / "data" / n for n in local_names]
    candidates.append(pathlib.Path(cache_dir).expanduser() / url.rsplit("/", 1)[-1])
    for c in candidates:
        if c.exists():
            return c
    raise FileNotFoundError(
        f"{what} not found (looked in {', '.join(str(c) for c in candidates)}). "
        f"Download it with `python -m jaxrnn.training.data {what.split()[0].lower()}` "
        f"(fetches {url} into {cache_dir} and checks sha256 {sha256}), or pass "
        f"--set data.path=/path/to/it"
    )


# --- IMDB ------------------------------------------------------------------------------------


def text_to_words(text: str) -> list[str]:
    """Keras-style word split: lower-case, ``<br />`` removed, punctuation to spaces.

    >>> text_to_words("A <br />great movie,<br /><br />really!  Don't miss")
    ['a', 'great', 'movie', 'really', "don't", 'miss']
    """
    text = text.lower().replace("<br />", " ").replace("<br/>", " ").replace("<br>", " ")
    return text.translate(_TABLE).split()


def _decode(blob: bytes) -> tuple[str, int]:
    """``blob`` as UTF-8 with each invalid sequence replaced by U+FFFD, and how many of its
    bytes were invalid."""
    try:
        return blob.decode("utf-8"), 0
    except UnicodeDecodeError:
        bad = sum(0xDC80 <= ord(c) <= 0xDCFF for c in blob.decode("utf-8", "surrogateescape"))
        return blob.decode("utf-8", errors="replace"), bad


def read_imdb(
    path: str | os.PathLike, stats: dict[str, Any] | None = None
) -> dict[str, list[tuple[int, str]]]:
    """Reads ``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt`` from a .tar.gz or a directory.

    Args:
        path: the archive, or a directory holding ``aclImdb/`` (or ``aclImdb`` itself).
        stats: filled (when given) with ``invalid_utf8_files`` (names of files with invalid
            UTF-8), ``invalid_utf8_bytes`` (their bytes replaced by U+FFFD, in all) and
            ``manifest`` (the data set's own counts, :func:`imdb_counts_manifest`, or ``None``).

    Returns:
        ``{"train": [(label, text), ...], "test": [...]}`` with label 1 = pos, 0 = neg, in
        sorted (label, id) order.

    Raises:
        DataError: not a readable archive, or no review of a split in the expected layout.
    """
    path = pathlib.Path(path)
    found: dict[str, list[tuple[int, int, str]]] = {"train": [], "test": []}
    stats = {} if stats is None else stats
    stats.update(invalid_utf8_files=[], invalid_utf8_bytes=0, manifest=None)

    def add(name: str, read) -> None:
        if name.endswith(f"aclImdb/{COUNTS_MANIFEST}"):
            stats["manifest"] = imdb_counts_manifest(read(), f"{path}: {name}")
            return
        m = _IMDB_NAME.search(name)
        if m:
            split, label, idx = m.group(1), int(m.group(2) == "pos"), int(m.group(3))
            text, bad = _decode(read())
            if bad:
                stats["invalid_utf8_files"].append(name)
                stats["invalid_utf8_bytes"] += bad
            found[split].append((label, idx, text))

    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                add(f.relative_to(path.parent).as_posix(), f.read_bytes)
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if member.isfile():
                        add(member.name, tar.extractfile(member).read)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DataError(
                f"{path}: not a readable tar archive ({e}); download it again or pass "
                f"--set data.path=/path/to/a/complete/copy"
            ) from None
    for split in found:
        if not found[split]:
            raise DataError(
                f"{path}: no reviews under aclImdb/{split}/{{pos,neg}}/<id>_<rating>.txt"
            )
    return {
        s: [(lab, txt) for lab, _, txt in sorted(v, key=lambda r: r[:2])] for s, v in found.items()
    }


def imdb_counts_manifest(blob: bytes, where: str) -> dict[str, dict[str, int]]:
    """The counts a data set in the aclImdb layout declares in ``aclImdb/jaxrnn-counts.json``,
    ``{"train": {"neg": n, "pos": n}, "test": {...}}``, checked instead of the official
    12,500 per class (a data set of one's own, or a test's fixture; a copy cut short still has
    fewer reviews than it declares)."""
    try:
        counts = json.loads(blob)
        ok = isinstance(counts, dict) and all(
            isinstance(counts[s][c], int) and counts[s][c] >= 0
            for s in ("train", "test")
            for c in ("neg", "pos")
        )
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise DataError(
            f'{where}: expected JSON {{"train": {{"neg": n, "pos": n}}, "test": '
            f"{{...}}}} with counts >= 0; got {blob[:200]!r}"
        )
    return {s: {c: counts[s][c] for c in ("neg", "pos")} for s in ("train", "test")}


def imdb_counts(raw: dict[str, list[tuple[int, str]]]) -> dict[str, dict[str, int]]:
    """Reviews per split and class of :func:`read_imdb`'s result."""
    return {
        s: {"neg": sum(lab == 0 for lab, _ in rows), "pos": sum(lab == 1 for lab, _ in rows)}
        for s, rows in raw.items()
    }


def check_imdb_counts(
    counts: dict[str, dict[str, int]],
    path: str | os.PathLike,
    manifest: dict[str, dict[str, int]] | None = None,
    allow_incomplete: bool = False,
) -> list[str]:
    """The problems with ``counts`` (``{split: {"neg": n, "pos": n}}``): a class with fewer
    than 90 % of its expected reviews (``manifest``'s count, else the official 12,500), or
    a different count than ``manifest`` declares. ``[]``: none.

    Raises:
        DataError: there are problems and ``allow_incomplete`` is not set (the message names
            ``path``, each split and class with its count and the expected one, and what to do).
    """
    problems = []
    for split in ("train", "test"):
        for label in ("neg", "pos"):
            n = counts.get(split, {}).get(label, 0)
            want = IMDB_PER_CLASS if manifest is None else manifest[split][label]
            if n < MIN_FRACTION * want or (manifest is not None and n != want):
                need = "" if manifest is not None else f", at least {MIN_FRACTION:.0%} of it"
                problems.append(f"{split}/{label} has {n:,} reviews, expected {want:,}{need}")
    if problems and not allow_incomplete:
        raise DataError(
            f"{path}: incomplete IMDB data ({'; '.join(problems)}): an archive cut short or a "
            f"folder partly extracted. Use a complete copy ({IMDB_URL}, sha256 {IMDB_SHA256}) "
            f"or pass allow_incomplete=True to train on it anyway"
        )
    return problems


def _format_counts(counts: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{s} {c['neg']:,} neg / {c['pos']:,} pos" for s, c in counts.items())


def build_vocab(texts: list[list[str]], num_words: int) -> list[str]:
    """The ``num_words - 2`` most frequent words; ``vocab[i]`` has id ``i + 2``."""
    counts = collections.Counter()
    for words in texts:
        counts.update(words)
    return [w for w, _ in counts.most_common(num_words - 2)]


def pad_sequences(
    seqs: list[list[int]], maxlen: int, padding: str = "pre", truncating: str = "pre"
) -> tuple[np.ndarray, np.ndarray]:
    """Keras ``pad_sequences``: ``[N, maxlen]`` int32 with 0 padding, and lengths ``[N]``.

    >>> x, n = pad_sequences([[5, 6, 7], [8]], maxlen=2)
    >>> x.tolist(), n.tolist()
    ([[6, 7], [0, 8]], [2, 1])
    >>> pad_sequences([[5, 6, 7], [8]], maxlen=2, padding="post", truncating="post")[0].tolist()
    [[5, 6], [8, 0]]
    """
    out = np.zeros((len(seqs), maxlen), np.int32)
    lengths = np.zeros((len(seqs),), np.int32)
    for i, s in enumerate(seqs):
        s = s[-maxlen:] if truncating == "pre" else s[:maxlen]
        lengths[i] = len(s)
        if s:
            if padding == "pre":
                out[i, maxlen - len(s) :] = s
            else:
                out[i, : len(s)] = s
    return out, lengths


def _fingerprint(path: pathlib.Path) -> str:
    """The source's content as a hash: an archive's sha256; for a directory, its files' names,
    sizes and modification times (a file added, removed or rewritten changes it)."""
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    digest = sha256_file(path)
    known = KNOWN_IMDB.get(path.name)
    if known is not None and digest != known:
        raise DataError(
            f"{path}: sha256 {digest} is not the {known} of {path.name} (a partial or altered "
            f"copy). Download it again ({IMDB_URL}), or, if it is a data set of your own, give "
            f"it another file name"
        )
    return digest


_CACHE_KEYS = ("vocab", "x_train", "y_train", "len_train", "x_test", "y_test", "len_test")


def _read_cache(cache: pathlib.Path) -> dict[str, np.ndarray] | None:
    """The arrays of a tokenized cache file, or ``None`` (with a warning, the file removed)
    where it cannot be read: the cache is a function of the source and the settings, so it is
    rebuilt rather than making the user delete it by hand.

    Raises:
        DataError: it is unreadable and cannot be removed.
    """
    try:
        with open(cache, "rb") as f, np.load(f) as z:  # f: closed even where np.load raises
            out = {k: z[k] for k in z.files}
        missing = [k for k in (*_CACHE_KEYS, "counts") if k not in out]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        return out
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
        why = f"{type(e).__name__}: {e}"
    try:
        cache.unlink()
    except OSError as e:
        raise DataError(
            f"{cache}: a corrupt tokenized cache ({why}) that cannot be removed ({e}); delete "
            f"it by hand"
        ) from None
    warnings.warn(
        f"{cache}: a corrupt tokenized cache ({why}); removed it, tokenizing again", stacklevel=3
    )
    return None


def _subset(rows: list[tuple[int, str]], limit: int) -> list[tuple[int, str]]:
    """Balanced, deterministic subset of ``limit`` reviews (all when ``limit <= 0``)."""
    if limit <= 0 or limit >= len(rows):
        return rows
    idx = np.random.default_rng(0).permutation(len(rows))[:limit]
    return [rows[i] for i in sorted(idx)]


def load_imdb(
    cfg: Any, *, verbose: bool = True, allow_incomplete: bool = False
) -> dict[str, np.ndarray]:
    """Tokenized IMDB per the ``data`` config (``ImdbData``), from the cache when possible.

    The source's reviews per split and class are checked (:func:`check_imdb_counts`) and
    printed (``verbose``), on every load; a known archive's sha256 too.

    Args:
        cfg: the ``data`` config (a ``cfg.allow_incomplete`` that is true counts as the
            argument).
        verbose: print the counts and what is tokenized to stderr.
        allow_incomplete: train on a data set with fewer reviews than expected, or a class
            missing (a warning instead of :class:`DataError`).

    Returns:
        ``x_train [N, maxlen]`` int32, ``y_train [N]`` int32, ``len_train [N]`` int32, the same
        for ``test``, ``vocab`` (``[num_words - 2]`` words; ``vocab[i]`` has id ``i + 2``),
        ``counts [2, 2]`` the source's reviews (rows train, test; columns neg, pos) and
        ``invalid_utf8 [2]`` (files with invalid UTF-8, bytes replaced).

    Raises:
        DataError: incomplete data, a known archive with another sha256, an unreadable archive.
    """
    allow_incomplete = allow_incomplete or bool(getattr(cfg, "allow_incomplete", False))
    path = _find(cfg.path, LOCAL_IMDB, cfg.cache_dir, "IMDB archive", IMDB_URL, IMDB_SHA256)
    settings = dict(
        num_words=cfg.num_words,
        maxlen=cfg.maxlen,
        padding=cfg.padding,
        truncating=cfg.truncating,
        limit=cfg.limit,
        tokenizer=TOKENIZER_VERSION,
        cache=CACHE_VERSION,
    )
    key = hashlib.sha256(
        (_fingerprint(path) + json.dumps(settings, sort_keys=True)).encode()
    ).hexdigest()[:16]
    cache = pathlib.Path(cfg.cache_dir).expanduser() / f"imdb-{key}.npz"
    out = _read_cache(cache) if cache.exists() else None
    if out is not None:
        counts = {
            s: {"neg": int(out["counts"][i, 0]), "pos": int(out["counts"][i, 1])}
            for i, s in enumerate(("train", "test"))
        }
        manifest = None
        if "manifest" in out:
            manifest = {s: dict(zip(("neg", "pos"), map(int, out["manifest"][i]), strict=True)) for i, s in enumerate(("train", "test"))}  # fmt: skip
        _report_imdb(path, counts, manifest, allow_incomplete, verbose)
        return out
    if verbose:
        print(f"tokenizing {path} (cached afterwards in {cache})", file=sys.stderr)
    stats: dict[str, Any] = {}
    raw = read_imdb(path, stats)
    counts = imdb_counts(raw)
    _report_imdb(path, counts, stats["manifest"], allow_incomplete, verbose)
    n_bad = len(stats["invalid_utf8_files"])
    if n_bad:
        shown = ", ".join(stats["invalid_utf8_files"][:3]) + (", ..." if n_bad > 3 else "")
        warnings.warn(
            f"{path}: {n_bad} review file(s) are not valid UTF-8 ({shown}); their "
            f"{stats['invalid_utf8_bytes']} invalid byte(s) were read as U+FFFD",
            stacklevel=2,
        )
    raw = {s: _subset(rows, cfg.limit) for s, rows in raw.items()}
    words = {s: [text_to_words(t) for _, t in rows] for s, rows in raw.items()}
    vocab = build_vocab(words["train"], cfg.num_words)
    index = {w: i + 2 for i, w in enumerate(vocab)}
    out: dict[str, np.ndarray] = {
        "vocab": np.array(vocab, dtype=str),
        "counts": np.array([[counts[s]["neg"], counts[s]["pos"]] for s in ("train", "test")]),
        "invalid_utf8": np.array([n_bad, stats["invalid_utf8_bytes"]]),
    }
    if stats["manifest"] is not None:
        m = stats["manifest"]
        out["manifest"] = np.array([[m[s]["neg"], m[s]["pos"]] for s in ("train", "test")])
    for s in ("train", "test"):
        ids = [[index.get(w, UNK) for w in ws] for ws in words[s]]
        out[f"x_{s}"], out[f"len_{s}"] = pad_sequences(ids, cfg.maxlen, cfg.padding, cfg.truncating)
        out[f"y_{s}"] = np.array([lab for lab, _ in raw[s]], np.int32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + f".{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **out)
    os.replace(tmp, cache)  # atomic: a concurrent reader never sees half a file
    return out


def _report_imdb(path, counts, manifest, allow_incomplete: bool, verbose: bool) -> None:
    """Prints the counts (``verbose``) and checks them: a :class:`DataError`, or with
    ``allow_incomplete`` a warning, where they fall short."""
    if verbose:
        print(f"IMDB {path}: {_format_counts(counts)}", file=sys.stderr)
    problems = check_imdb_counts(counts, path, manifest, allow_incomplete)
    if problems:
        warnings.warn(
            f"{path}: incomplete IMDB data, used anyway (allow_incomplete): {'; '.join(problems)}",
            stacklevel=3,
        )


# --- batching --------------------------------------------------------------------------------


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of ``epoch``: a function of ``(seed, epoch)`` only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _eval_batches(arrays: dict[str, np.ndarray], batch_size: int) -> Iterator[dict]:
    """Consecutive batches of ``arrays`` (all ``[N, ...]``), the last padded, with ``mask``."""
    n = len(next(iter(arrays.values())))
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch = {}
        for k, a in arrays.items():
            b = a[start:stop]
            if stop - start < batch_size:
                b = np.concatenate([b, np.zeros((batch_size - len(b),) + a.shape[1:], a.dtype)])
            batch[k] = b
        mask = np.zeros((batch_size,), np.float32)
        mask[: stop - start] = 1.0
        batch["mask"] = mask
        yield batch


@dataclasses.dataclass
class ArrayDataset:
    """A finite training set shuffled per epoch, and a fixed test set."""

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    seed: int
    batch_size: int
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.num_train = len(next(iter(self.train.values())))
        self.num_test = len(next(iter(self.test.values())))
        self.steps_per_epoch = self.num_train // self.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"train.batch_size={self.batch_size} exceeds the {self.num_train} training examples"
            )
        self._perm: tuple[int, np.ndarray] | None = None

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.seed, epoch, self.num_train))
        idx = self._perm[1][i * self.batch_size : (i + 1) * self.batch_size]
        return {k: v[idx] for k, v in self.train.items()}

    def eval_batches(self, batch_size: int) -> Iterator[dict]:
        return _eval_batches(self.test, batch_size)


def imdb_dataset(cfg: Any, seed: int, batch_size: int) -> ArrayDataset:
    d = load_imdb(cfg)
    split = lambda s: {"tokens": d[f"x_{s}"], "labels": d[f"y_{s}"], "lengths": d[f"len_{s}"]}  # noqa: E731
    return ArrayDataset(split("train"), split("test"), seed, batch_size, info={"vocab": d["vocab"]})


# --- tiny-shakespeare ------------------------------------------------------------------------


@dataclasses.dataclass
class CharDataset:
    """Character LM data: ``tokens [B, seq_len + 1]`` windows; ids index ``chars``.

    The text's first ``1 - val_fraction`` is the training split, the rest validation.
    Training epoch ``e`` cuts the training text into consecutive windows starting at a random
    offset in ``[0, seq_len)`` (from ``(seed, e)``) and visits them in a random order.
    """

    text: str
    seq_len: int
    val_fraction: float
    seed: int
    batch_size: int

    def __post_init__(self):
        self.chars = sorted(set(self.text))
        lut = {c: i for i, c in enumerate(self.chars)}
        ids = np.array([lut[c] for c in self.text], np.int32)
        n_train = int(len(ids) * (1.0 - self.val_fraction))
        self.train_ids, self.val_ids = ids[:n_train], ids[n_train:]
        L = self.seq_len
        self.num_windows = (len(self.train_ids) - L) // L  # same count for every offset < L
        self.steps_per_epoch = self.num_windows // self.batch_size
        if self.steps_per_epoch < 1 or len(self.val_ids) <= L:
            raise ValueError(
                f"text of {len(ids)} characters is too short for seq_len={L}, "
                f"batch_size={self.batch_size}, val_fraction={self.val_fraction}"
            )
        self.info = {"chars": self.chars}
        self._epoch: tuple[int, int, np.ndarray] | None = None

    def encode(self, s: str) -> np.ndarray:
        lut = {c: i for i, c in enumerate(self.chars)}
        return np.array([lut[c] for c in s if c in lut], np.int32)

    def decode(self, ids: Any) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(step, self.steps_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(self.seq_len))
            self._epoch = (epoch, offset, rng.permutation(self.num_windows))
        _, offset, perm = self._epoch
        starts = offset + perm[i * self.batch_size : (i + 1) * self.batch_size] * self.seq_len
        idx = starts[:, None] + np.arange(self.seq_len + 1)  # [B, L + 1]
        return {"tokens": self.train_ids[idx]}

    def eval_batches(self, batch_size: int) -> Iterator[dict]:
        """The validation text as ``batch_size`` contiguous streams, in one batch.

        Row ``i`` is ``val[i * n : (i + 1) * n + 1]`` with ``n = (len(val) - 1) // batch_size``,
        so every character but the first of each stream is predicted exactly once, with the
        state carried through the whole stream (as an RNN LM is evaluated on a text), not reset
        every ``seq_len`` characters.
        """
        n = (len(self.val_ids) - 1) // batch_size
        if n < 1:
            raise ValueError(
                f"validation split of {len(self.val_ids)} characters is too short "
                f"for eval_batch_size={batch_size} streams"
            )
        idx = np.arange(batch_size)[:, None] * n + np.arange(n + 1)  # [S, n + 1]
        return iter([{"tokens": self.val_ids[idx], "mask": np.ones((batch_size,), np.float32)}])


def shakespeare_dataset(cfg: Any, seed: int, batch_size: int) -> CharDataset:
    path = _find(
        cfg.path,
        LOCAL_SHAKESPEARE,
        "~/.cache/jaxrnn",
        "Shakespeare text",
        SHAKESPEARE_URL,
        SHAKESPEARE_SHA256,
    )
    return CharDataset(
        path.read_text(encoding="utf-8"), cfg.seq_len, cfg.val_fraction, seed, batch_size
    )


# --- the adding problem ----------------------------------------------------------------------


def adding_problem(rng: np.random.Generator, n: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015).

    Each step carries ``(value ~ U(0, 1), marker)``; exactly two markers are 1, one in each
    half of the sequence; the target is the sum of the two marked values. Predicting the
    mean 1 scores MSE = Var(U1 + U2) = 1/6 ~ 0.167.

    Returns:
        ``xs [n, T, 2]`` float32 and ``y [n]`` float32.

    >>> xs, y = adding_problem(np.random.default_rng(0), 4, 10)
    >>> xs.shape, y.shape, xs[..., 1].sum(axis=1).tolist()
    ((4, 10, 2), (4,), [2.0, 2.0, 2.0, 2.0])
    >>> bool(np.allclose((xs[..., 0] * xs[..., 1]).sum(axis=1), y))
    True
    """
    values = rng.uniform(0.0, 1.0, (n, T)).astype(np.float32)
    half = T // 2
    first = rng.integers(0, half, n)
    second = rng.integers(half, T, n)
    markers = np.zeros((n, T), np.float32)
    markers[np.arange(n), first] = 1.0
    markers[np.arange(n), second] = 1.0
    xs = np.stack([values, markers], axis=-1)  # [n, T, 2]
    y = (values * markers).sum(axis=1).astype(np.float32)  # [n]
    return xs, y


@dataclasses.dataclass
class AddingDataset:
    """Fresh training batches every step (from ``(seed, step)``), a fixed test set."""

    T: int
    test_size: int
    test_seed: int
    seed: int
    batch_size: int

    def __post_init__(self):
        self.steps_per_epoch = 1000  # the data are infinite; an "epoch" is 1000 steps
        xs, y = adding_problem(np.random.default_rng(self.test_seed), self.test_size, self.T)
        self.test = {"xs": xs, "y": y}
        self.info = {}

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        xs, y = adding_problem(np.random.default_rng([self.seed, step]), self.batch_size, self.T)
        return {"xs": xs, "y": y}

    def eval_batches(self, batch_size: int) -> Iterator[dict]:
        return _eval_batches(self.test, batch_size)


def make_dataset(task: str, cfg: Any, seed: int, batch_size: int):
    """The data set of ``task`` (``imdb``, ``shakespeare``, ``adding``) for a ``data`` config."""
    if task == "imdb":
        return imdb_dataset(cfg, seed, batch_size)
    if task == "shakespeare":
        return shakespeare_dataset(cfg, seed, batch_size)
    if task == "adding":
        return AddingDataset(cfg.T, cfg.test_size, cfg.test_seed, seed, batch_size)
    raise ValueError(f"unknown task {task!r}")


def main(argv: list[str] | None = None) -> None:
    """``python -m jaxrnn.training.data {imdb,shakespeare} [cache_dir]``: download + verify."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("imdb", "shakespeare"):
        raise SystemExit("usage: python -m jaxrnn.training.data {imdb,shakespeare} [cache_dir]")
    cache = argv[1] if len(argv) > 1 else "~/.cache/jaxrnn"
    url, sha = (
        (IMDB_URL, IMDB_SHA256) if argv[0] == "imdb" else (SHAKESPEARE_URL, SHAKESPEARE_SHA256)
    )
    print(download(url, sha, cache))


if __name__ == "__main__":
    main()
