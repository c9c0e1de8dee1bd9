"""Tests for twinlock.trainer.data.datasets: layouts, pairs files, splits and sampling."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from twinlock.daemon.errors import DataError, DataNotFoundError, UsageError
from twinlock.trainer.data import datasets as ds
from twinlock.trainer.data.datasets import FaceDataset, ImageRecord
from twinlock.trainer.data.pairs import PairSpec, read_pairs_file

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def write_png(path: Path, value: int = 128) -> Path:
    """A tiny real PNG, so the fixtures look like what the loaders will meet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 8, 3), value, np.uint8))
    return path


def make_identity_tree(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    for name, n in counts.items():
        for i in range(1, n + 1):
            write_png(root / name / f"{name}_{i:04d}{ext}", value=10 * i)
    return root


def make_lfw_tree(root: Path, counts: dict[str, int]) -> Path:
    """LFW naming (``name/name_0001.jpg``); content need not decode for this module."""
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            (root / name / f"{name}_{i:04d}.jpg").write_bytes(b"not decoded here")
    return root


def random_labels(rng: np.random.Generator, n_ids: int = 30) -> np.ndarray:
    """Skewed identity sizes like LFW: several single-image people, one very frequent one."""
    sizes = rng.integers(1, 6, size=n_ids)
    sizes[0] = 40
    sizes[1:6] = 1
    return rng.permutation(np.repeat(np.arange(n_ids), sizes))


# --------------------------------------------------------------------------------------------------
# identity folders
# --------------------------------------------------------------------------------------------------


def test_identity_folders_lists_images_skips_others(tmp_path: Path) -> None:
    root = make_identity_tree(tmp_path / "faces", {"bob": 3, "alice": 2, "carol": 1})
    (root / "README").write_text("documentation, not data")
    (root / "SOURCE.md").write_text("# source")
    (root / "alice" / "notes.txt").write_text("not a face")
    (root / "alice" / "x.jpg").write_text("a text file with an image extension")
    write_png(root / "bob" / "UPPER.PNG")
    write_png(root / "bob" / ".hidden.png")
    write_png(root / ".cache" / "c.png")
    (root / "empty_person").mkdir()
    write_png(root / "carol" / "nested" / "deep.png")

    data = ds.load_identity_folders(root)

    assert data.layout == ds.LAYOUT_IDENTITY_FOLDERS
    assert data.root == root
    assert data.identities == ["alice", "bob", "carol"]
    assert len(data) == 3 + 1 + 2 + 1 + 1  # bob 3 + UPPER.PNG, alice 2 + x.jpg, carol 1
    names = [p.name for p in data.paths]
    assert "x.jpg" in names and "UPPER.PNG" in names
    assert ".hidden.png" not in names and "c.png" not in names and "deep.png" not in names
    skipped = {path.name: reason for path, reason in data.skipped}
    assert skipped["notes.txt"] == ds.SKIP_NOT_IMAGE
    assert skipped["empty_person"] == ds.SKIP_EMPTY_IDENTITY
    assert skipped["nested"] == ds.SKIP_NESTED_FOLDER
    assert "README" not in skipped and "SOURCE.md" not in skipped
    assert len(data.skipped) == 3
    # every record's identity is its folder, and labels index identities
    for record, label in zip(data.records, data.labels, strict=True):
        assert record.path.parent.name == record.identity
        assert data.identities[label] == record.identity
    assert data.labels.dtype == np.int64


def test_identity_folders_deterministic_and_sorted(tmp_path: Path) -> None:
    root = make_identity_tree(tmp_path, {"zed": 2, "amy": 3, "Mia": 2})
    first = ds.load_identity_folders(root)
    second = ds.load_identity_folders(root)
    assert first.records == second.records
    assert first.identities == sorted(first.identities)
    assert [r.identity for r in first.records] == sorted(r.identity for r in first.records)


def test_image_extensions_case_insensitive() -> None:
    for ext in ("jpg", "jpeg", "png", "pgm", "ppm", "bmp", "webp", "tif", "tiff"):
        assert ds.is_image_file(f"a.{ext}") and ds.is_image_file(f"a.{ext.upper()}")
        assert f".{ext}" in ds.IMAGE_EXTENSIONS
    assert not ds.is_image_file("notes.txt")
    assert not ds.is_image_file("README")


def test_dataset_methods(tmp_path: Path) -> None:
    root = make_identity_tree(tmp_path, {"a": 3, "b": 1, "c": 2})
    data = ds.load_identity_folders(root)
    groups = data.by_identity()
    assert list(groups) == ["a", "b", "c"]
    assert groups == {"a": [0, 1, 2], "b": [3], "c": [4, 5]}
    assert data.count_multi_image_identities() == 2
    assert data.count_multi_image_identities(min_images=3) == 1
    assert data.image_counts() == {"a": 3, "b": 1, "c": 2}
    sub = data.subset(["c", "b"])
    assert sub.identities == ["b", "c"]
    assert len(sub) == 3
    assert list(sub.labels) == [0, 1, 1]
    with pytest.raises(UsageError, match="nobody"):
        data.subset(["a", "nobody"])
    assert "images=6" in repr(data)


# --------------------------------------------------------------------------------------------------
# tutorial layout, detection and merging
# --------------------------------------------------------------------------------------------------


def make_tutorial(root: Path, n_anchor: int = 3, n_pos: int = 2, n_neg: int = 4) -> Path:
    for i in range(n_anchor):
        write_png(root / "anchor" / f"a{i}.png")
    for i in range(n_pos):
        write_png(root / "positive" / f"p{i}.png")
    for i in range(n_neg):
        write_png(root / "negative" / f"n{i}.png")
    return root


def test_tutorial_layout(tmp_path: Path) -> None:
    root = make_tutorial(tmp_path / "resident")
    (root / "negative" / "notes.txt").write_text("x")
    (root / "extra").mkdir()

    data = ds.load_dataset(root)

    assert data.layout == ds.LAYOUT_TUTORIAL
    assert len(data) == 9
    counts = Counter(r.identity for r in data.records)
    assert counts["resident"] == 5
    negatives = [name for name in counts if name != "resident"]
    assert sorted(negatives) == [f"negative/n{i}.png" for i in range(4)]
    assert all(counts[name] == 1 for name in negatives)
    assert data.count_multi_image_identities() == 1
    reasons = {path.name: reason for path, reason in data.skipped}
    assert reasons == {"notes.txt": ds.SKIP_NOT_IMAGE, "extra": ds.SKIP_UNKNOWN_TUTORIAL_FOLDER}


def test_tutorial_layout_without_negatives(tmp_path: Path) -> None:
    root = make_tutorial(tmp_path / "me", n_neg=0)
    assert not (root / "negative").exists()
    data = ds.load_dataset(root)
    assert data.identities == ["me"]
    assert len(data) == 5


def test_load_dataset_detects_identity_folders(tmp_path: Path) -> None:
    root = make_identity_tree(tmp_path / "people", {"a": 2, "b": 2})
    (root / "anchor").mkdir()  # anchor alone (no positive/) is not the tutorial layout
    write_png(root / "anchor" / "1.png")
    data = ds.load_dataset(root)
    assert data.layout == ds.LAYOUT_IDENTITY_FOLDERS
    assert data.identities == ["a", "anchor", "b"]


def test_load_dataset_logs_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_identity_tree(tmp_path / "people", {"a": 2, "b": 1})
    (root / "a" / "notes.txt").write_text("x")
    with caplog.at_level(logging.INFO, logger=ds.__name__):
        ds.load_dataset(root)
    assert "3 images, 2 identities, 1 with >= 2 images, 1 skipped" in caplog.text


def test_load_dataset_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataNotFoundError, match="nope"):
        ds.load_dataset(missing)
    with pytest.raises(FileNotFoundError):  # stdlib type still catches it
        ds.load_dataset(missing)

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        ds.load_dataset(a_file)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images found"):
        ds.load_dataset(empty)

    only_junk = tmp_path / "junk"
    (only_junk / "person").mkdir(parents=True)
    (only_junk / "person" / "notes.txt").write_text("x")
    (only_junk / "README").write_text("x")
    with pytest.raises(DataError, match="no images found") as info:
        ds.load_dataset(only_junk)
    assert not isinstance(info.value, DataNotFoundError)

    flat = tmp_path / "flat"
    write_png(flat / "obama.png")
    with pytest.raises(DataError, match="one folder per person"):
        ds.load_dataset(flat)


