"""Shard scoring, local engine: readers, per-shard Parquet outputs, manifest, resume, scorer identity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clip_aesthetics import ZeroShotScorer, load_backbone
from clip_aesthetics.cli import app
from clip_aesthetics.shards import (
    EngineOptions,
    Shard,
    ShardReadError,
    expand_braces,
    iter_shard,
    score_shards,
)
from clip_aesthetics.shards.writer import HIST_WIDTH
from shard_data import ShardSet, make_shards, write_tar
from test_zeroshot import GROUPS, reference_scores

PROMPT_ARGS = [f"--positive={t}" for t in GROUPS.positive] + [f"--negative={t}" for t in GROUPS.negative]
PROMPT_ARGS += ["--precision", "fp32"]  # compared with open_clip in fp32 (auto may pick bf16 on this CPU)


def run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> ShardSet:
    return make_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def expected(shard_set: ShardSet, tiny_clip_spec: str) -> dict[tuple[str, str], float]:
    """Every readable sample's score by open_clip alone, from the same image saved as a file."""
    items = sorted(shard_set.images.items())
    scores = reference_scores(tiny_clip_spec, GROUPS, [path for _, path in items])
    return {key: float(s) for (key, _), s in zip(items, scores, strict=True)}


def read_folder(out: Path) -> dict[str, list[dict]]:
    return {p.stem: pq.read_table(p).to_pylist() for p in sorted(out.glob("*.parquet"))}


def assert_scores_match(rows: dict[str, list[dict]], shard_set: ShardSet, expected: dict, atol=1e-4) -> None:
    """Keys in shard order; scores as open_clip's; each unreadable sample a row with its reason, no score."""
    assert set(rows) == set(shard_set.keys)
    for name, shard_rows in rows.items():
        assert [r["key"] for r in shard_rows] == shard_set.keys[name]
        for row in shard_rows:
            if (name, row["key"]) in shard_set.errors:
                assert shard_set.errors[name, row["key"]] in row["error"]
                assert row["score"] is None and row["label"] is None
            else:
                assert row["error"] is None
                assert row["score"] == pytest.approx(expected[name, row["key"]], abs=atol)
                assert row["label"] == ("good" if row["raw"] > 0 else "bad")


def test_expand_braces() -> None:
    assert expand_braces("s/{0008..0011}.tar") == [f"s/{i:04d}.tar" for i in range(8, 12)]
    assert expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError, match="empty range"):
        expand_braces("{5..3}.tar")


def test_tar_reader_groups_members_by_key(shard_set: ShardSet) -> None:
    samples = list(iter_shard(Shard(str(shard_set.tars[0]))))
    assert [s.key for s in samples] == shard_set.keys["00000"]
    by_key = {s.key: s for s in samples}
    assert by_key["a000"].data == shard_set.images["00000", "a000"].read_bytes()  # the .jpg, not the .txt
    assert by_key["a100"].data[:4] == b"\x89PNG"
    assert by_key["a102"].data is None and "found: txt" in by_key["a102"].error
    cut = list(iter_shard(Shard(str(shard_set.tars[2]))))
    assert [s.error is None for s in cut] == [True, True, True, False]


def test_unreadable_shards_raise(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"this is no tar file" * 100)
    with pytest.raises(ShardReadError, match="not a readable tar"):
        list(iter_shard(Shard(str(tmp_path / "x.tar"))))
    (tmp_path / "x.parquet").write_bytes(b"PAR1 nothing")
    with pytest.raises(ShardReadError, match="Parquet"):
        list(iter_shard(Shard(str(tmp_path / "x.parquet"))))


def test_parquet_columns(shard_set: ShardSet, tmp_path: Path) -> None:
    samples = list(iter_shard(Shard(str(shard_set.parquet))))
    assert [s.key for s in samples] == shard_set.keys["data"]
    by_caption = list(iter_shard(Shard(str(shard_set.parquet)), key_column="caption"))
    assert by_caption[-1].key == "failed download"
    with pytest.raises(ShardReadError, match="no image column 'pixels'"):
        list(iter_shard(Shard(str(shard_set.parquet)), image_column="pixels"))


