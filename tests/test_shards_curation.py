"""Shard scoring as a dataset curator uses it (issue 21): untrusted shards, reruns, `filter` into the usual
places. Each test reproduces one way the tool once lost, mixed or leaked data."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clip_aesthetics.shards import Shard, iter_shard
from clip_aesthetics.shards.pipeline import BatchScorer, collate_rows, decode_row, scored_schema, shard_rows
from conftest import console_text
from shard_data import encoded, tar_bytes, write_curator_set, write_tar
from test_shards import PROMPT_ARGS, read_folder, run, stats


@pytest.fixture(scope="module")
def curator(tmp_path_factory) -> tuple[Path, list[Path], dict]:
    folder = tmp_path_factory.mktemp("curator")
    tars, metas = write_curator_set(folder / "in")
    return folder, tars, metas


def score_args(tiny_clip_spec: str, *inputs, out: Path, extra=()) -> list[str]:
    return ["score", *map(str, inputs), "-m", tiny_clip_spec, *PROMPT_ARGS, "-o", f"{out}/", "--workers", "0",
            "--batch-size", "4", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def curator_scores(curator, tiny_clip_spec: str) -> Path:
    folder = curator[0]
    out = folder / "scores"
    result = run(*score_args(tiny_clip_spec, folder / "in" / "{00000..00007}.tar", out=out))
    assert result.exit_code == 0, result.output
    return out


def all_rows(out: Path) -> list[dict]:
    return [row for rows in read_folder(out).values() for row in rows]


def test_batches_keep_one_schema_whatever_they_hold(tiny_clip_spec: str, tmp_path: Path) -> None:
    """Point 1: batches with and without errors, and with nothing readable, give tables of one schema."""
    from clip_aesthetics import ZeroShotScorer, load_backbone
    from test_zeroshot import GROUPS

    scorer = ZeroShotScorer(load_backbone(tiny_clip_spec, device="cpu"), GROUPS)
    tar = write_tar(tmp_path / "x.tar", [("a.jpg", encoded(1)), ("b.jpg", b"junk"), ("c.txt", b"no image")])
    cfg = scorer.backbone.preprocess_cfg
    rows = [decode_row(r, cfg, 10**8, None) for r in shard_rows(0, Shard(str(tar)))]
    score = BatchScorer(scorer, "fp32", embeddings=True)
    tables = [score(collate_rows(chunk)) for chunk in (rows[:1], rows[:2], rows[1:3], rows[3:])]
    want = scored_schema(distribution=False, embedding_dim=32)
    assert all(table.schema == want for table in tables)
    assert [t.column("error").to_pylist() for t in tables][2][0].startswith("not an image")
    assert pa.concat_tables(tables).num_rows == 1 + 2 + 2 + 1  # unify: no type conflicts


def test_text_in_the_image_column_is_never_opened(tiny_clip_spec: str, tmp_path: Path) -> None:
    """Point 2: a Parquet image column holding a path of this machine is an error per row, never a read."""
    private = tmp_path / "private.jpg"
    private.write_bytes(encoded(7))
    shard = tmp_path / "web.parquet"
    pq.write_table(pa.table({"key": ["a", "b"], "jpg": [str(private), "/nonexistent.jpg"]}), shard)
    out = tmp_path / "scores"
    result = run(*score_args(tiny_clip_spec, shard, out=out, extra=["--embeddings"]))
    assert result.exit_code == 1  # nothing could be read
    rows = read_folder(out)["web"]
    assert [r["error"] for r in rows] == ["image column holds text, not image bytes"] * 2
    assert all(r["score"] is None and r["embedding"] is None for r in rows)


def test_outputs_never_replace_inputs(curator_scores: Path, curator, tiny_clip_spec: str, tmp_path) -> None:
    """Point 3: `score` into the shards' own folder, `filter` into the sources or into the scores: refused."""
    folder = tmp_path / "d"
    folder.mkdir()
    good = folder / "good.parquet"
    pq.write_table(pa.table({"key": ["a"], "jpg": [encoded(3)]}), good)
    before = good.read_bytes()
    refused = run(*score_args(tiny_clip_spec, good, out=folder))
    assert (
        refused.exit_code == 2
        and good.read_bytes() == before
        and sorted(os.listdir(folder)) == ["good.parquet"]
    )
    sources = curator[0] / "in"
    source_stats, score_stats = stats_of(sources), stats_of(curator_scores)
    for target in (sources, curator_scores):
        result = run("filter", str(curator_scores), "--min-score", "0", "-o", f"{target}/")
        assert result.exit_code == 2
    named_like_a_score_file = run("filter", str(curator_scores), "--min-score", "0", "-o",
                                  str(curator_scores / "00000.parquet"))  # fmt: skip
    assert named_like_a_score_file.exit_code == 2
    assert stats_of(sources) == source_stats and stats_of(curator_scores) == score_stats