def test_load_datasets_merges_with_prefixes(tmp_path: Path) -> None:
    orl = make_identity_tree(tmp_path / "orl_att_faces", {"s1": 2, "s2": 2})
    yale = make_identity_tree(tmp_path / "yale", {"s1": 3})
    tutorial = make_tutorial(tmp_path / "resident", n_neg=1)

    merged = ds.load_datasets([orl, yale, tutorial])

    assert merged.layout == ds.LAYOUT_MERGED
    assert merged.identities == [
        "orl_att_faces/s1",
        "orl_att_faces/s2",
        "resident/negative/n0.png",
        "resident/resident",
        "yale/s1",
    ]
    assert len(merged) == 2 + 2 + 3 + 6
    assert merged.root == tmp_path
    # one root: unchanged, no prefix
    single = ds.load_datasets([orl])
    assert single.identities == ["s1", "s2"]
    assert ds.load_datasets(orl).identities == ["s1", "s2"]


def test_load_datasets_same_folder_names_stay_distinct(tmp_path: Path) -> None:
    one = make_identity_tree(tmp_path / "x" / "data", {"p": 2})
    two = make_identity_tree(tmp_path / "y" / "data", {"p": 2})
    merged = ds.load_datasets([one, two])
    assert merged.identities == ["x/data/p", "y/data/p"]


