"""The Ray Data engine: read shards and decode in CPU tasks, score in a pool of stateful scorer actors.

    shards --flat_map(read and decode, a CPU task per shard)--> rows: key, uint8 pixels at model size
           --map_batches(ScorerActor, ActorPoolStrategy)--> scored Arrow tables --> the driver writes

Only uint8 pixels at model size cross the object store, never float tensors or full-size images. Each actor
loads the model once (on its GPU with ``--gpus-per-actor``) and runs torch on one thread per CPU it holds;
the driver reassembles rows per shard and writes each shard file when its last row is in, so resume works
exactly as with the local engine. The actor pool is sized from the cluster before anything starts, always
leaving CPUs to the read tasks (an actor pool that takes every CPU would wait for them forever).
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import queue
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .options import EngineOptions, ScorerRecipe
from .pipeline import BatchScorer, decode_row, shard_rows
from .readers import Shard

LOCAL_HOST = "127.0.0.1"  # a Ray the tool starts itself listens here only
READ_CPUS = 0.5  # per read+decode task: decoding is light next to the model (and waits on reads)


def _read_and_decode(
    item: dict, cfg, max_pixels: int, draft_size: int | None, columns: dict
) -> Iterator[dict]:
    """A CPU task per shard: stream its samples and decode each to uint8 at model size."""
    import torch

    torch.set_num_threads(1)  # decoding is single-threaded (PIL); the model runs in the actors
    for row in shard_rows(int(item["shard"]), Shard(item["url"]), **columns):
        yield decode_row(row, cfg, max_pixels, draft_size)


@dataclass(frozen=True)
class SavedHead:
    """A head as the driver built it (its config and tensors, e.g. the encoded prompt groups): each actor puts
    it on a backbone it loads itself, so no actor re-encodes prompts and all score with the same head."""

    config: dict
    tensors: dict

    @classmethod
    def of(cls, scorer) -> SavedHead | None:
        """The head of ``scorer`` when it is small (not a fine-tuned tower); None otherwise."""
        if getattr(type(scorer), "holds_tower_weights", False):
            return None
        return cls(scorer.config(), {name: t.detach().cpu() for name, t in scorer.tensors().items()})

    def build(self, device: str | None = None):
        from ..scorers.registry import scorer_from_saved

        return scorer_from_saved(self.config, self.tensors, device=device, source="the driver's head")


class ScorerActor:
    """One model copy per actor, built once; scores decoded batches into tables of the run's fixed schema."""

    def __init__(self, source, identity: str, precision: str, embeddings: bool, device: str, threads: int):
        import torch

        from .writer import scorer_identity

        torch.set_num_threads(threads)  # the CPUs this actor holds, no more (the read tasks use the rest)
        scorer = source.build(device) if isinstance(source, ScorerRecipe | SavedHead) else source
        if scorer_identity(scorer, embeddings) != identity:  # e.g. other weights on this node
            raise RuntimeError("a Ray worker built a different scorer than the driver (weights differ?)")
        self.score = BatchScorer(scorer, precision, embeddings)

    def __call__(self, batch: dict[str, np.ndarray]):
        return self.score(batch)


def plan_actors(options: EngineOptions, cluster: dict, node_cpus: list[float]) -> tuple[int, float]:
    """``(actors, cpus per actor)`` for ``options`` on a cluster of ``cluster`` resources (as
    ``ray.cluster_resources()``) and nodes of ``node_cpus`` CPUs; refuses settings that cannot run, saying
    what to change.

    Defaults: GPU actors, one per GPU with one CPU each; CPU actors, up to 4 CPUs each, using the CPUs left
    after one in eight (at least half a CPU: one read task, :data:`READ_CPUS`) is kept for reading.

    Raises:
        ValueError: too many actors or CPUs/GPUs per actor for this cluster.
    """
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    largest = max(node_cpus, default=cpus)
    if options.gpus_per_actor:
        per_actor = 1.0 if options.cpus_per_actor is None else options.cpus_per_actor
        most = math.floor(gpus / options.gpus_per_actor + 1e-9)
        if most < 1:
            raise ValueError(
                f"--gpus-per-actor {options.gpus_per_actor:g}: the Ray cluster has {gpus:g} GPUs; "
                "use --gpus-per-actor 0 to score on CPUs"
            )
        actors = options.actors or most
        if actors > most:
            raise ValueError(
                f"--actors {actors} x --gpus-per-actor {options.gpus_per_actor:g} needs more than the "
                f"{gpus:g} GPUs of the Ray cluster: use --actors {most} or fewer"
            )
    else:
        reserve = max(READ_CPUS, round(cpus / 8))
        per_actor = options.cpus_per_actor or min(4.0, max(1.0, min(cpus - reserve, largest)))
        actors = options.actors or max(1, math.floor((cpus - reserve) / per_actor))
    if per_actor > largest:
        raise ValueError(
            f"--cpus-per-actor {per_actor:g}: no node of the Ray cluster has that many CPUs (the largest has "
            f"{largest:g}); use --cpus-per-actor {largest - 1 if largest > 1 else largest:g} or fewer"
        )
    if actors * per_actor > cpus - READ_CPUS:
        fit = max(0, math.floor((cpus - READ_CPUS) / per_actor)) if per_actor else 0
        smaller = math.floor((cpus - READ_CPUS) / actors)
        fix = f"use --actors {fit}" if fit else f"use --cpus-per-actor {smaller}" if smaller else "add CPUs"
        raise ValueError(
            f"--actors {actors} x --cpus-per-actor {per_actor:g} takes {actors * per_actor:g} of the "
            f"{cpus:g} CPUs of the Ray cluster and leaves none for reading shards: {fix} (or add nodes)"
        )
    return actors, per_actor