def stats_of(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def samples_in(folder: Path) -> list[tuple[str, str | None, bytes | None]]:
    return [
        (path.name, s.key, s.data)
        for path in sorted(folder.glob("*.tar")) + sorted(folder.glob("*.parquet"))
        for s in iter_shard(Shard(str(path)))
    ]


def test_filter_rerun_replaces_its_output_whole(curator_scores: Path, tmp_path: Path) -> None:
    """Point 4: a stricter cut into the same folder leaves only the samples above the new cut."""
    scores = sorted(r["score"] for r in all_rows(curator_scores) if r["score"] is not None)
    out = tmp_path / "best"
    assert run("filter", str(curator_scores), "--min-score", str(scores[0]), "-o", f"{out}/").exit_code == 0
    strict = scores[-6]
    assert run("filter", str(curator_scores), "--min-score", str(strict), "-o", f"{out}/").exit_code == 0
    assert len(samples_in(out)) == sum(s >= strict for s in scores) == 6


def test_filter_copies_exactly_the_selected_samples(tiny_clip_spec: str, tmp_path: Path) -> None:
    """Point 5: a key twice in a tar, null keys in Parquet, a source changed after scoring."""
    src = tmp_path / "src"
    src.mkdir()
    images = [encoded(i) for i in range(7)]  # all different: no two samples tie
    write_tar(src / "dup.tar", [("a.jpg", images[0]), ("b.jpg", images[1]), ("a.jpg", images[2])])
    pq.write_table(pa.table({"key": [None, "k1", None], "jpg": images[3:6]}), src / "nulls.parquet")
    out = tmp_path / "scores"
    run(*score_args(tiny_clip_spec, src / "dup.tar", src / "nulls.parquet", out=out))
    rows = all_rows(out)
    best = max(rows, key=lambda r: r["score"])  # the one sample selected
    picked = tmp_path / "picked"
    result = run("filter", str(out), "--min-score", str(best["score"]), "-o", f"{picked}/")
    assert result.exit_code == 0, result.output
    want = images[best["pos"] + (0 if best["shard"].endswith(".tar") else 3)]
    assert [data for _, _, data in samples_in(picked)] == [want]
    everything = tmp_path / "all"
    assert run("filter", str(out), "--min-score", "0", "-o", f"{everything}/").exit_code == 0
    assert sorted(data for _, _, data in samples_in(everything)) == sorted(images[:6])
    write_tar(src / "dup.tar", [("a.jpg", images[6]), ("b.jpg", images[1]), ("a.jpg", images[2])])  # changed
    changed = run("filter", str(out), "--min-score", "0", "-o", f"{tmp_path / 'again'}/")
    assert changed.exit_code == 1 and "dup.tar" in console_text(changed)
    copied = [data for name, _, data in samples_in(tmp_path / "again") if name == "dup.tar"]
    assert images[6] not in copied and copied == images[1:3]  # the unchanged samples, checked, are copied


def test_key_lists_in_the_scores_folder_are_not_scores(curator_scores: Path, tmp_path: Path) -> None:
    """Point 6: a key list written inside the scores folder is not counted as a score shard."""
    scored = sum(r["score"] is not None for r in all_rows(curator_scores))
    keys = curator_scores / "best-keys.parquet"
    assert run("filter", str(curator_scores), "--top-percent", "50", "-o", str(keys)).exit_code == 0
    try:
        result = run("filter", str(curator_scores), "--min-score", "0", "-o", str(tmp_path / "k.parquet"))
        assert result.exit_code == 0, result.output
        assert pq.read_table(tmp_path / "k.parquet").num_rows == scored
    finally:
        keys.unlink()


def test_rerun_with_other_settings_is_refused(curator, tiny_clip_spec: str, tmp_path: Path) -> None:
    """Points 7 and 12: precision, max-pixels, key column are part of a folder's identity."""
    tars = curator[1]
    out = tmp_path / "scores"
    assert run(*score_args(tiny_clip_spec, tars[0], out=out)).exit_code == 0
    (out / "00000.parquet").unlink()
    before = stats(out)
    for extra in (["--precision", "bf16"], ["--max-pixels", "1000"], ["--metadata", "url"]):
        result = run(*score_args(tiny_clip_spec, tars[0], out=out), *extra)
        assert result.exit_code == 2 and "other settings" in console_text(result), extra
    assert stats(out) == before
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"key": ["a", "b"], "id": ["x", "y"], "jpg": [encoded(1), encoded(2)]}), parquet)
    assert run(*score_args(tiny_clip_spec, parquet, out=tmp_path / "p")).exit_code == 0
    by_id = run(*score_args(tiny_clip_spec, parquet, out=tmp_path / "p", extra=["--key-column", "id"]))
    assert by_id.exit_code == 2 and [r["key"] for r in read_folder(tmp_path / "p")["p"]] == ["a", "b"]