def test_load_datasets_errors(tmp_path: Path) -> None:
    root = make_identity_tree(tmp_path / "a", {"p": 2})
    with pytest.raises(UsageError):
        ds.load_datasets([])
    with pytest.raises(UsageError, match="more than once"):
        ds.load_datasets([root, tmp_path / "a" / ".." / "a"])
    with pytest.raises(DataNotFoundError, match="missing"):
        ds.load_datasets([root, tmp_path / "missing"])


# --------------------------------------------------------------------------------------------------
# pairs files
# --------------------------------------------------------------------------------------------------

PEOPLE = {"Ann": 4, "Bob": 3, "Cid": 2, "Dee": 1, "Eve": 2}


def view1_text(n: int) -> str:
    matched = [f"Ann\t{1 + i % 3}\t{2 + i % 3}" for i in range(n)]
    mismatched = [f"Bob\t{1 + i % 3}\tDee\t1" for i in range(n)]
    return "\n".join([str(n), *matched, *mismatched]) + "\n"


def test_read_pairs_view1(tmp_path: Path) -> None:
    images = make_lfw_tree(tmp_path / "lfw", PEOPLE)
    pairs_file = tmp_path / "pairsDevTrain.txt"
    pairs_file.write_text(view1_text(20))

    pairs = read_pairs_file(pairs_file, images)

    assert len(pairs) == 40
    assert [p.same for p in pairs] == [True] * 20 + [False] * 20
    assert pairs[0] == PairSpec(
        images / "Ann" / "Ann_0001.jpg", images / "Ann" / "Ann_0002.jpg", True, 0
    )
    assert pairs[20].a == images / "Bob" / "Bob_0001.jpg"
    assert pairs[20].b == images / "Dee" / "Dee_0001.jpg"
    # contiguous tenths of the matched lines and of the mismatched lines
    assert [p.fold for p in pairs[:20]] == [i // 2 for i in range(20)]
    assert [p.fold for p in pairs[20:]] == [i // 2 for i in range(20)]
    assert Counter(p.fold for p in pairs) == {f: 4 for f in range(10)}


def test_read_pairs_view2(tmp_path: Path) -> None:
    images = make_lfw_tree(tmp_path / "lfw", PEOPLE)
    lines = ["3 2"]
    for _ in range(3):
        lines += ["Ann 1 4", "Cid 1 2", "Eve 2 Ann 3", "Bob 3 Cid 1"]
    lines.append("")  # trailing blank line is fine
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("\r\n".join(lines))

    pairs = read_pairs_file(pairs_file, images)

    assert len(pairs) == 12
    assert [p.fold for p in pairs] == [0] * 4 + [1] * 4 + [2] * 4
    assert [p.same for p in pairs] == [True, True, False, False] * 3
    assert pairs[2] == PairSpec(
        images / "Eve" / "Eve_0002.jpg", images / "Ann" / "Ann_0003.jpg", False, 0
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2\nAnn 1 2\nAnn 1\nBob 1 Dee 1\nBob 2 Dee 1\n", r"line 3: expected a matched pair"),
        ("2\nAnn 1 2\nAnn 2 3\nBob 1 Dee 1\nBob 2 Dee\n", r"line 5: expected a mismatched pair"),
        ("2\nAnn 1 2\nAnn x 3\nBob 1 Dee 1\nBob 2 Dee 1\n", r"line 3: image number"),
        ("2\nAnn 1 2\nAnn 0 3\nBob 1 Dee 1\nBob 2 Dee 1\n", r"line 3: image number"),
        ("2\nAnn 1 2\nAnn 3 3\nBob 1 Dee 1\nBob 2 Dee 1\n", r"line 3: .*one image twice"),
        ("1\nAnn 1 2\nBob 1 Bob 2\n", r"line 3: .*one person twice"),
        ("two\nAnn 1 2\nBob 1 Dee 1\n", r"line 1: pair count"),
        ("1 2 3\nAnn 1 2\nBob 1 Dee 1\n", r"line 1: expected a header"),
        ("2\nAnn 1 2\nAnn 2 3\nBob 1 Dee 1\n", r"declares 4 pairs but the file has only 3"),
        ("1\nAnn 1 2\nBob 1 Dee 1\nBob 2 Dee 1\n", r"1 more lines, from line 4"),
        ("\n\n", r"empty"),
    ],
)
def test_read_pairs_malformed(tmp_path: Path, text: str, message: str) -> None:
    images = make_lfw_tree(tmp_path / "lfw", PEOPLE)
    pairs_file = tmp_path / "bad_pairs.txt"
    pairs_file.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_pairs_file(pairs_file, images)
    assert "bad_pairs.txt" in str(info.value)


def test_read_pairs_missing_images(tmp_path: Path) -> None:
    images = make_lfw_tree(tmp_path / "lfw", PEOPLE)
    lines = ["8"]
    lines += ["Ann 1 2"] * 4 + [f"Ghost{i} 1 2" for i in range(4)]
    lines += ["Bob 1 Dee 1"] * 5 + ["Bob 9 Dee 1", "Ann 1 Zed 1", "Cid 1 Eve 1"]
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("\n".join(lines))
    with pytest.raises(DataError) as info:
        read_pairs_file(pairs_file, images)
    message = str(info.value)
    assert "6 of 16 pairs" in message
    assert "Ghost0_0001.jpg" in message
    assert message.count(".jpg") == 5  # only the first five missing images are listed
    assert "10 images missing" in message


def test_read_pairs_missing_files(tmp_path: Path) -> None:
    images = make_lfw_tree(tmp_path / "lfw", PEOPLE)
    with pytest.raises(DataNotFoundError, match="nothere.txt"):
        read_pairs_file(tmp_path / "nothere.txt", images)
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text(view1_text(1))
    with pytest.raises(DataNotFoundError, match="no_images"):
        read_pairs_file(pairs_file, tmp_path / "no_images")


# --------------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------------


def split_counts(n_multi: int = 40, n_single: int = 60) -> dict[str, int]:
    counts = {f"m{i:03d}": 2 + i % 4 for i in range(n_multi)}
    counts.update({f"s{i:03d}": 1 for i in range(n_single)})
    return counts


def test_split_disjoint_complete_sorted() -> None:
    counts = split_counts()
    train, val = ds.split_identities(counts, 0.25, seed=1)
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(counts)
    assert train == sorted(train) and val == sorted(val)
    # stratified: a quarter of the multi-image and a quarter of the single-image identities
    assert sum(counts[n] >= 2 for n in val) == 10
    assert sum(counts[n] == 1 for n in val) == 15


def test_split_deterministic_and_seed_sensitive() -> None:
    counts = split_counts()
    assert ds.split_identities(counts, 0.2, seed=7) == ds.split_identities(counts, 0.2, seed=7)
    assert ds.split_identities(dict(reversed(counts.items())), 0.2, seed=7) == (
        ds.split_identities(counts, 0.2, seed=7)
    )
    assert ds.split_identities(counts, 0.2, seed=7) != ds.split_identities(counts, 0.2, seed=8)


def test_split_accepts_dataset(tmp_path: Path) -> None:
    data = ds.load_identity_folders(make_identity_tree(tmp_path, {"a": 2, "b": 2, "c": 1}))
    train, val = ds.split_identities(data, 0.5, seed=0)
    assert sorted(train + val) == ["a", "b", "c"]
    assert sum(n in ("a", "b") for n in train) == 1
    assert sum(n in ("a", "b") for n in val) == 1


def test_split_keeps_multi_image_identities_on_both_sides() -> None:
    counts = split_counts(n_multi=2, n_single=50)
    for seed in range(5):
        for fraction in (0.01, 0.5, 0.99):
            train, val = ds.split_identities(counts, fraction, seed=seed)
            assert any(counts[n] >= 2 for n in train)
            assert any(counts[n] >= 2 for n in val)


def test_split_min_val_images() -> None:
    counts = split_counts()
    _, val = ds.split_identities(counts, 0.1, seed=3)
    small = sum(counts[n] for n in val)
    train, val = ds.split_identities(counts, 0.1, seed=3, min_val_images=small + 20)
    assert sum(counts[n] for n in val) >= small + 20
    assert any(counts[n] >= 2 for n in train)
    with pytest.raises(UsageError, match="cannot give validation"):
        ds.split_identities(counts, 0.1, seed=3, min_val_images=10_000)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_bad_fraction(fraction: float) -> None:
    with pytest.raises(UsageError, match="val_fraction"):
        ds.split_identities(split_counts(), fraction, seed=0)


def test_split_names_with_counts_keyword() -> None:
    counts = split_counts()
    names = sorted(counts)
    assert ds.split_identities(names, 0.25, 1, counts=counts) == ds.split_identities(
        counts, 0.25, 1
    )
    with pytest.raises(UsageError, match="no entry for 1 identities, e.g. zz"):
        ds.split_identities([*names, "zz"], 0.25, 1, counts=counts)


def test_split_names_without_counts() -> None:
    names = [f"p{i:02d}" for i in range(20)]
    train, val = ds.split_identities(reversed(names), 0.25, seed=2)
    assert len(val) == 5 and len(train) == 15
    assert sorted(train + val) == names
    assert (train, val) == ds.split_identities(names, 0.25, seed=2)
    with pytest.raises(UsageError, match="needs image counts"):
        ds.split_identities(names, 0.25, seed=2, min_val_images=3)
    with pytest.raises(UsageError, match="found 1"):
        ds.split_identities(["solo"], 0.5, seed=0)


def test_split_needs_two_multi_image_identities() -> None:
    with pytest.raises(UsageError, match=">= 2 images"):
        ds.split_identities({"a": 5, "b": 1, "c": 1}, 0.5, seed=0)
    with pytest.raises(UsageError, match="found 1 among 3"):
        ds.split_identities(["a", "b", "c"], 0.5, 0, counts={"a": 5, "b": 1, "c": 1})


# --------------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------------


def test_sample_pairs_balanced_and_correct() -> None:
    rng = np.random.default_rng(0)
    labels = random_labels(rng)
    a, b, same = ds.sample_pairs(labels, 2001, np.random.default_rng(1))
    assert a.shape == b.shape == same.shape == (2001,)
    assert same.dtype == np.float32
    assert set(np.unique(same)) == {0.0, 1.0}
    assert int(same.sum()) == 1001  # half, rounded half up
    np.testing.assert_array_equal(same, (labels[a] == labels[b]).astype(np.float32))
    assert np.all(a != b)
    # shuffled, not all same pairs first
    assert 0.2 < same[:1000].mean() < 0.8


def test_sample_pairs_same_fraction_and_determinism() -> None:
    labels = random_labels(np.random.default_rng(0))
    a, b, same = ds.sample_pairs(labels, 100, 5, same_fraction=0.3)
    assert int(same.sum()) == 30
    a2, b2, same2 = ds.sample_pairs(labels, 100, np.random.default_rng(5), same_fraction=0.3)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    np.testing.assert_array_equal(same, same2)
    _, _, only_same = ds.sample_pairs(labels, 50, 0, same_fraction=1.0)
    assert np.all(only_same == 1.0)


def test_sample_pairs_uses_identities_evenly() -> None:
    # one identity has 200 images, nine have 2: identity-uniform drawing keeps it at ~1/10
    labels = np.concatenate([np.zeros(200, int), np.repeat(np.arange(1, 10), 2)])
    a, b, same = ds.sample_pairs(labels, 20_000, 0)
    same_ids = labels[a[same == 1]]
    share = np.bincount(same_ids, minlength=10) / same_ids.size
    assert np.all(np.abs(share - 0.1) < 0.02)
    # single-image identities never appear in same pairs but do in different pairs
    labels = np.array([0, 0, 0, 1, 2, 3])
    a, b, same = ds.sample_pairs(labels, 400, 0)
    assert set(labels[a[same == 1]]) == {0}
    assert {1, 2, 3} <= set(labels[a[same == 0]]) | set(labels[b[same == 0]])


def test_sample_pairs_errors() -> None:
    with pytest.raises(DataError, match="2 identities"):
        ds.sample_pairs(np.zeros(5, int), 10, 0)
    with pytest.raises(DataError, match=">= 2 images"):
        ds.sample_pairs(np.arange(5), 10, 0)
    with pytest.raises(UsageError):
        ds.sample_pairs(np.array([0, 0, 1]), -1, 0)
    with pytest.raises(UsageError):
        ds.sample_pairs(np.array([0, 0, 1]), 10, 0, same_fraction=1.5)
    a, b, same = ds.sample_pairs(np.array([0, 0, 1]), 0, 0)
    assert a.size == b.size == same.size == 0


def test_sample_pairs_accepts_string_labels() -> None:
    labels = np.array(["x", "y", "x", "z", "y"])
    a, b, same = ds.sample_pairs(labels, 200, 0)
    np.testing.assert_array_equal(same, (labels[a] == labels[b]).astype(np.float32))


def test_all_same_pairs() -> None:
    labels = np.array([2, 0, 2, 1, 0, 2, 3])
    a, b = ds.all_same_pairs(labels)
    got = set(zip(a.tolist(), b.tolist(), strict=True))
    assert got == {(1, 4), (0, 2), (0, 5), (2, 5)}
    assert len(got) == a.size
    assert np.all(a < b)
    a, b = ds.all_same_pairs(np.arange(4))
    assert a.size == b.size == 0


@pytest.mark.parametrize("n", [5, 20, 30, 45])
def test_sample_different_pairs(n: int) -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4])  # 45 different-identity pairs
    assert ds.count_different_pairs(labels) == 45
    a, b = ds.sample_different_pairs(labels, n, 0)
    assert a.size == n
    assert np.all(labels[a] != labels[b])
    assert np.all(a < b)
    assert len(set(zip(a.tolist(), b.tolist(), strict=True))) == n  # no duplicates


