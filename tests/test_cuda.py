"""On a CUDA GPU: the compiled Triton kernels against the torch path, nvjpeg against the CPU decode, every method's
bf16 + channels_last training steps, and CoKe's state with either kernel. Skipped without CUDA.

`bash benchmarks/gpu_suite.sh` runs them on the GPU machine (`pytest -m cuda tests/test_cuda.py`); its dry run
checks on the CPU that they collect and skip. Kernel inputs are fresh random draws and outputs are poisoned before a
call; the 50-step CoKe trace is seeded, and checked free of near-ties step by step.
"""
from __future__ import annotations

import importlib
import math
import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.registry import METHODS
from ops.assign import assign, assign_torch, label_histogram
from ops.coke_state import CokeState
from ops.coke_update import update_clusters_

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "pretrain"
NEAR_TIE = 1e-5  # fp64 score gap under which two fp32 paths may pick different clusters


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels():
    """Compiled (not interpreted) Triton kernels and exact fp32 torch matmuls, restored afterwards.

    test_assign.py sets TRITON_INTERPRET=1 when it is imported, so in a session that collects both files the
    kernels must be redefined here, and interpreted again after this module for the CPU tests."""
    from triton.runtime.interpreter import InterpretedFunction

    saved_env, saved_tf32 = os.environ.pop("TRITON_INTERPRET", None), torch.backends.cuda.matmul.allow_tf32
    module = importlib.import_module("ops.assign_triton")
    if isinstance(module._assign_kernel, InterpretedFunction):
        module = importlib.reload(module)
    torch.backends.cuda.matmul.allow_tf32 = False
    yield module
    torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    if saved_env is not None:
        os.environ["TRITON_INTERPRET"] = saved_env
        importlib.reload(module)


# ---- helpers ------------------------------------------------------------------------------------------------------
def random_problem(rows, heads, dim, dtype=torch.float32, device="cuda"):
    offsets = torch.tensor([0] + heads, device=device).cumsum(0)
    x = F.normalize(torch.randn(rows, dim, device=device), dim=1).to(dtype)
    centers = F.normalize(torch.randn(sum(heads), dim, device=device), dim=1)
    duals = torch.rand(sum(heads), device=device) * 0.05
    return x, centers, duals, offsets


def coarse_ranges(offsets, rows, blocks=3):
    """(B,H,2) [lo, hi) of one of `blocks` contiguous blocks per head, as CoKe with superclasses gives."""
    device, ranges = offsets.device, []
    for lo, hi in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        edges = torch.linspace(lo, hi, blocks + 1, device=device).round().long()
        block = torch.randint(0, blocks, (rows,), device=device)
        ranges.append(torch.stack([edges[block], edges[block + 1]], dim=1))
    return torch.stack(ranges, dim=1)


def exact_scores(x, centers, duals, labels):
    """fp64 score of the given global labels (B,H)."""
    chosen = centers.double()[labels.clamp_min(0)]
    return torch.einsum("bd,bhd->bh", x.double(), chosen) + duals.double()[labels.clamp_min(0)]


def assert_labels_agree(x, centers, duals, labels, expected, tolerance=NEAR_TIE, max_fraction=1e-3):
    """Labels may differ only at near-ties (by fp64 score) and only in a few rows."""
    differ = labels != expected
    if differ.any():
        gap = (exact_scores(x, centers, duals, labels) - exact_scores(x, centers, duals, expected)).abs()
        assert (gap[differ] < tolerance).all(), f"labels differ without a near-tie: gaps {gap[differ][:8].tolist()}"
    assert differ.float().mean() <= max_fraction, f"{int(differ.sum())} of {differ.numel()} labels differ"


