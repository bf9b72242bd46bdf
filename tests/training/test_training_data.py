"""Data loaders on generated fixtures: IMDB (tar.gz and directory), shakespeare, adding."""

import collections
import gzip
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
from conftest import raises_naming

from jaxrnn.training import data
from jaxrnn.training.config import from_dict
from jaxrnn.training.fixtures import write_fake_imdb

REVIEWS = {  # (split, label, file id) -> text
    ("train", "pos", 0): "Great movie!<br /><br />Great acting, GREAT fun.",
    ("train", "pos", 1): "A great film; fun, fun.",
    ("train", "neg", 0): "Bad movie.<br />Bad, bad acting... awful",
    ("train", "neg", 1): "Awful film, a waste.",
    ("test", "pos", 0): "Great fun, unseen words here",
    ("test", "neg", 0): "bad",
}


def _tar(path, reviews, manifest=True):
    """A .tar.gz of ``reviews`` (text or bytes) declaring its counts (``manifest``)."""
    with tarfile.open(path, "w:gz") as tar:
        if manifest:
            counts = {s: {c: 0 for c in ("neg", "pos")} for s in ("train", "test")}
            for split, label, _ in reviews:
                counts[split][label] += 1
            blob = json.dumps(counts).encode()
            info = tarfile.TarInfo("aclImdb/jaxrnn-counts.json")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        for (split, label, i), text in reviews.items():
            blob = text if isinstance(text, bytes) else text.encode()
            info = tarfile.TarInfo(f"aclImdb/{split}/{label}/{i}_{8 if label == 'pos' else 2}.txt")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        extra = tarfile.TarInfo("aclImdb/README")  # files outside the layout are ignored
        extra.size = 2
        tar.addfile(extra, io.BytesIO(b"hi"))
    return path


def _imdb_cfg(path, tmp_path, **kw):
    d = {"path": str(path), "cache_dir": str(tmp_path / "cache"), **kw}
    return from_dict({"task": "imdb", "data": d, "train": {"steps": 1}}).data


def _expected(num_words, maxlen, padding="pre", truncating="pre"):
    """Tokenize REVIEWS independently: a word list by hand, counting with Counter."""

    def words(text):
        text = text.lower().replace("<br />", " ")
        return "".join(c if c.isalnum() or c in "' " else " " for c in text).split()

    train = [
        (s, lab, i)
        for (s, lab, i) in sorted(REVIEWS, key=lambda k: (k[1] == "pos", k[2]))
        if s == "train"
    ]
    counts = collections.Counter()
    for k in train:
        counts.update(words(REVIEWS[k]))
    order = sorted(counts, key=lambda w: -counts[w])  # ties do not occur among the top words used
    ids = {w: r + 2 for r, w in enumerate(order[: num_words - 2])}
    out = {}
    for split in ("train", "test"):
        keys = sorted([k for k in REVIEWS if k[0] == split], key=lambda k: (k[1] == "pos", k[2]))
        seqs = [[ids.get(w, 1) for w in words(REVIEWS[k])] for k in keys]
        out[split] = (seqs, [int(k[1] == "pos") for k in keys])
    return out, counts


def test_tokenizer_matches_independent_count(tmp_path):
    path = _tar(tmp_path / "imdb.tar.gz", REVIEWS)
    got = data.load_imdb(_imdb_cfg(path, tmp_path, num_words=6, maxlen=5), verbose=False)
    expected, counts = _expected(6, 5)
    # the four most frequent training words, by count: great 4, bad 3, fun 4, ...
    top = [w for w, _ in counts.most_common(4)]
    assert list(got["vocab"]) == top
    for split in ("train", "test"):
        seqs, labels = expected[split]
        np.testing.assert_array_equal(got[f"y_{split}"], labels)
        np.testing.assert_array_equal(got[f"len_{split}"], [min(len(s), 5) for s in seqs])
        for row, s in zip(got[f"x_{split}"], seqs, strict=True):
            s = s[-5:]
            assert row.tolist() == [0] * (5 - len(s)) + s  # pre-padded, pre-truncated
    assert got["x_test"].max() < 6 and (got["x_test"] == 1).any()  # unknown words -> 1


