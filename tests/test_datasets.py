"""Parsers, manifests and splits on small fixture files written in tmp_path."""

from __future__ import annotations

import gc
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from clip_aesthetics.datasets import (
    DATASETS,
    SCALE_MAPPINGS,
    ParseError,
    ParseReport,
    Record,
    SplitInfo,
    filter_available,
    load_broken_manifest,
    load_dataset,
    official_split,
    parse_ava,
    parse_csv,
    random_split,
    split_records,
    write_broken_manifest,
)
from clip_aesthetics.datasets.records import bulk_allocation

# (id, votes for 1..10, tag ids, challenge)
AVA_ROWS = [
    ("953619", [0, 1, 5, 17, 38, 36, 15, 6, 5, 1], (1, 22), 1396),
    ("953958", [10, 7, 15, 26, 26, 21, 10, 8, 1, 2], (1, 21), 1396),
    ("954184", [0, 0, 4, 8, 41, 56, 10, 3, 4, 0], (0, 0), 1396),
    ("954113", [0, 1, 4, 6, 48, 37, 23, 5, 2, 2], (15, 21), 1396),
    ("953980", [0, 3, 6, 15, 57, 39, 6, 1, 1, 1], (22, 38), 1396),
    ("954175", [0, 1, 8, 11, 27, 26, 14, 10, 4, 1], (0, 0), 1396),
]


def _hand_mean(votes: list[int]) -> float:
    return sum((i + 1) * v for i, v in enumerate(votes)) / sum(votes)


def _ava_line(row: int, image_id: str, votes: list[int], tags: tuple[int, int], challenge: int) -> str:
    return " ".join(map(str, [row, image_id, *votes, *tags, challenge]))


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


@pytest.fixture
def ava_root(tmp_path: Path) -> Path:
    root = tmp_path / "AVA_dataset"
    (root / "aesthetics_image_lists").mkdir(parents=True)
    lines = [_ava_line(i, *row) for i, row in enumerate(AVA_ROWS, start=1)]
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    (root / "tags.txt").write_text("1 Abstract\n15 Nature\n22 Landscape\n")
    # test list: two present ids, one whose image is missing, one not in AVA.txt at all
    (root / "aesthetics_image_lists" / "generic_test.jpgl").write_text("953958\n954113\n953980\n111\n")
    for image_id, *_ in AVA_ROWS:
        if image_id != "953980":
            _touch(root / "images" / f"{image_id}.jpg")
    return root


def test_record_derives_mean_and_distribution() -> None:
    rec = Record("1", None, votes=np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 3]))
    assert rec.mean == pytest.approx((3 + 30) / 4)
    np.testing.assert_allclose(rec.distribution, [0, 0, 0.25, 0, 0, 0, 0, 0, 0, 0.75])
    assert rec.has_label
    with pytest.raises(ValueError):
        rec.votes[0] = 5  # records are immutable, arrays included
    assert not Record("2", None).has_label and Record("2", None).distribution is None
    with pytest.raises(ValueError, match="positive total"):
        Record("3", None, votes=np.zeros(10))


