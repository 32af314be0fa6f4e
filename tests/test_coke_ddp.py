"""CoKe under DDP on the CPU (gloo, 2 processes).

1. The module's cluster_step driven on each rank's half of fixed global batches: the clustering state is
   identical on both ranks and equal to one process fed the whole global batches; the dashboard's cross-rank
   checksum passes, and catches a diverged replica.
2. A real Lightning fit (ddp_spawn, 2 CPU devices) through train.main on a real CIFAR-10 image folder whose size
   is odd, so the DistributedSampler pads with a duplicate: the run finishes, both ranks held the state the
   checkpoint holds, the checksum check ran and passed, and the label memory is complete and consistent.
The loss-level SimCLR / MoCo v3 checks are in test_gather_ddp.py.
"""
from __future__ import annotations

import os
import shutil
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ports import file_init_method, run_retrying_on_address_in_use, spawn_and_wait
from test_gather_ddp import SPAWN_TIMEOUT_S, WORLD

# Multi-process tests share one xdist worker (`--dist loadgroup`): never two process groups at once on 2 cores.
pytestmark = pytest.mark.xdist_group("multiprocess")

REPO = Path(__file__).resolve().parent.parent
ONE_VIEW = str(REPO / "configs" / "pretrain" / "coke_cifar10_paper.yaml")
NUM_TRAIN, DIM, GLOBAL_BATCH, EPOCHS = 30, 8, 12, 3
SUPERCLASS_SIZES = [18, 12]
STATE = ["centers", "prev_centers", "duals", "counters", "label_memory", "epoch"]


# ------------------------------------------------------------------------- 1. the update under gloo
def make_module(coarse: bool):
    from configs.loader import load_config, to_plain
    from lightning_modules.coke import CoKe

    overrides = ["model.backbone=test_resnet", "model.cifar_stem=false", "model.proj_hidden_dim=16",
                 "model.pred_hidden_dim=16", f"model.proj_output_dim={DIM}", "method.num_clusters=[3,5]",
                 "method.kernel=torch", *(["method.coarse_weight=0.5"] if coarse else [])]
    cfg = to_plain(load_config(ONE_VIEW, overrides, {"coke": CoKe.Config}))
    info = {"num_train": NUM_TRAIN, "num_fine": 10, "num_coarse": 2, "superclass_sizes": SUPERCLASS_SIZES}
    return CoKe(cfg, info)


