"""Torch threads beside decoding workers (issue 22, point 4): the model gets the cores the workers leave."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clip_aesthetics import ZeroShotScorer, load_backbone
from clip_aesthetics.encoders import compute
from clip_aesthetics.encoders.compute import model_threads
from clip_aesthetics.encoders.prompts import PromptGroups
from clip_aesthetics.runs.score import iter_scored

GROUPS = PromptGroups(("a good photo",), ("a bad photo",))
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def eight_cores(monkeypatch):
    """A machine of 8 cores with torch at its default of one thread per core (restored after)."""
    monkeypatch.setattr(compute, "usable_cores", lambda: 8)
    monkeypatch.setattr(compute, "idle_cores", lambda: 8.0)  # nothing else running
    before = torch.get_num_threads()
    torch.set_num_threads(8)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("workers", "device", "expected"),
    [
        (1, CPU, 7),  # one decoder: seven cores for the model
        (2, CPU, 6),
        (8, CPU, 1),  # at least one thread
        (12, CPU, 1),
        (0, CPU, 8),  # decoding in this process (or encoding prompts) takes turns with the model
        (2, CUDA, 8),  # the model is on the GPU: its CPU threads are not the decoders' competition
        (2, None, 8),  # no model named (e.g. verifying a dataset)
    ],
)
def test_rule(eight_cores, workers: int, device, expected: int) -> None:
    assert model_threads(workers, device) == expected


@pytest.mark.parametrize(
    ("idle", "workers", "expected"), [(5.6, 2, 4), (1.3, 1, 1), (1.3, 0, 1), (0.0, 0, 1)]
)
def test_other_programs_take_their_cores_too(eight_cores, monkeypatch, idle, workers, expected) -> None:
    monkeypatch.setattr(compute, "idle_cores", lambda: idle)
    assert model_threads(workers, CPU) == expected


def test_idle_cores_are_measured() -> None:
    assert 0.0 <= compute.idle_cores() <= compute.usable_cores() + 0.01


def test_prompts_encode_on_the_idle_cores(eight_cores, tiny_clip_spec: str, monkeypatch) -> None:
    from clip_aesthetics.encoders.prompts import encode_texts

    backbone = load_backbone(tiny_clip_spec, device="cpu")
    monkeypatch.setattr(compute, "idle_cores", lambda: 1.2)  # another program holds 7 of 8 cores
    seen: list[int] = []
    hook = backbone.model.transformer.resblocks[0].register_forward_pre_hook(
        lambda *_: seen.append(torch.get_num_threads())
    )
    try:
        encode_texts(backbone, ["a good photo", "a picture of a dog"], use_cache=False)
    finally:
        hook.remove()
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 8


def test_never_more_than_the_users_setting(eight_cores) -> None:
    torch.set_num_threads(3)  # OMP_NUM_THREADS=3, or a Ray actor holding 3 CPUs
    assert model_threads(1, CPU) == 3


def _threads_in_calls(scorer, method: str, monkeypatch) -> list[int]:
    """Torch's thread count at each call of ``scorer.<method>`` (the model's work)."""
    seen: list[int] = []
    original = getattr(scorer, method)
    monkeypatch.setattr(
        scorer, method, lambda *a, **k: seen.append(torch.get_num_threads()) or original(*a, **k)
    )
    return seen


def test_folder_scoring_leaves_the_decoders_their_cores(
    eight_cores, tiny_clip_spec: str, photo_dir: Path, monkeypatch
) -> None:
    scorer = ZeroShotScorer(load_backbone(tiny_clip_spec, device="cpu"), GROUPS)
    seen = _threads_in_calls(scorer, "score_images", monkeypatch)
    paths = sorted(p for p in photo_dir.rglob("*") if p.is_file())
    batches = list(iter_scored(scorer, paths, batch_size=3, workers=2))
    assert sum(len(b.positions) for b in batches) == len(paths)
    assert seen and set(seen) == {6}  # before: 8 threads beside 2 decoding processes
    assert torch.get_num_threads() == 8  # restored once the run is over


def test_local_shard_scoring_leaves_the_decoders_their_cores(
    eight_cores, tiny_clip_spec: str, tmp_path: Path, monkeypatch
) -> None:
    from clip_aesthetics.shards.engine_local import run_local
    from clip_aesthetics.shards.pipeline import BatchScorer
    from clip_aesthetics.shards.readers import resolve_shards
    from shard_data import encoded, write_tar

    scorer = ZeroShotScorer(load_backbone(tiny_clip_spec, device="cpu"), GROUPS)
    tars = [
        write_tar(tmp_path / f"{k}.tar", [(f"s{k}{i}.jpg", encoded(i)) for i in range(3)]) for k in range(2)
    ]
    seen = _threads_in_calls(scorer, "score_images", monkeypatch)
    tables = list(
        run_local(
            BatchScorer(scorer, "fp32"),
            list(enumerate(resolve_shards(tars))),
            batch_size=2,
            workers=2,
            max_pixels=10**8,
        )
    )
    assert tables and seen and set(seen) == {6}
    assert torch.get_num_threads() == 8
