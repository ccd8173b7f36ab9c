"""The actor pool's arithmetic and the hand-out bookkeeping (no Ray needed), and the
GPU-path decisions that can be checked on a CPU machine."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pipeline.engine.device import autocast_dtype, fit_batch_size, free_memory, select_device
from pipeline.engine.predictor import TilePredictor
from pipeline.errors import InputError
from pipeline.execution.block_queue import BlockFailedError, BlockQueue
from pipeline.execution.pool_plan import CORES_PER_CPU_ACTOR, plan_pool


@given(
    cpus=st.integers(1, 128),
    gpus=st.integers(0, 16),
    workers=st.none() | st.integers(1, 64),
    threads=st.none() | st.integers(1, 8),
    per_gpu=st.integers(1, 8),
)
def test_pool_never_oversubscribes_and_shares_each_gpu_as_asked(cpus, gpus, workers, threads, per_gpu):
    plan = plan_pool({"CPU": float(cpus), "GPU": float(gpus)}, workers, "auto", threads, per_gpu)
    assert plan.actors >= 1 and plan.threads >= 1
    assert plan.actors * plan.num_cpus <= cpus + 1e-9, "CPU reservations fit the cluster"
    if gpus:
        assert plan.num_gpus == 1.0 / per_gpu
        assert plan.actors * plan.num_gpus <= gpus + 1e-9, "GPU reservations fit the cluster"
        assert plan.actors == min(workers or gpus * per_gpu, gpus * per_gpu)
    else:
        assert plan.num_gpus == 0.0
        assert plan.actors == (workers or max(1, cpus // CORES_PER_CPU_ACTOR))
        if threads is None:
            assert plan.actors * plan.threads <= max(cpus, plan.actors), "torch threads share the cores"


@given(
    nodes=st.lists(st.tuples(st.integers(1, 16), st.integers(0, 4)), min_size=1, max_size=5),
    workers=st.none() | st.integers(1, 40),
    threads=st.none() | st.integers(1, 4),
    per_gpu=st.integers(1, 4),
    device=st.sampled_from(["auto", "cpu"]),
)
def test_every_planned_actor_has_a_node_to_start_on(nodes, workers, threads, per_gpu, device):
    """Nodes of unequal size: the cluster's share per actor may fit on none of them (an actor then
    waits for ever); the reservation is lowered until each actor fits on some node, never raised."""
    resources = {"CPU": float(sum(c for c, _ in nodes)), "GPU": float(sum(g for _, g in nodes))}
    described = [{"CPU": float(c), **({"GPU": float(g)} if g else {})} for c, g in nodes]
    whole = plan_pool(resources, workers, device, threads, per_gpu)
    plan = plan_pool(resources, workers, device, threads, per_gpu, described)
    assert (plan.actors, plan.num_gpus, plan.threads) == (whole.actors, whole.num_gpus, whole.threads)
    assert 0 < plan.num_cpus <= whole.num_cpus
    assert round(plan.num_cpus, 4) == plan.num_cpus, "in Ray's units of 1/10,000"
    if plan.uses_gpus:
        room = sum(min(int(c / plan.num_cpus + 1e-9), g * per_gpu) for c, g in nodes if g)
    else:
        room = sum(int(c / plan.num_cpus + 1e-9) for c, _ in nodes)
    assert room >= plan.actors


def test_cpu_pool_on_two_cores():
    assert plan_pool({"CPU": 2.0}, 2).threads == 1
    one = plan_pool({"CPU": 2.0}, 1)
    assert (one.actors, one.threads, one.num_cpus) == (1, 2, 2.0)


def test_device_cpu_ignores_gpus_and_cuda_without_gpus_is_an_error():
    assert not plan_pool({"CPU": 8.0, "GPU": 2.0}, None, "cpu").uses_gpus
    with pytest.raises(InputError, match="no GPUs"):
        plan_pool({"CPU": 8.0}, None, "cuda:0")
    with pytest.raises(ValueError):
        plan_pool({"CPU": 8.0}, 0)


def test_lost_blocks_go_first_and_fail_after_max_attempts():
    q = BlockQueue([(0, 0), (0, 1), (1, 0)], max_attempts=2)
    first, second = q.take(), q.take()
    q.lost(first, "ActorDiedError")
    assert q.take() == first, "a lost block is handed out again before new ones"
    q.finished(second)
    with pytest.raises(BlockFailedError, match=r"block \[0, 0\]: its worker was lost 2 times"):
        q.lost(first, "ActorDiedError")
    assert not q.complete


@given(st.lists(st.sampled_from(["finish", "lose"]), max_size=60))
def test_every_block_finishes_exactly_once_whatever_is_lost(events):
    blocks = [(i,) for i in range(5)]
    q = BlockQueue(blocks, max_attempts=1000)
    out: list[tuple[int, ...]] = []
    events = iter(events)
    while not q.complete:
        index = q.take()
        assert index is not None
        if next(events, "finish") == "lose":
            q.lost(index, "x")
        else:
            q.finished(index)
            out.append(index)
    assert sorted(out) == blocks and q.take() is None


@given(requested=st.integers(1, 256), per_tile=st.integers(0, 1 << 30), free=st.integers(0, 1 << 36))
def test_batch_fits_the_free_memory_budget(requested, per_tile, free):
    b = fit_batch_size(requested, per_tile, free)
    assert 1 <= b <= requested
    if per_tile and b > 1:
        assert b * per_tile <= free * 0.5


def test_cpu_paths_leave_batch_and_precision_alone():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None and free_memory(cpu) is None
    from models import build

    predictor = TilePredictor(build("conv1x1", in_channels=3, num_classes=2), cpu, batch_size=6, amp=True)
    assert predictor.amp_dtype is None
    assert predictor.fit_to_memory((3, 64, 64)) == 6 and predictor.tiles_run == 0


def test_advertised_gpu_without_cuda_selects_cpu(monkeypatch):
    # What a Ray GPU actor sees on a machine without CUDA: a device list in the env, no CUDA.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert select_device("auto").type == "cpu"