def test_sample_different_pairs_sparse_no_duplicates() -> None:
    labels = random_labels(np.random.default_rng(3), n_ids=200)
    a, b = ds.sample_different_pairs(labels, 5000, np.random.default_rng(0))
    assert np.all(labels[a] != labels[b])
    keys = set(zip(a.tolist(), b.tolist(), strict=True))
    assert len(keys) == 5000


def test_sample_different_pairs_capped_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=ds.__name__):
        a, b = ds.sample_different_pairs(np.array([0, 1, 1]), 3, 0)
    assert "only 2 exist" in caplog.text
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == [(0, 1), (0, 2)]
    with pytest.raises(DataError, match="2 identities"):
        ds.sample_different_pairs(np.zeros(4, int), 1, 0)


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_mine_hard_negatives_closer_than_average(distance: str) -> None:
    rng = np.random.default_rng(0)
    labels = random_labels(rng, n_ids=60)
    emb = rng.normal(size=(labels.size, 16)).astype(np.float32)

    def dist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if distance == "l2":
            return np.linalg.norm(emb[x] - emb[y], axis=1)
        nx = emb[x] / np.linalg.norm(emb[x], axis=1, keepdims=True)
        ny = emb[y] / np.linalg.norm(emb[y], axis=1, keepdims=True)
        return 1.0 - np.sum(nx * ny, axis=1)

    anchors, negatives = ds.mine_hard_negatives(emb, labels, 500, 1, pool=32, distance=distance)
    assert anchors.shape == negatives.shape == (500,)
    assert np.all(labels[anchors] != labels[negatives])
    ra, rb = ds.sample_different_pairs(labels, 500, 2)
    assert dist(anchors, negatives).mean() < 0.8 * dist(ra, rb).mean()
    # with a pool of 32 the mined negative ranks in the closest few percent of all candidates
    for anchor, negative in zip(anchors[:20], negatives[:20], strict=True):
        others = np.flatnonzero(labels != labels[anchor])
        d_all = dist(np.full(others.size, anchor), others)
        d_mined = dist(np.array([anchor]), np.array([negative]))[0]
        assert np.mean(d_all < d_mined) < 0.25