def test_a_changed_source_is_rescored(tiny_clip_spec: str, tmp_path: Path) -> None:
    """Point 7: a shard whose content changed since it was scored is scored again, not 'already done'."""
    tar = write_tar(tmp_path / "s.tar", [("a.jpg", encoded(1)), ("b.jpg", encoded(2))])
    out = tmp_path / "scores"
    assert run(*score_args(tiny_clip_spec, tar, out=out)).exit_code == 0
    first = read_folder(out)["s"]
    write_tar(tar, [("a.jpg", encoded(5)), ("b.jpg", encoded(2))])  # same size class, other image
    assert run(*score_args(tiny_clip_spec, tar, out=out)).exit_code == 0
    second = read_folder(out)["s"]
    assert second[0]["digest"] != first[0]["digest"] and second[1]["digest"] == first[1]["digest"]
    assert second[0]["score"] != first[0]["score"]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["shards"]["rescored_changed_source"] == [str(tar)]


def test_sigterm_keeps_finished_shards_and_says_so(tiny_clip_spec: str, tmp_path: Path) -> None:
    """Point 8: a stopped run exits 130 naming the shards it kept (not 'nothing written')."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for s in range(12):
        write_tar(inputs / f"{s:05d}.tar", [(f"{s}-{i}.jpg", encoded(i)) for i in range(3)])
    out = tmp_path / "scores"
    args = score_args(tiny_clip_spec, inputs / "{00000..00011}.tar", out=out, extra=["--batch-size", "1"])
    command = [sys.executable, "-m", "clip_aesthetics", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(out.glob("*.parquet")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    written = list(out.glob("0*.parquet"))
    if process.returncode == 0:
        pytest.skip("the run finished before the signal")
    assert process.returncode == 130 and written
    assert "shards written this run" in " ".join((stdout + stderr).split())
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["shards"]["written"] == len(written)


@pytest.mark.parametrize(
    "args",
    [["--min-score", "nan"], ["--top-percent", "0"], ["--top-percent", "-5"], ["--min-score", "inf"]],
)
def test_filter_refuses_thresholds_that_select_nothing_sensible(curator_scores: Path, tmp_path, args) -> None:
    """Point 9: NaN, infinite or 0% thresholds are usage errors, not an empty or one-sample result."""
    result = run("filter", str(curator_scores), *args, "-o", str(tmp_path / "k.txt"))
    assert result.exit_code == 2 and not (tmp_path / "k.txt").exists()


@pytest.mark.parametrize("content", [b"", b"PAR1 not really", "foreign"])
def test_unreadable_score_files_are_named(curator_scores: Path, tmp_path: Path, content) -> None:
    """Point 9: a 0-byte, broken or foreign .parquet in the scores folder is named in the error."""
    scores = tmp_path / "scores"
    scores.mkdir()
    for path in curator_scores.glob("*.parquet"):
        (scores / path.name).write_bytes(path.read_bytes())
    odd = scores / "zz-odd.parquet"
    if content == "foreign":
        pq.write_table(pa.table({"x": [1]}), odd)
    else:
        odd.write_bytes(content)
    result = run("filter", str(scores), "--min-score", "0", "-o", str(tmp_path / "k.txt"))
    assert result.exit_code == 2 and "zz-odd.parquet" in console_text(result)


def test_a_member_repeated_back_to_back_is_two_samples(tmp_path: Path) -> None:
    """Point 10: `a.jpg a.jpg` in a row is two samples with the same key, not one image silently dropped."""
    tar = write_tar(tmp_path / "r.tar", [("a.jpg", encoded(1)), ("a.jpg", encoded(2)), ("b.jpg", encoded(3))])
    samples = list(iter_shard(Shard(str(tar))))
    assert [(s.key, s.data) for s in samples] == [("a", encoded(1)), ("a", encoded(2)), ("b", encoded(3))]


def member_offsets(data: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return [info.offset for info in archive.getmembers()]


@pytest.mark.parametrize("where", ["at a header", "inside a header", "without the end blocks", "inside data"])
def test_torn_tars_are_never_complete(tiny_clip_spec: str, tmp_path: Path, where: str) -> None:
    """Point 11: a tar cut anywhere ends in a 'torn tar' row; the run exits 1 and lists the shard as torn."""
    members = [(f"s{i}.jpg", encoded(i)) for i in range(10)]
    data = tar_bytes(members)
    offsets = member_offsets(data)
    end_of_members = offsets[-1] + 512 + ((len(members[-1][1]) + 511) // 512) * 512
    cut = {"at a header": offsets[4], "inside a header": offsets[4] + 100,
           "without the end blocks": end_of_members, "inside data": offsets[4] + 600}[where]  # fmt: skip
    tar = tmp_path / "00003.tar"
    tar.write_bytes(data[:cut])
    samples = list(iter_shard(Shard(str(tar))))
    assert samples[-1].error.startswith("torn tar")
    assert [s.data for s in samples if s.error is None] == [m[1] for m in members[: len(samples) - 1]]
    out = tmp_path / "scores"
    result = run(*score_args(tiny_clip_spec, tar, out=out))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert result.exit_code == 1 and [t["shard"] for t in manifest["shards"]["torn"]] == [str(tar)]
    rows = read_folder(out)["00003"]
    assert rows[-1]["error"].startswith("torn tar") and rows[-1]["score"] is None


def test_a_missing_shard_fails_alone_and_is_retried(curator, tiny_clip_spec: str, tmp_path: Path) -> None:
    """Point 12: a gap in a brace pattern is a failed shard (exit 1, in the manifest), retried next run."""
    tars = curator[1]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for tar in tars[:3]:
        (inputs / tar.name).write_bytes(tar.read_bytes())
    (inputs / "00001.tar").unlink()
    out = tmp_path / "scores"
    args = score_args(tiny_clip_spec, inputs / "{00000..00002}.tar", out=out)
    assert run(*args).exit_code == 1
    manifest = json.loads((out / "_manifest.json").read_text())
    assert [f["shard"] for f in manifest["shards"]["failed"]] == [str(inputs / "00001.tar")]
    assert sorted(p.name for p in out.glob("*.parquet")) == ["00000.parquet", "00002.parquet"]
    (inputs / "00001.tar").write_bytes(tars[1].read_bytes())
    assert run(*args).exit_code == 0
    assert sorted(p.name for p in out.glob("*.parquet")) == [
        "00000.parquet",
        "00001.parquet",
        "00002.parquet",
    ]


def test_img2dataset_metadata_passes_through(curator, curator_scores: Path, tmp_path: Path) -> None:
    """Point 13: url, caption, width and height of each sample's .json are columns of its score row."""
    _, _, metas = curator
    rows = all_rows(curator_scores)
    assert len(rows) == len(metas)
    for row in rows:
        meta = metas[Path(row["shard"]).stem, row["key"]]
        assert {k: row[k] for k in ("url", "caption", "width", "height")} == {
            k: meta[k] for k in ("url", "caption", "width", "height")
        }