def test_pad_sequences_matches_keras(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(2, 50, n)) for n in (0, 1, 3, 7, 12)]
    for padding in ("pre", "post"):
        for truncating in ("pre", "post"):
            ours, lengths = data.pad_sequences(seqs, 7, padding, truncating)
            ref = keras.utils.pad_sequences(seqs, maxlen=7, padding=padding, truncating=truncating)
            np.testing.assert_array_equal(ours, ref)
            np.testing.assert_array_equal(lengths, [min(len(s), 7) for s in seqs])


def test_directory_equals_archive_and_cache(tmp_path, monkeypatch):
    tgz = write_fake_imdb(tmp_path / "a.tar.gz", per_class=10, seed=3)
    folder = write_fake_imdb(tmp_path / "dir", per_class=10, seed=3, as_directory=True)
    a = data.load_imdb(
        _imdb_cfg(tgz, tmp_path, num_words=30, maxlen=40, padding="post"), verbose=False
    )
    b = data.load_imdb(
        _imdb_cfg(folder, tmp_path, num_words=30, maxlen=40, padding="post"), verbose=False
    )
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # the second load of the same source + settings comes from the cache, not the archive
    monkeypatch.setattr(data, "read_imdb", lambda *a: pytest.fail("cache missed"))
    c = data.load_imdb(_imdb_cfg(tgz, tmp_path, num_words=30, maxlen=40, padding="post"))
    np.testing.assert_array_equal(a["x_train"], c["x_train"])
    # other settings -> another cache entry
    with pytest.raises(pytest.fail.Exception, match="cache missed"):
        data.load_imdb(_imdb_cfg(tgz, tmp_path, num_words=30, maxlen=41))
    assert len(list((tmp_path / "cache").glob("imdb-*.npz"))) == 2


def test_missing_and_bad_archives(tmp_path):
    cfg = _imdb_cfg(tmp_path / "nowhere.tar.gz", tmp_path)
    with raises_naming(
        FileNotFoundError,
        f"not found at data.path='{tmp_path / 'nowhere.tar.gz'}'",
        "--set data.path=",
    ):
        data.load_imdb(cfg)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar")
    with raises_naming(ValueError, f"{junk}: not a readable tar archive"):
        data.load_imdb(_imdb_cfg(junk, tmp_path))
    empty = _tar(tmp_path / "empty.tar.gz", {("train", "pos", 0): "x"})
    with raises_naming(ValueError, f"{empty}: no reviews under aclImdb/test/{{pos,neg}}/"):
        data.load_imdb(_imdb_cfg(empty, tmp_path))


def test_download_checks_checksum(tmp_path):
    src = tmp_path / "file.txt"
    src.write_text("hello")
    good = data.sha256_file(src)
    assert data.download(src.as_uri(), good, tmp_path / "c").read_text() == "hello"
    with pytest.raises(data.DataError, match="sha256") as err:
        data.download(src.as_uri(), "0" * 64, tmp_path / "c")
    assert good in str(err.value) and "0" * 64 in str(err.value)
    assert not (tmp_path / "c" / "file.txt").exists()