def test_cli_scores_shards_into_a_folder(
    shard_set: ShardSet, expected: dict, tmp_path, tiny_clip_spec
) -> None:
    out = tmp_path / "scores"
    result = run(
        "score", *shard_set.inputs, "-m", tiny_clip_spec, *PROMPT_ARGS, "-o", f"{out}/", "--workers", "2"
    )
    assert result.exit_code == 1, result.output  # 00002.tar is torn: its rows are kept, the run says so
    rows = read_folder(out)
    assert_scores_match(rows, shard_set, expected)
    first = pq.read_table(out / "00000.parquet")
    assert first.column_names == [
        "key", "shard", "pos", "score", "label", "raw", "error", "digest", "url", "caption", "width", "height"
    ]  # fmt: skip
    assert set(first.column("shard").to_pylist()) == {str(shard_set.tars[0])}
    manifest = json.loads((out / "_manifest.json").read_text())
    scores = np.array([r["score"] for rs in rows.values() for r in rs if r["score"] is not None])
    assert manifest["samples"] == sum(map(len, shard_set.keys.values()))
    assert manifest["scored"] == len(scores) and manifest["unreadable"] == len(shard_set.errors)
    assert {k: manifest["shards"][k] for k in ("total", "written", "failed")} == {
        "total": 4, "written": 4, "failed": []
    }  # fmt: skip
    assert [t["shard"] for t in manifest["shards"]["torn"]] == [str(shard_set.tars[2])]
    assert manifest["score"]["mean"] == pytest.approx(scores.mean(), abs=1e-6)
    assert manifest["score"]["max"] == pytest.approx(scores.max(), abs=1e-6)
    for p in (10, 50, 90):
        exact = np.quantile(scores, p / 100, method="inverted_cdf")
        assert manifest["score"]["percentiles"][f"p{p}"] == pytest.approx(
            np.floor(exact / HIST_WIDTH + 1e-9) * HIST_WIDTH, abs=1e-9
        )
    for threshold, count in manifest["score"]["at_least"].items():
        assert count == int((scores >= float(threshold)).sum())
    assert manifest["scorer"]["prompts"]["positive"] == list(GROUPS.positive)


def assert_same_rows(got: dict[str, list[dict]], want: dict[str, list[dict]]) -> None:
    """Same keys, errors and labels; scores equal up to fp32 rounding (batches are composed differently)."""
    assert got.keys() == want.keys()
    for name, rows in got.items():
        assert [(r["key"], r["error"]) for r in rows] == [(r["key"], r["error"]) for r in want[name]]
        for a, b in zip(rows, want[name], strict=True):
            for column in ("score", "raw"):
                assert a[column] == (None if b[column] is None else pytest.approx(b[column], rel=1e-5))