def test_parquet_metadata_columns_pass_through(tiny_clip_spec: str, tmp_path: Path) -> None:
    """Point 13, Parquet shards: the named columns are copied (missing ones stay empty)."""
    parquet = tmp_path / "p.parquet"
    table = {"key": ["a"], "jpg": [encoded(1)], "url": ["https://x/a.jpg"], "width": [96], "status": ["ok"]}
    pq.write_table(pa.table(table), parquet)
    out = tmp_path / "pq"
    assert run(*score_args(tiny_clip_spec, parquet, out=out)).exit_code == 0
    (row,) = read_folder(out)["p"]
    assert (row["url"], row["width"], row["caption"], row["height"]) == ("https://x/a.jpg", 96, None, None)
    assert "status" not in row


def test_curator_set_broken_samples(curator, curator_scores: Path) -> None:
    """The 8-shard set: 40 rows, the three broken samples as errors, every other sample scored."""
    rows = all_rows(curator_scores)
    errors = {(Path(r["shard"]).stem, r["key"]): r["error"] for r in rows if r["error"]}
    assert sorted(errors) == [("00001", "000010002"), ("00003", "000030004"), ("00005", "000050001")]
    assert all(r["score"] is not None for r in rows if not r["error"])
    assert np.isfinite([r["score"] for r in rows if not r["error"]]).all()


def test_relative_shard_paths_are_recorded_absolute(tiny_clip_spec: str, tmp_path: Path, monkeypatch) -> None:
    """Issue 22 point 3: shards named relative to the driver's folder are recorded (and sent) absolute, so
    every process, and a later `filter` run from another folder, opens the same files."""
    (tmp_path / "in").mkdir()
    write_tar(tmp_path / "in" / "00000.tar", [("a.jpg", encoded(1)), ("b.jpg", encoded(2))])
    monkeypatch.chdir(tmp_path)
    assert run(*score_args(tiny_clip_spec, "in/{00000..00000}.tar", out=Path("scores"))).exit_code == 0
    rows = read_folder(tmp_path / "scores")["00000"]
    assert {r["shard"] for r in rows} == {str(tmp_path / "in" / "00000.tar")}
    monkeypatch.chdir(tmp_path / "in")  # filter from elsewhere still finds the sources
    assert (
        run("filter", str(tmp_path / "scores"), "--min-score", "0", "-o", f"{tmp_path / 'best'}/").exit_code
        == 0
    )
    assert [data for _, _, data in samples_in(tmp_path / "best")] == [encoded(1), encoded(2)]