def connect(address: str | None, timeout: float) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), or start a local one on 127.0.0.1; True if started.

    A cluster address is first probed with a plain TCP connection, so an unreachable one fails after
    ``timeout`` seconds with a message (Ray itself retries for minutes).
    """
    try:
        import ray
    except ImportError:
        raise RuntimeError('--engine ray needs Ray Data: pip install "clip-aesthetics[ray]"') from None
    if ray.is_initialized():
        return False
    if address:
        host = _probe(address, timeout)
        with _loopback_only(_is_loopback(host)):  # a cluster on this machine's loopback: join it there
            ray.init(address=address, configure_logging=False)
        return False
    start_local_ray()
    return True


def start_local_ray(**init_options) -> None:
    """``ray.init`` of a single-node Ray that listens on 127.0.0.1 only.

    Ray turns ``_node_ip_address="127.0.0.1"`` into the machine's address and then listens on every
    interface, unless it believes multi-node clusters are off (its Windows/macOS switch): set for the
    processes it starts here.
    """
    import ray

    with _loopback_only(True):
        ray.init(
            include_dashboard=False, configure_logging=False, _node_ip_address=LOCAL_HOST, **init_options
        )


@contextlib.contextmanager
def _loopback_only(active: bool):
    """While active, Ray resolves this node's address to 127.0.0.1 (the processes it spawns inherit it)."""
    if not active:
        yield
        return
    from ray._private import ray_constants

    saved_env = os.environ.get(_CLUSTER_SWITCH)
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)  # read at call time by Ray 2.x
    os.environ[_CLUSTER_SWITCH], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(_CLUSTER_SWITCH, None)
        else:
            os.environ[_CLUSTER_SWITCH] = saved_env


_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _probe(address: str, timeout: float) -> str:
    """The host of the Ray cluster at ``address``; RuntimeError when it does not answer in ``timeout`` s."""
    from ray._private.services import canonicalize_bootstrap_address

    target = address.removeprefix("ray://")
    try:  # "auto" (or none): the cluster this machine last started; a host:port is taken as given
        target = canonicalize_bootstrap_address(target) if target == "auto" else target
    except (ConnectionError, ValueError) as exc:
        raise RuntimeError(f"no Ray cluster found for --ray-address {address}: {exc}") from None
    if target is None:
        raise RuntimeError(
            f"no running Ray cluster found for --ray-address {address} (start one with `ray start`)"
        )
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise RuntimeError(
            f"cannot reach the Ray cluster at {address} within {timeout:g} s ({exc}); check the address "
            "and that `ray start --head` runs there"
        ) from None
    return host


def _watched(batches: Iterator, stall_timeout: float) -> Iterator:
    """``batches``, but a Ray job that fails or yields nothing for ``stall_timeout`` seconds (a lost node
    whose actors cannot be placed again, say) ends with a message instead of waiting forever."""
    found: queue.Queue = queue.Queue(maxsize=2)

    def pump() -> None:
        try:
            for batch in batches:
                found.put((True, batch))
            found.put((False, None))
        except BaseException as exc:  # handed to the caller: Ray's errors have many types
            found.put((False, exc))

    threading.Thread(target=pump, name="ray-batches", daemon=True).start()
    while True:
        try:
            more, item = found.get(timeout=stall_timeout)
        except queue.Empty:
            raise RuntimeError(
                f"the Ray job scored nothing for {stall_timeout:g} s (a lost node, or no CPU left for "
                "reading?); the shards written so far are kept: rerun the same command"
            ) from None
        if more:
            yield item
        elif item is None:
            return
        else:
            first_line = (str(item).splitlines() or [""])[0]
            raise RuntimeError(
                f"the Ray job failed ({type(item).__name__}: {first_line}); the shards written so far are "
                "kept: rerun the same command"
            ) from item


def run_ray(recipe, scorer, run, options: EngineOptions, indexed: list[tuple[int, Shard]]) -> Iterator:
    """Scored batches (Arrow tables) for ``indexed`` shards (markers included), as the local engine's."""
    import ray

    from ..pipeline.images import draft_size_for

    started = connect(options.ray_address, options.ray_timeout)
    try:
        nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
        actors, cpus_per_actor = plan_actors(options, ray.cluster_resources(), nodes)
        ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
        cfg = scorer.backbone.preprocess_cfg
        items = [{"shard": index, "url": shard.url} for index, shard in indexed]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))  # one read task per shard
        # flat_map (rows out) is never fused into the actors below: decoding stays in CPU tasks
        dataset = dataset.flat_map(
            _read_and_decode,
            fn_kwargs={"cfg": cfg, "max_pixels": options.max_pixels,
                       "draft_size": draft_size_for(cfg, options.draft), "columns": options.read_columns()},
            num_cpus=READ_CPUS,
        )  # fmt: skip
        device = "cuda" if options.gpus_per_actor else "cpu"
        dataset = dataset.map_batches(
            ScorerActor,
            batch_size=options.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={
                "source": (SavedHead.of(scorer) or recipe) if isinstance(recipe, ScorerRecipe) else recipe,
                "identity": run.scorer_id,
                "precision": run.settings["precision"],
                "embeddings": options.embeddings,
                "device": device,
                "threads": max(1, math.ceil(cpus_per_actor)),
            },
            num_gpus=options.gpus_per_actor or None,
            num_cpus=cpus_per_actor,
        )
        yield from _watched(
            dataset.iter_batches(batch_size=None, batch_format="pyarrow"), options.stall_timeout
        )
    finally:
        if started:
            ray.shutdown()