def test_mine_hard_negatives_chunks_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    labels = random_labels(rng)
    emb = rng.normal(size=(labels.size, 8))
    full = ds.mine_hard_negatives(emb, labels, 100, 3)
    monkeypatch.setattr(ds, "_MINING_CHUNK_FLOATS", 64 * 8 * 7)  # 7 anchors per chunk
    chunked = ds.mine_hard_negatives(emb, labels, 100, 3)
    np.testing.assert_array_equal(full[0], chunked[0])
    np.testing.assert_array_equal(full[1], chunked[1])


def test_mine_hard_negatives_errors() -> None:
    labels = np.array([0, 0, 1, 1])
    emb = np.zeros((4, 3))
    with pytest.raises(UsageError, match="shape"):
        ds.mine_hard_negatives(np.zeros((3, 3)), labels, 2, 0)
    with pytest.raises(UsageError, match="distance"):
        ds.mine_hard_negatives(emb, labels, 2, 0, distance="manhattan")
    with pytest.raises(UsageError, match="pool"):
        ds.mine_hard_negatives(emb, labels, 2, 0, pool=0)
    with pytest.raises(DataError, match="NaN"):
        ds.mine_hard_negatives(np.full((4, 3), np.nan), labels, 2, 0)
    with pytest.raises(DataError, match="2 identities"):
        ds.mine_hard_negatives(emb, np.zeros(4, int), 2, 0)


