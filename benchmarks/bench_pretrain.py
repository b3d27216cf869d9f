"""Pre-training step throughput next to a plain supervised step of the same backbone, batch and image size.

Each measurement runs in its own process (so peak memory is its own), alternating method and supervised
rounds; prints the median images/s of each, the ratio method/supervised, and peak memory (CUDA peak
allocation on a GPU, process max RSS on CPU).
Usage: python benchmarks/bench_pretrain.py --method spark [--backbone resnet50 --size 224 --batch 16 --rounds 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time

import torch
import torchvision


def _model(kind: str, backbone: str, size: int, device: torch.device) -> tuple[torch.nn.Module, callable]:
    if kind == "spark":
        from medssl_monai.networks import SparK

        model = SparK(backbone, in_channels=1, image_size=size).to(device)
        return model, lambda x: model(x)["loss"]
    net = getattr(torchvision.models, backbone)(num_classes=2)
    net.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    net = net.to(device)
    target = torch.zeros(1, dtype=torch.long, device=device)
    return net, lambda x: torch.nn.functional.cross_entropy(net(x), target.expand(x.shape[0]))


def _measure(kind: str, backbone: str, size: int, batch: int, steps: int, queue: mp.Queue) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model, loss_fn = _model(kind, backbone, size, device)
    from medssl_monai.engines import build_optimizer

    opt = build_optimizer(model, "lamb", lr=1e-4)
    x = torch.rand(batch, 1, size, size, device=device)
    for i in range(steps + 1):
        if i == 1:  # the first step warms up allocators and kernels
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        opt.zero_grad()
        loss_fn(x).backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((steps * batch / (time.perf_counter() - start), peak))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", choices=["spark"], default="spark")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    results: dict[str, list[tuple[float, float]]] = {args.method: [], "supervised": []}
    for _ in range(args.rounds):
        for kind in (args.method, "supervised"):
            queue = ctx.Queue()
            proc = ctx.Process(target=_measure, args=(kind, args.backbone, args.size, args.batch, args.steps, queue))
            proc.start()
            results[kind].append(queue.get())
            proc.join()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU {platform.machine()}, {os.cpu_count()} cores"
    unit = "MiB CUDA peak" if torch.cuda.is_available() else "MiB max RSS"
    print(f"device: {device}; torch {torch.__version__}; {args.backbone}, batch {args.batch}, {args.size}x{args.size}, 1 channel")
    rates = {}
    for kind, values in results.items():
        rates[kind] = statistics.median(v[0] for v in values)
        print(f"{kind:>10}: {rates[kind]:8.2f} images/s, peak {max(v[1] for v in values):8.0f} {unit}")
    print(f"ratio {args.method}/supervised: {rates[args.method] / rates['supervised']:.2f}")


if __name__ == "__main__":
    main()