# ---- the fused assignment and update ------------------------------------------------------------------------------
ASSIGN_SHAPES = {  # id: (rows, heads, dim, x dtype, coarse row ranges)
    "benchmark": (4096, [3000, 4000, 5000], 128, torch.float32, False),
    "benchmark-coarse": (4096, [3000, 4000, 5000], 128, torch.float32, True),
    "bf16-coarse": (1000, [300, 400, 500], 128, torch.bfloat16, True),
    "odd-dim": (333, [50, 129], 40, torch.float32, False),
    "one-row": (1, [7], 256, torch.float32, False),
    "large-batch": (16384, [3000], 256, torch.bfloat16, False),
}


@pytest.mark.parametrize("shape", list(ASSIGN_SHAPES))
def test_triton_assign_matches_torch(compiled_kernels, shape):
    rows, heads, dim, dtype, with_ranges = ASSIGN_SHAPES[shape]
    x, centers, duals, offsets = random_problem(rows, heads, dim, dtype)
    ranges = coarse_ranges(offsets, rows) if with_ranges else None
    out = (torch.full((rows, len(heads)), 987654, dtype=torch.int64, device="cuda"),
           torch.full((sum(heads),), -77, dtype=torch.int32, device="cuda"),
           torch.full((rows, len(heads)), float("nan"), device="cuda"))
    labels, counts, scores = compiled_kernels.assign_triton(x, centers, duals, offsets, ranges, return_score=True,
                                                            out=out)
    expected, _, expected_scores = assign_torch(x, centers, duals, offsets, ranges, return_score=True)

    assert_labels_agree(x.float(), centers, duals, labels, expected)
    assert torch.equal(counts, label_histogram(labels, sum(heads)))
    assert torch.allclose(scores, expected_scores, atol=1e-5)
    assert torch.allclose(scores.double(), exact_scores(x.float(), centers, duals, labels), atol=1e-5)
    head = torch.arange(len(heads), device="cuda")
    assert ((labels >= offsets[head]) & (labels < offsets[head + 1])).all()
    if with_ranges:
        assert ((labels >= ranges[..., 0]) & (labels < ranges[..., 1])).all()


def test_tf32_assignment_picks_a_near_best_cluster(compiled_kernels):
    x, centers, duals, offsets = random_problem(4096, [3000, 4000, 5000], 128)
    labels, counts = assign(x, centers, duals, offsets, kernel="triton", precision="tf32")
    best, _ = assign(x, centers, duals, offsets, kernel="torch")
    shortfall = exact_scores(x, centers, duals, best) - exact_scores(x, centers, duals, labels)
    assert shortfall.min() >= -1e-6 and shortfall.max() < 5e-3  # tf32 rounds the scores near 1e-3
    assert torch.equal(counts, label_histogram(labels, centers.shape[0]))


UPDATE_SHAPES = {  # id: (rows, heads, dim, ratio)
    "benchmark": (4096, [3000, 4000, 5000], 128, 0.4),
    "balanced-odd-dim": (257, [10, 20], 40, 1.0),
    "crowded": (2048, [4, 6], 128, 0.4),  # hundreds of members per cluster
}


@pytest.mark.parametrize("shape", list(UPDATE_SHAPES))
def test_triton_update_matches_torch(compiled_kernels, shape):
    rows, heads, dim, ratio = UPDATE_SHAPES[shape]
    x, centers, duals, offsets = random_problem(rows, heads, dim)
    labels, _ = assign(x, centers, duals, offsets, kernel="torch")
    labels[::7, -1] = -1  # rows with no allowed cluster are ignored
    counts = label_histogram(labels, centers.shape[0])
    counters = torch.randint(0, 4, (centers.shape[0],), device="cuda")  # zeros: first hits replace the centre
    target = ratio / torch.cat([torch.full((k,), float(k), device="cuda") for k in heads])
    results = {}
    for kernel in ("torch", "triton"):
        state = (centers.clone(), counters.clone(), duals.clone())
        update_clusters_(x, labels, counts, *state, target, dual_lr=20.0, clamp=ratio < 1, kernel=kernel)
        results[kernel] = state
    (c_t, m_t, d_t), (c_k, m_k, d_k) = results["torch"], results["triton"]
    assert torch.allclose(c_t, c_k, atol=1e-5)
    assert torch.equal(m_t, m_k) and torch.equal(m_k, counters + counts)
    assert torch.allclose(d_t, d_k, atol=1e-5)
    assert torch.equal(c_k[counts == 0], centers[counts == 0])


