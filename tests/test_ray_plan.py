"""How the Ray engine sizes its actors from the cluster (issue 22 point 2): no Ray needed, the cluster's
resources are given as `ray.cluster_resources()` and `ray.nodes()` report them."""

from __future__ import annotations

import pytest
import torch

from clip_aesthetics.shards.engine_ray import READ_CPUS, ScorerActor, plan_actors
from clip_aesthetics.shards.options import EngineOptions


@pytest.mark.parametrize(
    ("cluster", "nodes", "want"),
    [
        ({"CPU": 2}, [2], (1, 1.5)),  # this build machine: one actor (2 threads), half a CPU for reading
        ({"CPU": 4}, [2, 2], (1, 2)),  # two small nodes: an actor fills one, the reads use the other
        ({"CPU": 16}, [16], (3, 4)),  # 2 CPUs kept for reading, 3 actors of 4 threads
        ({"CPU": 64}, [16, 16, 16, 16], (14, 4)),
    ],
)
def test_cpu_actors_from_the_cluster(cluster, nodes, want) -> None:
    actors, cpus = plan_actors(EngineOptions(engine="ray"), cluster, nodes)
    assert (actors, cpus) == want and actors * cpus <= cluster["CPU"] - READ_CPUS


def test_gpu_actors_one_per_gpu() -> None:
    assert plan_actors(EngineOptions(engine="ray", gpus_per_actor=1), {"CPU": 32, "GPU": 4}, [32]) == (4, 1.0)
    assert plan_actors(EngineOptions(engine="ray", gpus_per_actor=0.5), {"CPU": 8, "GPU": 1}, [8]) == (2, 1.0)


@pytest.mark.parametrize(
    ("options", "cluster", "nodes", "advice"),
    [
        ({"actors": 2, "cpus_per_actor": 1}, {"CPU": 2}, [2], "--actors 1"),  # used to wait forever
        ({"actors": 1, "cpus_per_actor": 2}, {"CPU": 2}, [2], "--cpus-per-actor 1"),
        ({"cpus_per_actor": 8}, {"CPU": 16}, [4, 4, 4, 4], "--cpus-per-actor 3"),  # no node that large
        ({"actors": 3, "gpus_per_actor": 1}, {"CPU": 16, "GPU": 2}, [16], "--actors 2"),
        ({"gpus_per_actor": 1}, {"CPU": 16}, [16], "--gpus-per-actor 0"),
    ],
)
def test_settings_that_cannot_run_are_refused(options, cluster, nodes, advice) -> None:
    with pytest.raises(ValueError, match=advice):
        plan_actors(EngineOptions(engine="ray", **options), cluster, nodes)


def test_an_actor_runs_torch_on_the_cpus_it_holds(tiny_clip_spec: str) -> None:
    from clip_aesthetics import ZeroShotScorer, load_backbone
    from clip_aesthetics.shards.writer import scorer_identity
    from test_zeroshot import GROUPS

    scorer = ZeroShotScorer(load_backbone(tiny_clip_spec, device="cpu"), GROUPS)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ScorerActor(scorer, scorer_identity(scorer), "fp32", False, "cpu", threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_stalled_or_failed_ray_job_stops_with_a_message() -> None:
    """Issue 22 point 3: a job that yields nothing (a lost node's actors cannot be placed) or fails ends
    with a message saying the written shards are kept, instead of waiting forever."""
    import time

    from clip_aesthetics.shards.engine_ray import _watched

    def stalled():
        yield 1
        time.sleep(30)
        yield 2

    def failing():
        yield 1
        raise ConnectionError("node lost\nmore detail")

    got = []
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"scored nothing for 0\.5 s.*rerun the same command"):
        got.extend(_watched(stalled(), stall_timeout=0.5))
    assert got == [1] and time.monotonic() - start < 10
    got = []
    with pytest.raises(RuntimeError, match=r"failed \(ConnectionError: node lost\).*rerun"):
        got.extend(_watched(failing(), stall_timeout=5))
    assert got == [1]
