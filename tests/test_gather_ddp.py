"""Two gloo processes on the CPU: the losses on each rank's half must reproduce the single-process
loss and gradients on the concatenated batch, and Sinkhorn must match across the split.

DDP semantics used for the comparison:
  - the global loss is the mean of the per-rank losses (every rank holds the same number of rows);
  - DDP averages parameter gradients over ranks, so mean_r(param.grad on rank r) must equal the
    single-process param.grad;
  - each rank's input gradient is world_size times the single-process one (it is the gradient of
    the sum of the rank losses, see ops.distributed.gather_with_grad), so rank grads / world_size
    concatenated must equal the single-process input gradient.
One spawn runs every scenario (starting processes dominates the cost); each test checks one.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ops.contrastive import moco_v3_loss, nt_xent
from ops.distributed import all_reduce_sum, gather_no_grad, rank, world_size
from ops.sinkhorn import sinkhorn
from ops.supervised import supcon_loss
from ports import file_init_method, spawn_and_wait

# Multi-process tests share one xdist worker (`--dist loadgroup`): never two process groups at once on 2 cores.
pytestmark = pytest.mark.xdist_group("multiprocess")

WORLD = 2
BATCH = 6  # global; 3 rows per rank
IN_DIM, OUT_DIM, CLUSTERS = 5, 4, 7
SPAWN_TIMEOUT_S = 180  # a hang guard: spawned processes import torch, slow beside a second pytest worker


def make_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x1": torch.randn(BATCH, IN_DIM, generator=g),
        "x2": torch.randn(BATCH, IN_DIM, generator=g),
        "k1": torch.randn(BATCH, OUT_DIM, generator=g),
        "k2": torch.randn(BATCH, OUT_DIM, generator=g),
        "weight": torch.randn(OUT_DIM, IN_DIM, generator=g),
        "labels": torch.tensor([0, 1, 2, 0, -1, 1]),  # positives on both ranks, and one unknown label
        "scores": torch.randn(BATCH, CLUSTERS, generator=g) * 0.5,
    }


def _my_rows(t: torch.Tensor) -> torch.Tensor:
    """This process's share of a global batch: all of it in a single process."""
    return t.chunk(world_size())[rank()]


def _loss_and_grads(loss_fn, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Projects this process's rows of x1, x2 with a shared linear layer, runs loss_fn, backpropagates."""
    weight = inputs["weight"].clone().requires_grad_()
    x1 = _my_rows(inputs["x1"]).clone().requires_grad_()
    x2 = _my_rows(inputs["x2"]).clone().requires_grad_()
    loss = loss_fn(x1 @ weight.T, x2 @ weight.T, inputs)
    loss.backward()
    return {"loss": loss.detach(), "x1": x1.grad, "x2": x2.grad, "weight": weight.grad}


def scenario_nt_xent(inputs):
    return _loss_and_grads(lambda z1, z2, _: nt_xent(z1, z2, 0.2), inputs)


def scenario_moco_v3(inputs):
    def symmetric(q1, q2, data):
        k1, k2 = _my_rows(data["k1"]), _my_rows(data["k2"])
        return moco_v3_loss(q1, k2, 0.2) + moco_v3_loss(q2, k1, 0.2)

    return _loss_and_grads(symmetric, inputs)


def scenario_supcon(inputs):
    return _loss_and_grads(lambda z1, z2, data: supcon_loss(torch.stack([z1, z2], 1), _my_rows(data["labels"]), 0.2), inputs)


def scenario_sinkhorn(inputs):
    return {"q": sinkhorn(_my_rows(inputs["scores"]), epsilon=0.05, iterations=3)}


def scenario_collectives(inputs):
    mine = torch.full((2,), float(rank() + 1))
    return {"gathered": gather_no_grad(mine), "summed": all_reduce_sum(mine), "untouched": mine}


SCENARIOS = {
    "nt_xent": scenario_nt_xent,
    "moco_v3": scenario_moco_v3,
    "supcon": scenario_supcon,
    "sinkhorn": scenario_sinkhorn,
    "collectives": scenario_collectives,
}


def _worker(process_rank: int, init_method: str, inputs: dict[str, torch.Tensor], out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=init_method,  # a file in the test's tmp folder (tests/ports.py): no port to race for
        rank=process_rank,
        world_size=WORLD,
        timeout=timedelta(seconds=SPAWN_TIMEOUT_S),
    )
    try:
        results = {name: scenario(inputs) for name, scenario in SCENARIOS.items()}
        torch.save(results, Path(out_dir) / f"rank{process_rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def inputs():
    return make_inputs()


@pytest.fixture(scope="module")
def per_rank(inputs, tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    spawn_and_wait(_worker, (file_init_method(out_dir), inputs, str(out_dir)), WORLD, SPAWN_TIMEOUT_S)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


def _assert_matches_single_process(name: str, per_rank, inputs) -> None:
    single = SCENARIOS[name](inputs)  # no process group in the test process: gathers are no-ops
    ranks = [result[name] for result in per_rank]
    torch.testing.assert_close(torch.stack([r["loss"] for r in ranks]).mean(), single["loss"])
    torch.testing.assert_close(torch.stack([r["weight"] for r in ranks]).mean(0), single["weight"])
    for x in ("x1", "x2"):
        torch.testing.assert_close(torch.cat([r[x] for r in ranks]) / WORLD, single[x])


def test_nt_xent_split_over_ranks_equals_single_process(per_rank, inputs):
    _assert_matches_single_process("nt_xent", per_rank, inputs)


def test_moco_v3_split_over_ranks_equals_single_process(per_rank, inputs):
    _assert_matches_single_process("moco_v3", per_rank, inputs)


def test_supcon_split_over_ranks_equals_single_process(per_rank, inputs):
    _assert_matches_single_process("supcon", per_rank, inputs)


def test_sinkhorn_split_over_ranks_equals_single_process(per_rank, inputs):
    single = SCENARIOS["sinkhorn"](inputs)["q"]
    torch.testing.assert_close(torch.cat([r["sinkhorn"]["q"] for r in per_rank]), single)


def test_collectives(per_rank):
    for r, result in enumerate(per_rank):
        collectives = result["collectives"]
        torch.testing.assert_close(collectives["gathered"], torch.tensor([1.0, 1.0, 2.0, 2.0]))
        torch.testing.assert_close(collectives["summed"], torch.tensor([3.0, 3.0]))
        torch.testing.assert_close(collectives["untouched"], torch.full((2,), float(r + 1)))