def test_parse_ava_values_tags_paths_and_missing_images(ava_root: Path) -> None:
    parsed = parse_ava(ava_root.parent)  # the parent of AVA_dataset is accepted too
    assert parsed.root == ava_root
    by_id = {r.id: r for r in parsed.records}
    assert list(by_id) == [row[0] for row in AVA_ROWS if row[0] != "953980"]
    for image_id, votes, _, _ in AVA_ROWS[:2]:
        assert by_id[image_id].mean == pytest.approx(_hand_mean(votes))
        np.testing.assert_array_equal(by_id[image_id].votes, votes)
    assert by_id["953619"].tags == ("Abstract", "Landscape")
    assert by_id["953958"].tags == ("Abstract", "21")  # tag 21 has no name in this tags.txt
    assert by_id["954184"].tags == ()
    assert by_id["953619"].path == ava_root / "images" / "953619.jpg"
    assert by_id["954113"].split == "test" and by_id["953619"].split == "train"
    assert parsed.report.n_lines == 6 and parsed.report.n_records == 5
    assert [d.id for d in parsed.report.dropped] == ["953980"]
    assert "missing file" in parsed.report.dropped[0].reason
    assert len(parse_ava(ava_root, check_files=False)) == 6


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("3 954184 0 0 4 8 41 56 10 3 4 0 0 1396", "expected 15 columns, got 14"),
        ("3 954184 0 0 four 8 41 56 10 3 4 0 0 0 1396", "non-integer"),
        ("3 954184 0 0 0 0 0 0 0 0 0 0 0 0 1396", "zero total votes"),
        ("3 954184 0 0 -4 8 41 56 10 3 4 0 0 0 1396", "negative vote"),
        ("3 953619 0 0 4 8 41 56 10 3 4 0 0 0 1396", "duplicate image id 953619"),
    ],
)
def test_parse_ava_strict_and_lenient(ava_root: Path, bad_line: str, reason: str) -> None:
    lines = (ava_root / "AVA.txt").read_text().splitlines()
    lines[2] = bad_line
    lines.insert(1, "")  # a blank line must not shift the reported line numbers
    (ava_root / "AVA.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ParseError, match=reason) as err:
        parse_ava(ava_root)
    assert str(err.value).startswith(f"{ava_root / 'AVA.txt'}:4:")
    assert err.value.line_no == 4

    parsed = parse_ava(ava_root, lenient=True, check_files=False)
    assert [(s.line_no, reason in s.reason) for s in parsed.report.skipped] == [(4, True)]
    assert parsed.report.n_lines == 6 and len(parsed) == 5


def test_broken_manifest_roundtrip_and_dropping(ava_root: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "broken.json"
    write_broken_manifest(manifest, {"954175": "truncated JPEG", "953619": "cannot identify image"})
    assert json.loads(manifest.read_text()) == {
        "broken": {"953619": "cannot identify image", "954175": "truncated JPEG"}
    }
    assert load_broken_manifest(manifest) == {"953619": "cannot identify image", "954175": "truncated JPEG"}
    parsed = parse_ava(ava_root, manifest=manifest)
    assert {r.id for r in parsed.records} == {"953958", "954184", "954113"}
    assert sorted((d.id, d.reason) for d in parsed.report.dropped) == [
        ("953619", "broken: cannot identify image"),
        ("953980", f"missing file: {ava_root / 'images' / '953980.jpg'}"),
        ("954175", "broken: truncated JPEG"),
    ]
    # the default manifest name in the dataset folder is picked up without being named
    write_broken_manifest(ava_root / "broken_images.json", {"954184": "zero bytes"})
    assert "954184" not in {r.id for r in parse_ava(ava_root).records}
    with pytest.raises(FileNotFoundError, match="manifest"):
        parse_ava(ava_root, manifest=tmp_path / "nope.json")


def test_text_manifest(tmp_path: Path) -> None:
    path = tmp_path / "broken.txt"
    path.write_text("# verify output\n123 truncated file\n456\n789\tzero bytes\n\n")
    assert load_broken_manifest(path) == {
        "123": "truncated file",
        "456": "listed as broken",
        "789": "zero bytes",
    }


def test_official_split_is_jpgl_minus_missing_images(ava_root: Path) -> None:
    parsed = parse_ava(ava_root)
    splits = official_split(parsed.records, ava_root, val_fraction=0.34, seed=5)
    assert [r.id for r in splits["test"]] == ["953958", "954113"]  # 953980 missing, 111 not in AVA.txt
    rest = {"953619", "954184", "954175"}
    assert len(splits["val"]) == round(0.34 * 3) == 1
    assert {r.id for r in splits["train"] + splits["val"]} == rest
    again = official_split(
        list(reversed(parsed.records)), ava_root / "aesthetics_image_lists" / "generic_test.jpgl", 0.34, 5
    )
    assert [r.id for r in again["val"]] == [r.id for r in splits["val"]]  # input order does not matter

    # split_records uses Record.split set from the same list: identical result
    via_records, info = split_records(parsed, "official", val_fraction=0.34, seed=5)
    assert {k: [r.id for r in v] for k, v in via_records.items()} == {
        k: [r.id for r in v] for k, v in splits.items()
    }
    assert info.kind == "official" and info.counts == {"train": 2, "val": 1, "test": 2}
    assert info.fractions == {"val": 0.34}


def _records(n: int) -> list[Record]:
    return [Record(f"img{i:04d}", None, mean=float(i % 10 + 1)) for i in range(n)]


def test_random_split_disjoint_complete_reproducible() -> None:
    records = _records(1001)
    splits = random_split(records, (0.7, 0.2, 0.1), seed=3)
    ids = {k: [r.id for r in v] for k, v in splits.items()}
    assert len(ids["val"]) == round(0.2 * 1001) and len(ids["test"]) == round(0.1 * 1001)
    all_ids = ids["train"] + ids["val"] + ids["test"]
    assert sorted(all_ids) == sorted(r.id for r in records)  # complete and disjoint
    assert ids == {k: [r.id for r in v] for k, v in random_split(records, (0.7, 0.2, 0.1), 3).items()}
    shuffled = [records[i] for i in np.random.default_rng(0).permutation(len(records))]
    assert {k: sorted(r.id for r in v) for k, v in random_split(shuffled, (0.7, 0.2, 0.1), 3).items()} == {
        k: sorted(v) for k, v in ids.items()
    }
    assert sorted(r.id for r in random_split(records, (0.7, 0.2, 0.1), 4)["test"]) != sorted(ids["test"])
    with pytest.raises(ValueError, match="summing to 1"):
        random_split(records, (0.5, 0.2, 0.2))


def test_split_records_random_info_roundtrip() -> None:
    splits, info = split_records(_records(50), "random", fractions=(0.6, 0.2, 0.2), seed=9)
    assert info.counts == {"train": 30, "val": 10, "test": 10}
    assert info.fractions == {"train": 0.6, "val": 0.2, "test": 0.2} and info.seed == 9
    assert SplitInfo.from_dict(json.loads(info.to_json())) == info
    test_ids = "\n".join(sorted(r.id for r in splits["test"])).encode()
    assert info.digests["test"] == hashlib.sha256(test_ids).hexdigest()[:16]
    with pytest.raises(ValueError, match="no official split"):
        split_records(_records(5), "official")
    with pytest.raises(ValueError, match="unknown split kind"):
        split_records(_records(5), "kfold")


def test_parse_csv_paths_score_range_and_split(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text(
        "path,score,split\na.jpg,0,train\nsub/b.jpg,100,test\nc.jpg,25,valid\n"
    )
    for name in ("a.jpg", "sub/b.jpg", "c.jpg"):
        _touch(tmp_path / "imgs" / name)
    parsed = parse_csv(tmp_path / "labels.csv", image_dir=tmp_path / "imgs", score_range=(0, 100))
    assert [(r.id, r.mean, r.split) for r in parsed.records] == [
        ("a.jpg", 1.0, "train"),
        ("sub/b.jpg", 10.0, "test"),
        ("c.jpg", 1 + 9 * 0.25, "val"),
    ]
    assert parsed.records[1].path == tmp_path / "imgs" / "sub" / "b.jpg"


def test_parse_csv_ids_votes_and_errors(tmp_path: Path) -> None:
    cols = [f"v{i}" for i in range(1, 11)]
    rows = ["id," + ",".join(cols), "7," + ",".join(["1"] * 10), "", "8,x" + ",1" * 9, "9" + ",0" * 10]
    (tmp_path / "votes.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ParseError, match=r"votes\.csv:4: non-numeric value 'x'"):
        parse_csv(tmp_path / "votes.csv", vote_columns=cols, suffix=".png", check_files=False)
    parsed = parse_csv(
        tmp_path / "votes.csv", vote_columns=cols, suffix=".png", check_files=False, lenient=True
    )
    assert [r.id for r in parsed.records] == ["7"] and parsed.records[0].mean == pytest.approx(5.5)
    assert parsed.records[0].path == tmp_path / "7.png"
    assert [s.line_no for s in parsed.report.skipped] == [4, 5]
    assert "zero total votes" in parsed.report.skipped[1].reason

    (tmp_path / "bad.csv").write_text("name,score\na.jpg,3\n")
    with pytest.raises(ParseError, match=r"bad\.csv:1: needs a 'path' or 'id' column"):
        parse_csv(tmp_path / "bad.csv")
    (tmp_path / "short.csv").write_text("path,score\na.jpg\n")
    with pytest.raises(ParseError, match=r"short\.csv:2: expected 2 columns, got 1"):
        parse_csv(tmp_path / "short.csv", check_files=False)
    (tmp_path / "plain.csv").write_text("path\nx.jpg\n")
    assert not parse_csv(tmp_path / "plain.csv", check_files=False).records[0].has_label


def test_aadb(tmp_path: Path) -> None:
    labels = tmp_path / "imgListFiles_label"
    labels.mkdir()
    files = {"Train": ["a.jpg 0.5", "b.jpg 0.2"], "Validation": ["c.jpg 1.0"], "Test": ["d.jpg 0.0 "]}
    for part, lines in files.items():
        (labels / f"imgList{part}Regression_score.txt").write_text("\n".join(lines) + "\n")
    for name in "abcd":
        _touch(tmp_path / "datasetImages_warp256" / f"{name}.jpg")
    parsed = load_dataset("aadb", tmp_path)
    assert [(r.id, r.split) for r in parsed.records] == [
        ("a.jpg", "train"),
        ("b.jpg", "train"),
        ("c.jpg", "val"),
        ("d.jpg", "test"),
    ]
    np.testing.assert_allclose([r.mean for r in parsed.records], [5.5, 2.8, 10.0, 1.0])
    assert parsed.records[0].path == tmp_path / "datasetImages_warp256" / "a.jpg"
    (labels / "imgListTestRegression_score.txt").write_text("d.jpg 1.5\n")
    with pytest.raises(
        ParseError, match=r"imgListTestRegression_score\.txt:1: score 1.5 .* outside \[0, 1\]"
    ):
        load_dataset("aadb", tmp_path)


def test_tad66k(tmp_path: Path) -> None:
    merge = tmp_path / "labels" / "merge"
    merge.mkdir(parents=True)
    (merge / "train.csv").write_text("image,score\n1.jpg,5.0\n2.jpg,10\n")
    (merge / "test.csv").write_text("image,score\n3.jpg,0\n")
    parsed = load_dataset("tad66k", tmp_path, check_files=False)
    assert [(r.id, r.mean, r.split) for r in parsed.records] == [
        ("1.jpg", 5.5, "train"),
        ("2.jpg", 10.0, "train"),
        ("3.jpg", 1.0, "test"),
    ]
    assert parsed.records[0].path == tmp_path / "TAD66K" / "1.jpg"


def test_para(tmp_path: Path) -> None:
    ann = tmp_path / "annotation"
    ann.mkdir()
    header = "userId,sessionId,imageName,aestheticScore_mean,qualityScore_mean\n"
    (ann / "PARA-GiaaTrain.csv").write_text(header + "u1,s1,i1.jpg,3.0,2.5\nu1,s2,i2.jpg,5,4\n")
    (ann / "PARA-GiaaTest.csv").write_text(header + "u2,s1,i3.jpg,1,1\n")
    _touch(tmp_path / "imgs" / "s1" / "i1.jpg")
    _touch(tmp_path / "imgs" / "s1" / "i3.jpg")
    parsed = load_dataset("para", tmp_path)
    assert [(r.id, r.mean, r.split) for r in parsed.records] == [
        ("s1/i1.jpg", 5.5, "train"),
        ("s1/i3.jpg", 1.0, "test"),
    ]
    assert [d.id for d in parsed.report.dropped] == ["s2/i2.jpg"]
    assert parsed.records[0].path == tmp_path / "imgs" / "s1" / "i1.jpg"


def test_koniq(tmp_path: Path) -> None:
    header = "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set\n"
    body = (
        "a.jpg,0,1,2,3,4,10,3.0,0.9,training\n"
        "b.jpg,0,0,0,0,5,5,5.0,0,validation\n"
        "c.jpg,5,0,0,0,0,5,1,0,test\n"
    )
    (tmp_path / "koniq10k_distributions_sets.csv").write_text(header + body)
    parsed = load_dataset("koniq", tmp_path, check_files=False)
    assert [(r.id, r.mean, r.split) for r in parsed.records] == [
        ("a.jpg", 5.5, "train"),
        ("b.jpg", 10.0, "val"),
        ("c.jpg", 1.0, "test"),
    ]
    assert parsed.records[0].path == tmp_path / "1024x768" / "a.jpg"
    splits, info = split_records(parsed, "official")
    assert [r.id for r in splits["val"]] == ["b.jpg"]  # the dataset's own val set, nothing carved
    assert info.counts == {"train": 1, "val": 1, "test": 1} and info.fractions == {}


def test_scale_mappings_are_linear_onto_1_to_10() -> None:
    for name, m in SCALE_MAPPINGS.items():
        assert m.to_ava(m.lo) == pytest.approx(1.0), name
        assert m.to_ava(m.hi) == pytest.approx(10.0), name
        assert m.to_ava((m.lo + m.hi) / 2) == pytest.approx(5.5), name


def test_folder_scan_recursive_sorted_and_loop_safe(tmp_path: Path) -> None:
    for name in ("b.JPG", "a/x.png", "a/deep/y.webp", "a/notes.txt", "c.tiff"):
        _touch(tmp_path / name)
    os.symlink(tmp_path / "a", tmp_path / "a" / "deep" / "loop")  # a -> deep -> loop -> a
    parsed = load_dataset("folder", tmp_path)
    assert [r.id for r in parsed.records] == ["a/deep/y.webp", "a/x.png", "b.JPG", "c.tiff"]
    assert not parsed.labelled and parsed.records[2].path == tmp_path / "b.JPG"


def test_registry() -> None:
    assert set(DATASETS) == {"ava", "csv", "aadb", "tad66k", "para", "koniq", "folder"}
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", ".")


def test_filter_available_relative_and_nested_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _touch(tmp_path / "here.jpg")
    _touch(tmp_path / "d" / "e" / "deep.jpg")
    records = [
        Record("a", Path("here.jpg")),
        Record("b", Path("gone.jpg")),
        Record("c", Path("d/e/deep.jpg")),
        Record("d", tmp_path / "d" / "nope" / "x.jpg"),
        Record("e", None),
    ]
    report = ParseReport()
    kept = filter_available(records, report, broken={"e": "unreadable"})
    assert [r.id for r in kept] == ["a", "c"]
    assert [(d.id, d.reason.split(":")[0]) for d in report.dropped] == [
        ("b", "missing file"),
        ("d", "missing file"),
        ("e", "broken"),
    ]
    assert [r.id for r in filter_available(records, ParseReport(), check_files=False)] == list("abcde")


def test_bulk_allocation_restores_gc_state() -> None:
    assert gc.isenabled()
    with bulk_allocation():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with bulk_allocation():
            pass
        assert not gc.isenabled()  # a caller's own choice to disable is left alone
    finally:
        gc.enable()