def test_array_dataset_order_is_a_function_of_seed_and_epoch():
    n, B = 10, 3
    train = {"x": np.arange(n)}
    ds = data.ArrayDataset(train, train, seed=7, batch_size=B)
    assert ds.steps_per_epoch == 3
    epoch0 = np.concatenate([ds.train_batch(s)["x"] for s in range(3)])
    assert len(set(epoch0.tolist())) == 9  # no repeats within an epoch
    np.testing.assert_array_equal(epoch0, data.epoch_permutation(7, 0, n)[:9])
    # random access (as after a resume) gives the same batches as sequential access
    fresh = data.ArrayDataset(train, train, seed=7, batch_size=B)
    np.testing.assert_array_equal(fresh.train_batch(4)["x"], ds.train_batch(4)["x"])
    assert not np.array_equal(ds.train_batch(0)["x"], ds.train_batch(3)["x"])  # epochs differ
    # evaluation covers every example once; the padded tail is masked out
    batches = list(ds.eval_batches(4))
    assert [b["mask"].sum() for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(
        np.concatenate([b["x"][b["mask"] > 0] for b in batches]), np.arange(n)
    )


def test_char_dataset():
    text = "".join(chr(97 + (i * 7) % 26) for i in range(1000))
    ds = data.CharDataset(text, seq_len=16, val_fraction=0.1, seed=0, batch_size=4)
    assert len(ds.train_ids) == 900 and len(ds.val_ids) == 100
    assert ds.decode(ds.encode("hello")) == "hello"
    train_text = text[:900]
    for step in (0, 1, ds.steps_per_epoch + 2):
        tok = ds.train_batch(step)["tokens"]
        assert tok.shape == (4, 17)
        for row in tok:  # each window is a contiguous piece of the training split
            piece = ds.decode(row)
            assert piece in train_text
    np.testing.assert_array_equal(
        data.CharDataset(text, 16, 0.1, 0, 4).train_batch(5)["tokens"], ds.train_batch(5)["tokens"]
    )
    (val,) = list(ds.eval_batches(3))  # 3 contiguous streams of the validation text
    assert val["tokens"].shape == (3, 33 + 1) and val["mask"].tolist() == [1, 1, 1]
    # the predicted characters (all but each stream's first) tile the text without overlap
    assert "".join(ds.decode(r[1:]) for r in val["tokens"]) == text[901 : 901 + 3 * 33]
    for r in val["tokens"]:
        assert ds.decode(r) in text[900:]


def test_adding_problem_statistics():
    xs, y = data.adding_problem(np.random.default_rng(1), 20000, 50)
    markers = xs[..., 1]
    assert (markers.sum(1) == 2).all()
    assert (markers[:, :25].sum(1) == 1).all()  # one marker in each half
    np.testing.assert_allclose(y, (xs[..., 0] * markers).sum(1), rtol=1e-6)
    assert abs(np.mean((y - 1.0) ** 2) - 1 / 6) < 0.01  # predicting the mean scores ~1/6
    ds = data.AddingDataset(T=50, test_size=10, test_seed=3, seed=0, batch_size=5)
    np.testing.assert_array_equal(ds.train_batch(9)["xs"], ds.train_batch(9)["xs"])
    assert not np.array_equal(ds.train_batch(9)["xs"], ds.train_batch(10)["xs"])


# --- IMDB checks: counts, known archives, the cache, invalid UTF-8 ----------------------------


def _cut_at(src, dest, first_missing):
    """``src`` (.tar.gz) cut at a file boundary, as a stopped download or copy leaves it: the
    tar stream ends where the first member whose name contains ``first_missing`` began."""
    raw = gzip.decompress(src.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    at = next(m.offset for m in members if first_missing in m.name)
    dest.write_bytes(gzip.compress(raw[:at]))
    kept = [m.name for m in members if m.offset < at and m.name.endswith(".txt")]
    return dest, kept


def _counts_of(names):
    """``[[train neg, train pos], [test neg, test pos]]`` counted from file names."""
    return [
        [sum(f"/{s}/{c}/" in n for n in names) for c in ("neg", "pos")] for s in ("train", "test")
    ]


def test_archive_cut_at_a_file_boundary_is_refused(tmp_path):
    full = write_fake_imdb(tmp_path / "full.tar.gz", per_class=10, seed=1)
    cut, kept = _cut_at(full, tmp_path / "cut.tar.gz", "test/pos/")
    assert _counts_of(kept) == [[10, 10], [10, 0]]  # the fixture as the check must see it
    cfg = _imdb_cfg(cut, tmp_path, num_words=30, maxlen=20)
    with pytest.raises(data.DataError) as err:
        data.load_imdb(cfg, verbose=False)
    msg = str(err.value)
    assert str(cut) in msg and "test/pos has 0 reviews, expected 10" in msg
    assert "allow_incomplete=True" in msg and "train/" not in msg
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing cached
    # opted past: it loads with a warning, the counts recorded as the archive holds them
    with pytest.warns(UserWarning, match="test/pos has 0 reviews, expected 10"):
        got = data.load_imdb(cfg, verbose=False, allow_incomplete=True)
    assert got["counts"].tolist() == _counts_of(kept) and got["y_test"].tolist() == [0] * 10
    # the cached result of that load is checked again: refused without the opt-out
    with pytest.raises(data.DataError, match="test/pos has 0 reviews, expected 10"):
        data.load_imdb(cfg, verbose=False)


def test_own_archive_is_checked_against_the_official_counts(tmp_path):
    """Without a counts manifest the official 12,500 per class is expected: a small archive,
    or one with a class missing (the reported failure: 99 reviews, all negative), is refused."""
    neg_only = {k: v for k, v in REVIEWS.items() if k[1] == "neg"}
    path = _tar(tmp_path / "own.tar.gz", neg_only, manifest=False)
    with pytest.raises(data.DataError) as err:
        data.load_imdb(_imdb_cfg(path, tmp_path, num_words=6, maxlen=5), verbose=False)
    msg = str(err.value)
    assert str(path) in msg
    assert "train/pos has 0 reviews, expected 12,500, at least 90% of it" in msg
    assert "train/neg has 2 reviews, expected 12,500" in msg
    assert "test/neg has 1 reviews" in msg and "test/pos has 0 reviews" in msg


def test_count_threshold_passes_the_shared_copy_and_refuses_below_90_percent(tmp_path):
    def counts(n):
        return {s: {"neg": n, "pos": 12_500} for s in ("train", "test")}

    # the shared copy leaves out ids 0-9 of each folder: 12,490 per class must pass
    assert data.check_imdb_counts(counts(12_490), "x.tar.gz") == []
    assert data.check_imdb_counts(counts(11_250), "x.tar.gz") == []  # exactly 90 %
    with pytest.raises(data.DataError) as err:
        data.check_imdb_counts(counts(11_249), "x.tar.gz")
    assert "x.tar.gz" in str(err.value) and "train/neg has 11,249 reviews, expected 12,500" in str(
        err.value
    )
    assert data.check_imdb_counts(counts(11_249), "x", allow_incomplete=True) == [
        f"{s}/neg has 11,249 reviews, expected 12,500, at least 90% of it"
        for s in ("train", "test")
    ]
    # a manifest's counts are checked exactly
    manifest = {s: {"neg": 5, "pos": 5} for s in ("train", "test")}
    got = {s: {"neg": 5, "pos": 6 if s == "test" else 5} for s in ("train", "test")}
    assert data.check_imdb_counts(got, "x", manifest, allow_incomplete=True) == [
        "test/pos has 6 reviews, expected 5"
    ]


@pytest.mark.skipif(
    not (data.REPO_ROOT.parent / "shared" / "data" / "aclImdb_labeled.tar.gz").exists()
    and not (data.pathlib.Path("/work/shared/data/aclImdb_labeled.tar.gz")).exists(),
    reason="the shared IMDB copy is not on this machine",
)
def test_shared_copy_has_its_known_checksum():
    path = data.REPO_ROOT.parent / "shared" / "data" / "aclImdb_labeled.tar.gz"
    if not path.exists():
        path = data.pathlib.Path("/work/shared/data/aclImdb_labeled.tar.gz")
    assert data._fingerprint(path) == data.KNOWN_IMDB["aclImdb_labeled.tar.gz"]


def test_known_archive_name_with_another_checksum_is_refused(tmp_path):
    fake = write_fake_imdb(tmp_path / "aclImdb_v1.tar.gz", per_class=3)
    digest = data.sha256_file(fake)
    with pytest.raises(data.DataError) as err:
        data.load_imdb(_imdb_cfg(fake, tmp_path), verbose=False, allow_incomplete=True)
    msg = str(err.value)
    assert str(fake) in msg and digest in msg and data.IMDB_SHA256 in msg
    # the same bytes under another name are a data set of one's own: counted, not checksummed
    own = shutil.copy(fake, tmp_path / "mine.tar.gz")
    got = data.load_imdb(_imdb_cfg(own, tmp_path, num_words=30, maxlen=10), verbose=False)
    assert got["counts"].tolist() == [[3, 3], [3, 3]]


def test_partly_extracted_folder_is_refused_and_the_fixed_folder_retokenized(tmp_path):
    folder = write_fake_imdb(tmp_path / "dir", per_class=8, seed=5, as_directory=True)
    complete = write_fake_imdb(tmp_path / "ref.tar.gz", per_class=8, seed=5)
    pos = sorted((folder / "train" / "pos").iterdir())
    removed = {p: p.read_bytes() for p in pos[3:]}
    for p in removed:
        p.unlink()
    cfg = _imdb_cfg(folder, tmp_path, num_words=40, maxlen=30)
    with pytest.raises(data.DataError) as err:
        data.load_imdb(cfg, verbose=False)
    assert str(folder) in str(err.value) and "train/pos has 3 reviews, expected 8" in str(err.value)
    with pytest.warns(UserWarning, match="train/pos has 3 reviews"):
        partial = data.load_imdb(cfg, verbose=False, allow_incomplete=True)
    assert len(partial["y_train"]) == 11
    for p, blob in removed.items():  # the rest of the extraction
        p.write_bytes(blob)
    fixed = data.load_imdb(cfg, verbose=False)  # a new key: tokenized again, not the cache
    want = data.load_imdb(_imdb_cfg(complete, tmp_path, num_words=40, maxlen=30), verbose=False)
    for k in want:
        np.testing.assert_array_equal(fixed[k], want[k])
    assert fixed["counts"].tolist() == [[8, 8], [8, 8]]


@pytest.mark.parametrize("damage", ["cut", "garbage", "empty", "no counts"])
def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, damage):
    path = write_fake_imdb(tmp_path / "imdb.tar.gz", per_class=6, seed=2)
    cfg = _imdb_cfg(path, tmp_path, num_words=30, maxlen=12)
    first = data.load_imdb(cfg, verbose=False)
    (cache,) = (tmp_path / "cache").glob("imdb-*.npz")
    blob = cache.read_bytes()
    if damage == "cut":
        cache.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        cache.write_bytes(b"not a zip file at all")
    elif damage == "empty":
        cache.write_bytes(b"")
    else:  # readable, but written by another version (no counts to check)
        np.savez(cache, **{k: v for k, v in first.items() if k != "counts"})
        cache = cache.with_suffix(".npz")
    with pytest.warns(UserWarning, match="corrupt tokenized cache") as rec:
        again = data.load_imdb(cfg, verbose=False)
    assert str(cache) in str(rec[0].message) and "tokenizing again" in str(rec[0].message)
    for k in first:
        np.testing.assert_array_equal(again[k], first[k])
    assert cache.read_bytes() == blob  # written again, whole


def test_invalid_utf8_is_counted_and_reported(tmp_path):
    reviews = dict(REVIEWS)
    reviews[("train", "pos", 1)] = b"A great film \xff\xfe fun"  # two invalid bytes
    reviews[("test", "neg", 0)] = b"bad caf\xe9"  # one (a Latin-1 byte)
    path = _tar(tmp_path / "imdb.tar.gz", reviews)
    cfg = _imdb_cfg(path, tmp_path, num_words=6, maxlen=8)
    with pytest.warns(UserWarning) as rec:
        got = data.load_imdb(cfg, verbose=False, allow_incomplete=False)
    (msg,) = [str(r.message) for r in rec if "UTF-8" in str(r.message)]
    assert "2 review file(s) are not valid UTF-8" in msg and "3 invalid byte(s)" in msg
    assert "aclImdb/train/pos/1_8.txt" in msg and "aclImdb/test/neg/0_2.txt" in msg
    assert got["invalid_utf8"].tolist() == [2, 3]
    stats = {}
    raw = data.read_imdb(path, stats)
    texts = {t for _, t in raw["train"]} | {t for _, t in raw["test"]}
    assert reviews[("test", "neg", 0)].decode("utf-8", "replace") in texts  # read as U+FFFD
    assert stats["invalid_utf8_bytes"] == 3 and len(stats["invalid_utf8_files"]) == 2