# ---- CoKe's state over 50 steps with either kernel -----------------------------------------------------------------
TRACE_SEED = 3  # its trace has no near-tie: the smallest top-2 score gap is 1.6e-4 (2.7e-4 with superclasses)


def trace(seed=TRACE_SEED, instances=512, dim=64, modes=24, batch=128, steps=50):
    """Clustered features, superclass labels (some unknown) and 50 batches of ids, each with duplicate ids."""
    g = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(modes, dim, generator=g), dim=1)
    mode = torch.randint(0, modes, (instances,), generator=g)
    x = F.normalize(protos[mode] + 0.35 * torch.randn(instances, dim, generator=g) / dim**0.5, dim=1)
    coarse = mode % 3
    coarse[::17] = -1
    batches = []
    for _ in range(steps):
        ids = torch.randint(0, instances, (batch,), generator=g)
        ids[-4:] = ids[:4]
        batches.append(ids)
    return x, coarse, batches


def smallest_gap(state: CokeState, x, coarse) -> float:
    """Smallest fp64 gap between the best and second-best allowed score, over rows and heads."""
    scores = x.double() @ state.centers.double().T + state.duals.double()
    ranges = state.row_ranges(coarse) if coarse is not None else None
    gaps = []
    for head, (lo, hi) in enumerate(zip(state.offsets[:-1], state.offsets[1:])):
        head_scores = scores[:, lo:hi]
        if ranges is not None:
            cols = torch.arange(lo, hi, device=x.device)
            allowed = (cols >= ranges[:, head, 0:1]) & (cols < ranges[:, head, 1:2])
            head_scores = head_scores.masked_fill(~allowed, float("-inf"))
        top = head_scores.topk(2, dim=1).values
        both = torch.isfinite(top[:, 1])
        gaps.append(float((top[both, 0] - top[both, 1]).min()))
    return min(gaps)


@pytest.mark.parametrize("superclasses", [None, [150, 180, 150]], ids=["plain", "superclasses"])
def test_coke_state_same_after_50_steps_with_triton_and_torch(compiled_kernels, superclasses):
    x, coarse, batches = trace()
    x, coarse = x.cuda(), coarse.cuda()
    states = {kernel: CokeState(len(x), [10, 16], x.shape[1], kernel=kernel, seed=TRACE_SEED,
                                superclass_sizes=superclasses).cuda() for kernel in ("torch", "triton")}
    for step, ids in enumerate(batches):
        ids = ids.cuda()
        batch_coarse = coarse[ids] if superclasses else None
        assert smallest_gap(states["torch"], x[ids], batch_coarse) > NEAR_TIE, "the trace has a near-tie"
        previous = {kernel: state.step(x[ids], ids, batch_coarse) for kernel, state in states.items()}
        assert torch.equal(previous["torch"], previous["triton"]), step
        if step % 10 == 9:
            for state in states.values():
                state.end_epoch()
    torch_state, triton_state = states["torch"], states["triton"]
    assert torch.equal(torch_state.label_memory, triton_state.label_memory)
    assert (triton_state.label_memory >= 0).any()
    assert torch.equal(torch_state.counters, triton_state.counters)
    for name in ("centers", "prev_centers", "duals"):
        assert torch.allclose(getattr(torch_state, name), getattr(triton_state, name), atol=1e-5), name


