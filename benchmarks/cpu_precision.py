"""bf16 autocast against fp32 for one training step on the CPU (the evidence for the precision default without a GPU).

    python benchmarks/cpu_precision.py [--backbone resnet10t] [--batch-size 128] [--image-size 32] [--steps 3]
        [--warmup 1] [--rounds 2] [--threads N]

A step is forward + cross-entropy + backward + SGD step of a timm backbone on random images, the same work for
both precisions. The two precisions alternate in rounds (fp32 steps, then bf16 steps, ...), so a change in the
load of shared cores hits both; the table gives the median ms/step over all rounds.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import timm
import torch


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return " ".join(f for f in wanted if f in flags) or "none of " + ", ".join(wanted)


def step_times(model, optimizer, images, labels, bf16: bool, steps: int, warmup: int) -> list[float]:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.backbone, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 10, (args.batch_size,))
    times: dict[str, list[float]] = {"32": [], "bf16-mixed": []}
    for round_ in range(args.rounds):
        for precision in times:
            measured = step_times(model, optimizer, images, labels, precision == "bf16-mixed", args.steps, args.warmup)
            times[precision] += measured
            print(f"round {round_ + 1} {precision}: " + " ".join(f"{ms:.0f}" for ms in measured) + " ms",
                  file=sys.stderr, flush=True)
    print(f"{args.backbone}, batch {args.batch_size}, {args.image_size} px, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {len(os.sched_getaffinity(0))} cores, CPU flags: {cpu_flags()}")
    print(f"median of {args.rounds} rounds x {args.steps} steps (after {args.warmup} warm-up steps each)\n")
    reference = statistics.median(times["32"])
    print("| precision | ms/step | images/s | time vs fp32 |\n|---|---:|---:|---:|")
    for precision, values in times.items():
        ms = statistics.median(values)
        print(f"| {precision} | {ms:.1f} | {args.batch_size / ms * 1e3:.0f} | {ms / reference:.2f}x |")


if __name__ == "__main__":
    main()