def global_batches() -> list[list[dict]]:
    """Per epoch, the global batches: a shuffled pass padded like a DistributedSampler (an id can appear twice,
    also twice in one batch, once on each rank's half), unit features with jitter, some unknown superclasses."""
    g = torch.Generator().manual_seed(7)
    base = F.normalize(torch.randn(NUM_TRAIN, DIM, generator=g), dim=1)
    coarse = torch.tensor([0] * SUPERCLASS_SIZES[0] + [1] * SUPERCLASS_SIZES[1])
    coarse[[5, 20]] = -1
    fine = torch.arange(NUM_TRAIN) % 10
    epochs = []
    for epoch in range(EPOCHS):
        order = torch.randperm(NUM_TRAIN, generator=g)
        order = torch.cat([order, order[:(-NUM_TRAIN) % GLOBAL_BATCH]])  # 30 -> 36: 6 padded duplicates
        if epoch == 1:  # one id on both halves of the same global batch
            order[GLOBAL_BATCH // 2] = order[0]
        batches = []
        for start in range(0, len(order), GLOBAL_BATCH):
            ids = order[start:start + GLOBAL_BATCH]
            x = F.normalize(base[ids] + 0.3 * torch.randn(len(ids), DIM, generator=g), dim=1)
            batches.append({"x": x, "index": ids, "fine": fine[ids], "coarse": coarse[ids]})
        epochs.append(batches)
    return epochs


def drive(module, epochs) -> dict:
    """Feed this process's rows of every global batch to cluster_step; end epochs as the module does."""
    from ops.distributed import rank, world_size

    prev = []
    for batches in epochs:
        for batch in batches:
            mine = {k: v.chunk(world_size())[rank()] for k, v in batch.items()}
            prev.append(module.cluster_step(mine["x"], mine))
        module.on_train_epoch_end()  # end_epoch + the cross-rank checksum check
    state = {name: getattr(module.clustering, name).clone() for name in STATE}
    return {"prev": torch.cat(prev), "state": state, "checksum": module.clustering.checksum()}


def scenario(coarse: bool) -> dict:
    torch.manual_seed(0)
    return drive(make_module(coarse), global_batches())


def scenario_divergence() -> str:
    from lightning_modules.coke.dashboard import assert_ranks_agree
    from ops.distributed import rank

    module = make_module(False)
    drive(module, global_batches()[:1])
    if rank() == 1:
        module.clustering.duals[0] += 1e-3
    try:
        assert_ranks_agree(module.clustering)
    except RuntimeError as err:
        return str(err)
    return ""


def recording_collectives() -> list[tuple]:
    """Wraps this process's torch.distributed collectives to record (name, input shape) of every call."""
    calls = []
    for name in ("all_gather", "all_gather_into_tensor", "broadcast", "all_reduce", "reduce", "scatter"):
        original = getattr(dist, name)

        def wrapper(*args, _name=name, _original=original, **kwargs):
            tensor = args[1] if _name.startswith("all_gather") else args[0]
            calls.append((_name, tuple(tensor.shape)))
            return _original(*args, **kwargs)

        setattr(dist, name, wrapper)
    return calls


def _worker(process_rank: int, init_method: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=process_rank, world_size=WORLD,
                            timeout=timedelta(seconds=SPAWN_TIMEOUT_S))
    try:
        calls = recording_collectives()
        results = {"plain": scenario(False), "collectives": list(calls), "coarse": scenario(True),
                   "divergence": scenario_divergence()}
        torch.save(results, Path(out_dir) / f"rank{process_rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def per_rank(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("coke-ddp")
    spawn_and_wait(_worker, (file_init_method(out_dir), str(out_dir)), WORLD, 3 * SPAWN_TIMEOUT_S)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("variant", ["plain", "coarse"])
def test_state_identical_on_ranks_and_equal_to_one_process(variant, per_rank):
    single = scenario(variant == "coarse")  # no process group here: the gathers are no-ops
    ranks = [result[variant] for result in per_rank]
    for name in STATE:
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name
        if name in ("label_memory", "counters", "epoch"):
            assert torch.equal(ranks[0]["state"][name], single["state"][name]), name
        else:
            torch.testing.assert_close(ranks[0]["state"][name], single["state"][name], rtol=0, atol=1e-6)
    assert torch.equal(ranks[0]["checksum"], ranks[1]["checksum"])
    # every rank got back the previous-epoch labels of its own rows
    local = [r["prev"] for r in ranks]
    halves = torch.stack([p.view(-1, GLOBAL_BATCH // WORLD, 2) for p in local], 1).flatten(1, 2)
    assert torch.equal(halves.flatten(0, 1), single["prev"])
    assert (single["prev"][-GLOBAL_BATCH:] >= 0).all()  # labels of the previous epoch were there to read
    state = single["state"]
    assert state["epoch"].item() == EPOCHS and (state["label_memory"] >= 0).all()
    assert (state["duals"] > 0).any()  # the bound was active: a non-trivial trace


def test_coarse_ddp_labels_stay_in_their_superclass(per_rank):
    from ops.coke_state import partition_clusters

    memory = per_rank[0]["coarse"]["state"]["label_memory"]
    coarse = torch.tensor([0] * SUPERCLASS_SIZES[0] + [1] * SUPERCLASS_SIZES[1])
    known = torch.ones(NUM_TRAIN, dtype=torch.bool)
    known[[5, 20]] = False
    for head, k in enumerate([3, 5]):
        starts = torch.tensor([0, *torch.tensor(partition_clusters(k, SUPERCLASS_SIZES)).cumsum(0).tolist()])
        labels = memory[known, head]
        assert ((labels >= starts[coarse[known]]) & (labels < starts[coarse[known] + 1])).all()


def test_only_the_batch_rows_are_exchanged_each_step(per_rank):
    """Every rank updates its own replica: per step only the gathered rows of the batch travel (never the
    label memory, and no broadcast); once per epoch the (1, 6) checksum."""
    local = GLOBAL_BATCH // WORLD
    steps = EPOCHS * len(global_batches()[0])
    for result in per_rank:
        calls = result["collectives"]
        assert {name for name, _ in calls} == {"all_gather"}, calls
        per_row = [shape for _, shape in calls if shape[0] == local]
        assert len(per_row) == 3 * steps  # ids, labels for the dashboard, features
        assert [shape for _, shape in calls if shape[0] != local] == [(1, 6)] * EPOCHS
        assert all(shape[0] != NUM_TRAIN for _, shape in calls)


def test_checksum_catches_diverged_ranks(per_rank):
    for result in per_rank:  # both ranks raise (no hang): they compare the same gathered checksums
        assert "differs across ranks" in result["divergence"]


# -------------------------------------------------------------- 2. a real ddp_spawn fit on 2 CPU devices
DRIVER = textwrap.dedent("""
    # Runs train.main; records every rank's CoKe state at each epoch end and that the checksum check ran.
    import sys
    from pathlib import Path

    import torch

    import lightning_modules.coke as coke
    import lightning_modules.coke.dashboard as dashboard
    from ops.distributed import is_distributed, rank, world_size

    OUT = Path(sys.argv[1])
    check = dashboard.assert_ranks_agree
    cluster_step = coke.CoKe.cluster_step


    def recording_check(state):
        check(state)  # raises if the ranks diverged
        names = ["centers", "prev_centers", "duals", "counters", "label_memory", "epoch"]
        torch.save({"distributed": is_distributed(), "world": world_size(), "checksum": state.checksum(),
                    "state": {n: getattr(state, n).clone() for n in names}},
                   OUT / f"rank{rank()}_epoch{int(state.epoch) - 1}.pt")


    def recording_step(self, x, batch):
        with open(OUT / f"rank{rank()}_ids.txt", "a") as f:
            f.write(f"{self.current_epoch} {' '.join(map(str, batch['index'].tolist()))}\\n")
        return cluster_step(self, x, batch)


    dashboard.assert_ranks_agree = recording_check
    coke.CoKe.cluster_step = recording_step

    if __name__ == "__main__":
        import train

        sys.exit(train.main(sys.argv[2:]))
""")
TRAIN_PER_CLASS = [10] * 5 + [9] * 5  # 95 images: odd, so the DistributedSampler pads one duplicate
BATCH = 16  # per rank: 48 rows per rank after padding = 3 full steps


def write_image_folder(root: Path, cifar10) -> None:
    from torchvision.io import encode_png

    for split, data, counts in (("train", cifar10[0], TRAIN_PER_CLASS), ("test", cifar10[1], [2] * 10)):
        for label, count in enumerate(counts):
            folder = root / split / data.class_names[label]
            folder.mkdir(parents=True)
            rows = (data.fine == label).nonzero()[0][:count]
            for row in rows:
                (folder / f"{row:05d}.png").write_bytes(encode_png(torch.from_numpy(data.images[row])).numpy().tobytes())


def test_ddp_spawn_fit_keeps_ranks_identical_and_label_memory_consistent(tmp_path, cifar10):
    write_image_folder(tmp_path / "images", cifar10)
    out = tmp_path / "out"
    (tmp_path / "driver.py").write_text(DRIVER)
    args = [
        ONE_VIEW, "model.backbone=test_resnet", "model.cifar_stem=false", "model.proj_hidden_dim=64",
        "model.pred_hidden_dim=64", "method.num_clusters=[4,6]", "data.name=cifar10",
        f"data.path={tmp_path / 'images'}", f"data.cache_dir={tmp_path / 'cache'}", f"data.batch_size={BATCH}",
        "data.num_workers=0", "data.pin_memory=false", "logger.kind=csv", "trainer.precision=32",
        "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.strategy=ddp_spawn", "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=3",
        "optim.name=sgd", "optim.warmup_epochs=0", f"run_dir={tmp_path / 'runs'}", "run_name=ddp",
    ]
    # The environment is inherited as is: a run directory advertised by an earlier in-process train.main must not
    # capture this fresh (rank-0) launch.
    env = dict(os.environ)
    env.update(PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")

    def fresh_try():  # Lightning picks its port itself (bound, released, bound again): a try that lost it is rerun
        for folder in (out, tmp_path / "runs"):
            shutil.rmtree(folder, ignore_errors=True)
        out.mkdir()

    proc = run_retrying_on_address_in_use(
        [sys.executable, str(tmp_path / "driver.py"), str(out), *args], fresh_try, cwd=REPO, env=env,
        capture_output=True, text=True, timeout=900)  # a hang guard; ~80 s on idle cores
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    ckpt_path = next((tmp_path / "runs" / "ddp").glob("*/checkpoints/last.ckpt"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    steps = 96 // (2 * BATCH)
    assert ckpt["global_step"] == 3 * steps
    for epoch in range(3):
        dumps = [torch.load(out / f"rank{r}_epoch{epoch}.pt", weights_only=True) for r in range(2)]
        assert all(d["distributed"] and d["world"] == 2 for d in dumps)  # the checksum check really compared
        assert torch.equal(dumps[0]["checksum"], dumps[1]["checksum"])
        for name in dumps[0]["state"]:
            assert torch.equal(dumps[0]["state"][name], dumps[1]["state"][name]), (epoch, name)
    for name, value in dumps[0]["state"].items():  # what both ranks held is what the checkpoint holds
        assert torch.equal(ckpt["state_dict"][f"clustering.{name}"], value), name

    # the ranks' rows per step: together every id, one of them twice (the DistributedSampler's padding)
    rows = {r: [line.split() for line in (out / f"rank{r}_ids.txt").read_text().splitlines()] for r in range(2)}
    for epoch in range(3):
        ids = torch.tensor([int(i) for r in range(2) for line in rows[r] if int(line[0]) == epoch for i in line[1:]])
        assert len(ids) == 96 and len(ids.unique()) == 95
        counts = torch.bincount(ids, minlength=95)
        assert counts.min() == 1 and (counts == 2).sum() == 1
    memory = ckpt["state_dict"]["clustering.label_memory"]
    assert memory.shape == (95, 2) and (memory >= 0).all()  # every instance labelled, padding or not
    assert (memory[:, 0] < 4).all() and (memory[:, 1] < 6).all()