# ---- nvjpeg -------------------------------------------------------------------------------------------------------
def test_nvjpeg_decode_matches_cpu_decode(cifar10_tar):
    from torchvision.io import ImageReadMode, decode_jpeg

    from datamodules.jpeg_stream import BatchDecoder, EncodedBatch, list_encoded

    store, _, _ = list_encoded(cifar10_tar, "test")
    rows = list(range(0, len(store), 40))  # 250 images of every class
    encoded = EncodedBatch.from_chunks([store.read(r) for r in rows], [store.label(r) for r in rows])
    chunks = [encoded.item(i) for i in range(len(rows))]
    on_gpu = torch.stack(decode_jpeg(chunks, mode=ImageReadMode.RGB, device="cuda"))  # nvjpeg itself, no fallback
    on_cpu = torch.stack(decode_jpeg(chunks, mode=ImageReadMode.RGB))
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.uint8 and on_gpu.shape == on_cpu.shape
    difference = (on_gpu.cpu().float() - on_cpu.float()).abs()
    assert difference.mean() < 2.0, difference.mean()  # IDCT and chroma upsampling differ a little

    batch = BatchDecoder(device="auto")({"jpeg": encoded, "index": torch.tensor(rows, device="cuda")})
    assert batch["image"].device.type == "cuda"
    assert torch.equal(batch["image"], on_gpu)


# ---- every method: 20 steps on CUDA in bf16-mixed with channels_last ---------------------------------------------
CONFIG_OF = {"supervised": "supervised_fine_cifar10", "supcon": "supcon_coarse_cifar10"}  # else <method>_cifar10
SMALL_STATE = {  # queues and prototypes scaled to the 640 training images
    "mocov2": ["method.queue_size=512"],
    "coins": ["method.queue_size=512"],
    "swav": ["method.num_prototypes=20", "method.queue_length=128", "method.queue_start_epoch=1",
             "method.freeze_prototypes_iters=5"],
    "deepclusterv2": ["method.num_prototypes=[20,30,40]"],
}
TRAIN_CASES = {  # id: (config, overrides); every registered method, plus two-view CoKe and nvjpeg-decoded batches
    **{m: (CONFIG_OF.get(m, f"{m}_cifar10"), SMALL_STATE.get(m, [])) for m in METHODS},
    "coke-twoview": ("coke_cifar10_twoview", []),
    "coke-nvjpeg-batches": ("coke_cifar10", ["data.format=jpeg"]),
}


def train_steps(case: str, cifar10_tar, cache_dir, accelerator: str = "gpu", steps: int = 20):
    """Fit `steps` steps (two epochs of 10 batches of 64) of one case; return (module, trainer, losses)."""
    import pytorch_lightning as pl

    from configs.loader import load_config, to_plain
    from datamodules import PretrainDataModule
    from lightning_modules.registry import method_class, method_schemas

    config, extra = TRAIN_CASES[case]
    cfg = load_config(CONFIGS / f"{config}.yaml", [
        "model.backbone=resnet18", "model.cifar_stem=true", "model.channels_last=true", "data.batch_size=64",
        "data.subset=64", "data.eval_subset=10", "data.num_workers=0", f"data.path={cifar10_tar}",
        f"data.cache_dir={cache_dir}", *extra,
    ], method_schemas())
    datamodule = PretrainDataModule(cfg.data, cfg.augment)
    datamodule.setup("fit")
    pl.seed_everything(0)
    module = method_class(cfg.method.name)(to_plain(cfg), asdict(datamodule.info))

    class LossRecorder(pl.Callback):
        values: list[float] = []
        devices: set[str] = set()  # read during training: Lightning moves the module back to the CPU after fit

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.values.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))
            self.devices.add(pl_module.device.type)

    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, precision="bf16-mixed", max_steps=steps, logger=False,
        callbacks=[LossRecorder()], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=datamodule)
    return module, trainer, LossRecorder.values, LossRecorder.devices


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_every_method_trains_20_steps_bf16_channels_last(compiled_kernels, case, cifar10_tar, cache_dir):
    module, trainer, losses, devices = train_steps(case, cifar10_tar, cache_dir)
    assert trainer.global_step == 20 and len(losses) == 20
    assert all(math.isfinite(v) for v in losses), losses
    assert devices == {"cuda"}
    conv = next(m for m in module.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(p).all() for p in module.parameters())