def stats(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.parquet")}


def test_resume_skips_finished_shards(shard_set: ShardSet, tiny_clip_spec: str, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    scorer = ZeroShotScorer(load_backbone(tiny_clip_spec, device="cpu"), GROUPS)
    options = EngineOptions(workers=0, batch_size=2, precision="fp32")
    score_shards(shard_set.inputs, str(out), scorer, options, progress=False)
    before, first = stats(out), read_folder(out)
    # a killed run: two shards never written, one torn (not by us: our writes are atomic), a stale temp file
    (out / "00001.parquet").unlink()
    (out / "data.parquet").unlink()
    (out / "00002.parquet").write_bytes((out / "00002.parquet").read_bytes()[:100])
    (out / ".00001.parquet.tmp123.456").write_bytes(b"partial")
    (out / "_manifest.json").unlink()
    time.sleep(0.01)
    report = score_shards(shard_set.inputs, str(out), scorer, options, progress=False)
    assert report.skipped == 1 and sorted(Path(p).name for p in report.written) == [
        "00001.parquet", "00002.parquet", "data.parquet"
    ]  # fmt: skip
    assert stats(out)["00000.parquet"] == before["00000.parquet"]  # not rewritten: same inode, same mtime
    assert_same_rows(read_folder(out), first)  # the same rows, each once
    keys = [(r["shard"], r["key"]) for rows in read_folder(out).values() for r in rows]
    assert len(keys) == len(set(keys)) == json.loads((out / "_manifest.json").read_text())["samples"]
    again = score_shards(shard_set.inputs, str(out), scorer, options, progress=False)
    assert again.skipped == 4 and not again.written and stats(out) == stats(out)


def test_another_scorer_is_refused_not_mixed(
    shard_set: ShardSet, tiny_clip_spec: str, tmp_path: Path
) -> None:
    out = tmp_path / "scores"
    args = ["score", *shard_set.inputs, "-m", tiny_clip_spec, "-o", f"{out}/", "--workers", "0"]
    assert run(*args, *PROMPT_ARGS).exit_code == 1  # the torn 00002.tar
    (out / "00001.parquet").unlink()  # as if killed before this shard
    before = stats(out)
    other = run(*args, "--positive", "a vivid photo", "--negative", "a dull photo")
    assert other.exit_code == 2 and "another scorer" in other.output
    assert stats(out) == before and not (out / "00001.parquet").exists()
    redone = run(*args, "--positive", "a vivid photo", "--negative", "a dull photo", "--overwrite")
    assert redone.exit_code == 1, redone.output
    ids = {
        json.loads(pq.read_schema(p).metadata[b"clip_aesthetics"])["scorer_id"] for p in out.glob("*.parquet")
    }
    assert len(ids) == 1 and ids == {json.loads((out / "_manifest.json").read_text())["scorer_id"]}


def test_embeddings_column(shard_set: ShardSet, tiny_clip_spec: str, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    scorer = ZeroShotScorer(load_backbone(tiny_clip_spec, device="cpu"), GROUPS)
    score_shards(
        [str(shard_set.tars[0])],
        str(out),
        scorer,
        EngineOptions(workers=0, embeddings=True, precision="fp32"),
    )
    table = pq.read_table(out / "00000.parquet")
    embedding_type = table.schema.field("embedding").type
    assert embedding_type.list_size == 32 and str(embedding_type.value_type) == "halffloat"
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip_spec)
    for row in table.to_pylist():
        if row["error"] is not None:
            assert row["embedding"] is None
            continue
        image = preprocess(Image.open(shard_set.images["00000", row["key"]])).unsqueeze(0)
        with torch.inference_mode():
            reference = model.eval().encode_image(image)[0].numpy()
        np.testing.assert_allclose(
            np.array(row["embedding"], dtype=np.float32), reference, rtol=2e-3, atol=2e-3
        )


def test_distribution_head_writes_pred_columns(
    shard_set: ShardSet, tiny_clip_spec: str, tmp_path: Path
) -> None:
    from clip_aesthetics.scorers.probe import ProbeHead, ProbeScorer

    backbone = load_backbone(tiny_clip_spec, device="cpu")
    torch.manual_seed(0)
    dim = backbone.feature_dim
    head = ProbeHead(torch.zeros(dim), torch.ones(dim), torch.randn(10, dim), torch.randn(10), "distribution")
    scorer = ProbeScorer(backbone, head)
    out = tmp_path / "scores"
    score_shards([str(shard_set.tars[1])], str(out), scorer, EngineOptions(workers=0, precision="fp32"))
    table = pq.read_table(out / "00001.parquet")
    assert table.column_names[6:16] == [f"pred_{k}" for k in range(1, 11)]
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip_spec)
    for row in table.to_pylist():
        image = preprocess(Image.open(shard_set.images["00001", row["key"]])).unsqueeze(0)
        with torch.inference_mode():
            reference = head(model.eval().encode_image(image))
        np.testing.assert_allclose(
            [row[f"pred_{k}"] for k in range(1, 11)], reference.distribution[0], atol=1e-4
        )
        assert row["score"] == pytest.approx(float(reference.score[0]), abs=1e-4)


def test_a_broken_shard_fails_alone_and_is_retried(shard_set: ShardSet, tiny_clip_spec, tmp_path) -> None:
    broken = tmp_path / "in" / "00009.tar"
    broken.parent.mkdir()
    broken.write_bytes(b"not a tar" * 200)
    out = tmp_path / "scores"
    args = ["score", str(shard_set.tars[1]), str(broken), "-m", tiny_clip_spec, *PROMPT_ARGS, "-o", f"{out}/"]
    result = run(*args, "--workers", "0")
    assert result.exit_code == 1 and "1 shards could not be read" in result.output
    assert sorted(p.name for p in out.glob("*.parquet")) == ["00001.parquet"]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["shards"]["failed"][0]["shard"] == str(broken)
    write_tar(broken, [("z.jpg", shard_set.images["00001", "dir/b000"].read_bytes())])  # the copy is repaired
    assert run(*args, "--workers", "0").exit_code == 0
    assert sorted(p.name for p in out.glob("*.parquet")) == ["00001.parquet", "00009.parquet"]


@pytest.mark.parametrize(
    ("inputs", "output", "message"),
    [
        (["{dir}/00000.tar"], "{tmp}/ranked.csv", "--output FOLDER/"),
        (["{dir}/nope.tar"], "{tmp}/out/", "no such shard"),
        (["{dir}/00000.tar", "{dir}/files"], "{tmp}/out/", "not {dir}/files"),
    ],
)
def test_usage_errors(shard_set, tiny_clip_spec, tmp_path, inputs, output, message) -> None:
    fill = {"dir": shard_set.folder, "tmp": tmp_path}
    result = run(
        "score", *[i.format(**fill) for i in inputs], "-m", tiny_clip_spec, "-o", output.format(**fill)
    )
    assert result.exit_code == 2 and message.format(**fill) in result.output


def test_killed_run_resumes(shard_set: ShardSet, tiny_clip_spec: str, tmp_path: Path) -> None:
    """SIGKILL a real run once its first shard is written; the rerun keeps that file and adds the rest."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(12):
        (inputs / f"{i:05d}.tar").write_bytes(shard_set.tars[1].read_bytes())
    out = tmp_path / "scores"
    pattern = f"{inputs}/{{00000..00011}}.tar"
    command = [sys.executable, "-m", "clip_aesthetics", "score", pattern, "-m", tiny_clip_spec, *PROMPT_ARGS,
               "-o", f"{out}/", "--workers", "0", "--batch-size", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*.parquet")) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    done = stats(out)
    if len(done) == 12 or not done:
        pytest.skip(f"the run was not caught mid-way ({len(done)} of 12 shards written)")
    assert run(*command[3:]).exit_code == 0  # the same command again, in this process
    after = stats(out)
    assert len(after) == 12 and all(after[name] == done[name] for name in done)
    rows = read_folder(out)
    assert all([r["key"] for r in rs] == shard_set.keys["00001"] for rs in rows.values())


@pytest.fixture(scope="module")
def scored(shard_set: ShardSet, tiny_clip_spec: str, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scored") / "scores"
    scorer = ZeroShotScorer(load_backbone(tiny_clip_spec, device="cpu"), GROUPS)
    score_shards(
        shard_set.inputs, str(out), scorer, EngineOptions(workers=0, precision="fp32"), progress=False
    )
    return out


def all_scores(folder: Path) -> dict[tuple[str, str], float]:
    rows = [r for rs in read_folder(folder).values() for r in rs]
    return {(r["shard"], r["key"]): r["score"] for r in rows if r["score"] is not None}


def test_filter_top_percent_keys(scored: Path, tmp_path: Path) -> None:
    scores = all_scores(scored)
    result = run("filter", str(scored), "--top-percent", "25", "-o", str(tmp_path / "best.parquet"))
    assert result.exit_code == 0, result.output
    kept = pq.read_table(tmp_path / "best.parquet").to_pylist()
    best = sorted(scores, key=scores.get, reverse=True)[: int(np.ceil(0.25 * len(scores)))]
    assert {(r["shard"], r["key"]) for r in kept} == set(best)
    assert run("filter", str(scored), "--min-score", "5.5", "-o", str(tmp_path / "k.txt")).exit_code == 0
    keys = (tmp_path / "k.txt").read_text().split()
    assert sorted(keys) == sorted(k for (_, k), s in scores.items() if s >= 5.5)


def test_filter_writes_new_shards(scored: Path, shard_set: ShardSet, tmp_path: Path) -> None:
    scores = all_scores(scored)
    cut = float(np.median(list(scores.values())))
    out = tmp_path / "best"
    result = run("filter", str(scored), "--min-score", str(cut), "-o", f"{out}/")
    assert result.exit_code == 0, result.output
    want = {(Path(shard).name, key) for (shard, key), s in scores.items() if s >= cut}
    got = set()
    for path in [*sorted(out.glob("0*.tar")), out / "data.parquet"]:
        got |= {(path.name, s.key) for s in iter_shard(Shard(str(path)))}
        for sample in iter_shard(Shard(str(path))):  # the images are the source's bytes
            name = Shard(str(path)).name
            assert sample.data == shard_set.images[name, sample.key].read_bytes()
    assert got == want
    with tarfile.open(out / "00000.tar") as archive:  # a sample keeps all its members
        names = archive.getnames()
    assert {n.split(".", 1)[1] for n in names if n.startswith("a000")} <= {"jpg", "txt", "json"}


def test_filter_usage_errors(scored: Path, tmp_path: Path) -> None:
    both = run("filter", str(scored), "--min-score", "5", "--top-percent", "5", "-o", str(tmp_path / "k.txt"))
    assert both.exit_code == 2 and "exactly one" in both.output
    empty = run("filter", str(tmp_path), "--min-score", "5", "-o", str(tmp_path / "k.txt"))
    assert empty.exit_code == 2 and "no score files" in empty.output


def test_fsspec_urls_in_and_out(shard_set: ShardSet, expected: dict, tiny_clip_spec: str) -> None:
    """Shards behind an fsspec URL (a glob of memory:// objects), scores written back to an fsspec folder."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for tar in shard_set.tars:
        fs.pipe_file(f"/bucket/in/{tar.name}", tar.read_bytes())
    fs.pipe_file("/bucket/in/data.parquet", shard_set.parquet.read_bytes())
    scorer = ZeroShotScorer(load_backbone(tiny_clip_spec, device="cpu"), GROUPS)
    options = EngineOptions(workers=0, precision="fp32")
    inputs = ["memory://bucket/in/*.tar", "memory://bucket/in/data.parquet"]
    report = score_shards(inputs, "memory://bucket/scores/", scorer, options, progress=False)
    assert report.manifest["samples"] == sum(map(len, shard_set.keys.values()))
    rows = {}
    for name in shard_set.keys:
        with fs.open(f"/bucket/scores/{name}.parquet", "rb") as handle:
            rows[name] = pq.read_table(handle).to_pylist()
    assert_scores_match(rows, shard_set, expected)
    source = rows["00001"][0]["shard"]  # as fsspec names what the glob found
    assert source.startswith("memory://") and source.endswith("/bucket/in/00001.tar")
    again = score_shards(inputs, "memory://bucket/scores/", scorer, options, progress=False)
    assert again.skipped == 4 and not again.written
    fs.rm("/bucket", recursive=True)
