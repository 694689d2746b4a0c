"""The Ray Data engine on a local two-CPU Ray: the same scores and errors as the local engine, resume.

One Ray instance serves the whole module (starting one costs seconds); skipped when Ray is not installed
(`pip install -e ".[ray]"`).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason='needs Ray Data: pip install -e ".[ray]"')

from conftest import console_text  # noqa: E402
from shard_data import ShardSet, make_shards  # noqa: E402
from test_shards import PROMPT_ARGS, assert_same_rows, assert_scores_match, read_folder, run, stats  # noqa: E402
from test_zeroshot import GROUPS, reference_scores  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    from clip_aesthetics.shards.engine_ray import start_local_ray

    start_local_ray(num_cpus=2)  # on 127.0.0.1 only (test_ray_listens_on_loopback_only)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> ShardSet:
    return make_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def both_engines(shard_set: ShardSet, tiny_clip_spec: str, tmp_path_factory) -> tuple[Path, list[str], list]:
    """The same shards (and one that is no tar) scored by each engine: (folder, ray's arguments, results)."""
    folder = tmp_path_factory.mktemp("engines")
    broken = folder / "in" / "broken.tar"
    broken.parent.mkdir()
    broken.write_bytes(b"not a tar" * 100)
    common = [
        "score",
        *shard_set.inputs,
        str(broken),
        "-m",
        tiny_clip_spec,
        *PROMPT_ARGS,
        "--batch-size",
        "4",
    ]
    local = run(*common, "-o", f"{folder / 'local'}/", "--workers", "0")
    on_ray = [*common, "-o", f"{folder / 'ray'}/", "--engine", "ray"]  # actors and CPUs from the cluster
    return folder, on_ray, [local, run(*on_ray)]


def test_ray_and_local_engines_agree(shard_set: ShardSet, tiny_clip_spec: str, both_engines) -> None:
    folder, _, (local, on_ray) = both_engines
    assert local.exit_code == on_ray.exit_code == 1, on_ray.output  # the broken shard, listed by both
    rows = read_folder(folder / "ray")
    assert_same_rows(rows, read_folder(folder / "local"))
    items = sorted(shard_set.images.items())
    reference = reference_scores(tiny_clip_spec, GROUPS, [path for _, path in items])
    assert_scores_match(rows, shard_set, {k: float(s) for (k, _), s in zip(items, reference, strict=True)})
    manifests = [json.loads((folder / e / "_manifest.json").read_text()) for e in ("local", "ray")]
    assert manifests[0]["scorer_id"] == manifests[1]["scorer_id"]
    assert manifests[1]["shards"]["failed"] == [
        {"shard": str(folder / "in" / "broken.tar"), "error": manifests[0]["shards"]["failed"][0]["error"]}
    ]
    for field in ("samples", "scored", "unreadable"):
        assert manifests[0][field] == manifests[1][field]
    assert manifests[0]["score"]["mean"] == pytest.approx(manifests[1]["score"]["mean"], rel=1e-6)


def test_ray_run_resumes_without_rewriting(both_engines) -> None:
    folder, args, _ = both_engines
    out = folder / "ray"
    first = read_folder(out)
    (out / "00001.parquet").unlink()  # as if killed while this shard was in flight
    (out / "_manifest.json").unlink()
    before = stats(out)
    assert run(*args).exit_code == 1  # the broken shard is retried, and fails again
    after = stats(out)
    assert all(after[name] == before[name] for name in before) and "00001.parquet" in after
    assert_same_rows(read_folder(out), first)
    other = run(*args, "--positive", "a vivid photo", "--negative", "a dull photo")
    assert other.exit_code == 2 and "another scorer" in other.output and stats(out) == after


def test_curator_set_on_both_engines(tiny_clip_spec: str, tmp_path: Path) -> None:
    """Issue 21 point 1: 8 img2dataset shards with 3 broken samples, plus an empty and an all-broken shard,
    score on Ray exactly as on the local engine (the batches mix good and bad rows in every way)."""
    from shard_data import write_curator_set, write_tar

    tars, _ = write_curator_set(tmp_path / "in")
    empty = write_tar(tmp_path / "in" / "empty.tar", [])
    broken = write_tar(tmp_path / "in" / "broken.tar", [("x.jpg", b"junk"), ("y.txt", b"no image")])
    common = ["score", *map(str, [*tars, empty, broken]), "-m", tiny_clip_spec, *PROMPT_ARGS,
              "--batch-size", "3", "--embeddings"]  # fmt: skip
    local = run(*common, "-o", f"{tmp_path / 'local'}/", "--workers", "0")
    on_ray = run(*common, "-o", f"{tmp_path / 'ray'}/", "--engine", "ray")
    assert local.exit_code == on_ray.exit_code == 0, on_ray.output
    rows = read_folder(tmp_path / "ray")
    assert_same_rows(rows, read_folder(tmp_path / "local"))
    assert rows["empty"] == [] and [r["score"] for r in rows["broken"]] == [None, None]
    assert sum(r["error"] is not None for shard in rows.values() for r in shard) == 3 + 2


def test_actors_that_leave_no_cpu_for_reading_are_refused(
    shard_set: ShardSet, tiny_clip_spec, tmp_path
) -> None:
    """Issue 22 point 3: --actors equal to the cluster's CPUs used to wait forever; now a usage error."""
    out = tmp_path / "scores"
    args = ["score", str(shard_set.tars[1]), "-m", tiny_clip_spec, "-o", f"{out}/", "--engine", "ray"]
    result = run(*args, "--actors", "2", "--cpus-per-actor", "1")
    assert result.exit_code == 2 and "--actors 1" in console_text(result)
    assert not list(out.glob("*.parquet"))


def test_ray_listens_on_loopback_only() -> None:
    """Issue 22 point 5: the Ray the tool (and this module) starts binds 127.0.0.1, not every interface."""
    from ray_sockets import ray_listening

    addresses = ray_listening()
    assert addresses, "found no listening socket of a Ray process"
    assert all(ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback for ip, _ in addresses), addresses