def test_sample_triplets_valid() -> None:
    labels = random_labels(np.random.default_rng(4))
    anchor, positive, negative = ds.sample_triplets(labels, 1000, 0)
    assert anchor.shape == positive.shape == negative.shape == (1000,)
    assert np.all(anchor != positive)
    assert np.all(labels[anchor] == labels[positive])
    assert np.all(labels[anchor] != labels[negative])
    singles = np.flatnonzero(np.bincount(labels) == 1)
    assert not np.isin(labels[anchor], singles).any()
    with pytest.raises(DataError):
        ds.sample_triplets(np.arange(4), 3, 0)
    with pytest.raises(DataError):
        ds.sample_triplets(np.zeros(4, int), 3, 0)


def test_records_are_frozen() -> None:
    record = ImageRecord(Path("a/b.png"), "a")
    with pytest.raises(AttributeError):
        record.identity = "b"  # type: ignore[misc]
    assert isinstance(FaceDataset(Path("."), [record]).labels, np.ndarray)


# --------------------------------------------------------------------------------------------------
# real data (skips without ../shared/data)
# --------------------------------------------------------------------------------------------------


@pytest.mark.data
def test_real_orl(orl_dir: Path) -> None:
    data = ds.load_dataset(orl_dir)
    assert len(data.identities) == 40
    assert len(data) == 400
    assert set(data.image_counts().values()) == {10}
    assert all(r.path.suffix == ".pgm" for r in data.records)
    assert data.skipped == []  # README at the top level is ignored, not skipped


@pytest.mark.data
def test_real_lfw(lfw_dir: Path) -> None:
    data = ds.load_dataset(lfw_dir)
    assert len(data.identities) == 4038
    assert len(data) == 9525
    assert data.skipped == []
    train, val = ds.split_identities(data, 0.2, seed=0)
    assert not set(train) & set(val)
    assert len(train) + len(val) == 4038


@pytest.mark.data
def test_real_lfw_pairs(lfw_dir: Path) -> None:
    from conftest import require_data

    pairs_file = require_data("lfw", "pairsDevTrain.txt")
    pairs = read_pairs_file(pairs_file, lfw_dir)
    assert len(pairs) == 2200
    assert sum(p.same for p in pairs) == 1100
    assert Counter(p.fold for p in pairs) == {f: 220 for f in range(10)}
    assert all(
        Counter(p.same for p in pairs if p.fold == f) == {True: 110, False: 110} for f in range(10)
    )
    assert pairs[0].a.name == "Aaron_Peirsol_0001.jpg"
