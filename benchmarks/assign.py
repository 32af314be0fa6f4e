"""Benchmark the CoKe assignment: fused Triton kernel vs the chunked torch reference vs the official style.

    python benchmarks/assign.py [--rows 1024 4096 16384] [--dims 128 256] [--dtype fp32|bf16]

Needs a CUDA device. Times are CUDA-event medians after warm-up. The roofline uses the peak matmul
rate and copy bandwidth measured here on the same device: FLOPs 2*B*D*sum(K), bytes (B + sum K)*D*size.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.assign import assign, assign_reference_style  # noqa: E402
from ops.coke_update import update_clusters_  # noqa: E402

CLUSTER_SETS = {"3000": [3000], "3000+4000+5000": [3000, 4000, 5000]}


def cuda_time_ms(fn, warmup: int, iters: int) -> float:
    """Median of per-call CUDA-event timings, after warm-up."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_matmul_tflops(dtype: torch.dtype, tf32: bool, size: int = 8192) -> float:
    a = torch.randn(size, size, device="cuda").to(dtype)
    b = torch.randn(size, size, device="cuda").to(dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        ms = cuda_time_ms(lambda: a @ b, warmup=3, iters=10)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * size**3 / (ms * 1e-3) / 1e12


def copy_bandwidth_gbs(num_bytes: int = 2**30) -> float:
    """Device copy bandwidth, counting the read and the write."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), warmup=3, iters=20)
    return 2 * num_bytes / (ms * 1e-3) / 1e9


def make_inputs(rows: int, heads: list[int], dim: int, dtype: torch.dtype):
    offsets = torch.tensor([0] + heads, device="cuda").cumsum(0)
    x = F.normalize(torch.randn(rows, dim, device="cuda"), dim=1).to(dtype)
    centers = F.normalize(torch.randn(sum(heads), dim, device="cuda"), dim=1)
    duals = torch.rand(sum(heads), device="cuda") * 0.05
    return x, centers, duals, offsets


def methods(x, centers, duals, offsets):
    """name -> (callable, precision the roofline should use)."""
    offsets_host = offsets.tolist()
    return {
        "torch chunked": (lambda: assign(x, centers, duals, offsets_host, kernel="torch"), "fp32"),
        "official style": (lambda: assign_reference_style(x, centers, duals, offsets_host), "fp32"),
        "triton ieee": (lambda: assign(x, centers, duals, offsets, kernel="triton", precision="ieee"), "fp32"),
        "triton tf32": (lambda: assign(x, centers, duals, offsets, kernel="triton", precision="tf32"), "tf32"),
    }


def agreement(x, centers, duals, offsets) -> float:
    """Fraction of labels where the fused kernel (ieee) agrees with the torch reference."""
    fused, _ = assign(x, centers, duals, offsets, kernel="triton")
    reference, _ = assign(x, centers, duals, offsets.tolist(), kernel="torch")
    return float((fused == reference).float().mean())


def update_times(x, centers, duals, offsets, warmup, iters):
    labels, counts = assign(x, centers, duals, offsets, kernel="triton")
    target = torch.full_like(duals, 0.4 / centers.shape[0])
    out = {}
    for kernel in ("torch", "triton"):
        state = (centers.clone(), torch.zeros_like(counts, dtype=torch.int64), duals.clone())
        out[kernel] = cuda_time_ms(
            lambda: update_clusters_(x, labels, counts, *state, target, dual_lr=20.0, kernel=kernel), warmup, iters)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--clusters", nargs="+", default=list(CLUSTER_SETS), choices=list(CLUSTER_SETS))
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="dtype of x (centres stay fp32)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("benchmarks/assign.py needs a CUDA device and none is available "
              "(torch.cuda.is_available() is False); nothing was measured.", file=sys.stderr)
        return 2

    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    torch.backends.cuda.matmul.allow_tf32 = False  # the torch reference is exact fp32
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  x dtype {args.dtype}")
    peaks = {"fp32": peak_matmul_tflops(torch.float32, tf32=False),
             "tf32": peak_matmul_tflops(torch.float32, tf32=True),
             "bf16": peak_matmul_tflops(torch.bfloat16, tf32=False)}
    bandwidth = copy_bandwidth_gbs()
    print("measured peaks: " + ", ".join(f"{k} mm {v:.1f} TFLOP/s" for k, v in peaks.items())
          + f", copy {bandwidth:.0f} GB/s\n")

    header = (f"{'B':>6} {'sum K':>6} {'D':>4}  {'method':<15} {'ms':>8} {'speedup':>8} "
              f"{'TFLOP/s':>8} {'roofline':>9}")
    print(header)
    print("-" * len(header))
    for rows in args.rows:
        for cluster_set in args.clusters:
            heads = CLUSTER_SETS[cluster_set]
            for dim in args.dims:
                x, centers, duals, offsets = make_inputs(rows, heads, dim, dtype)
                total = sum(heads)
                flops = 2 * rows * dim * total
                num_bytes = rows * dim * x.element_size() + total * dim * centers.element_size()
                baseline = None
                for name, (fn, precision) in methods(x, centers, duals, offsets).items():
                    ms = cuda_time_ms(fn, args.warmup, args.iters)
                    baseline = baseline or ms
                    roofline_ms = max(flops / (peaks[precision] * 1e12), num_bytes / (bandwidth * 1e9)) * 1e3
                    print(f"{rows:>6} {total:>6} {dim:>4}  {name:<15} {ms:>8.3f} {baseline / ms:>7.2f}x "
                          f"{flops / (ms * 1e-3) / 1e12:>8.2f} {roofline_ms / ms:>8.1%}")
                updates = update_times(x, centers, duals, offsets, args.warmup, args.iters)
                print(f"{'':>19}  labels agree {agreement(x, centers, duals, offsets):.4%}; update "
                      f"torch {updates['torch']:.3f} ms, triton {updates['triton']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
