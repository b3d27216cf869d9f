"""Pre-training step throughput of our methods next to a peer, same backbone, batch, image size and optimiser.

The peer of SparK is a plain supervised step of the same backbone (what masking and decoding cost); the peer
of MoCo v2, BYOL and SwAV is the same method assembled from lightly's modules and losses as lightly's examples
do (``pip install -e ".[test]"`` brings lightly). Each measurement runs in its own process (so peak memory is
its own), ours and the peer alternating; prints the median images/s of each (images = samples of the batch,
whatever the number of views), the ratio ours/peer, and peak memory (CUDA peak allocation on a GPU, process
max RSS on CPU). Inputs are random tensors of each method's view shapes, so only the step is timed.
With ``--spatial_dims 3`` every input is a ``size``-cubed patch and every backbone MONAI's 3D ResNet (the
methods' own and the peers' alike); ``--decoder_width`` sets SparK's decoder.
Usage: python benchmarks/bench_pretrain.py --method spark|moco|byol|swav [--backbone resnet50 --size 224
--batch 16 --steps 3 --rounds 2 --spatial_dims 2 --decoder_width 768]
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


LOCAL_SIZE_RATIO = 96 / 224  # SwAV's local crops relative to the global ones


def _views(method: str, batch: int, size: int, dims: int, device: torch.device) -> list[torch.Tensor]:
    """Random inputs of the method's shape: one batch (SparK), two views, or 2 global + 6 local crops (SwAV)."""
    shapes = {"spark": [size], "moco": [size] * 2, "byol": [size] * 2,
              "swav": [size] * 2 + [round(size * LOCAL_SIZE_RATIO)] * 6}[method]
    return [torch.rand(batch, 1, *[s] * dims, device=device) for s in shapes]


def _backbone(name: str, dims: int) -> torch.nn.Module:
    """A 1-channel ResNet without classifier, built with its library alone: torchvision's (2D), MONAI's (3D)."""
    if dims == 3:
        import monai.networks.nets

        return getattr(monai.networks.nets, name)(spatial_dims=3, n_input_channels=1, feed_forward=False)
    net = getattr(torchvision.models, name)()
    net.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    net.fc = torch.nn.Identity()
    return net


def _ours(method: str, backbone: str, size: int, dims: int, decoder_width: int):
    """(model, loss of a list of views) for medssl-monai's implementation."""
    from medssl_monai.networks import BYOL, MoCo, SparK, SwAV

    if method == "spark":
        model = SparK(backbone, in_channels=1, image_size=size, decoder_width=decoder_width, spatial_dims=dims)
        return model, lambda views: model(views[0])["loss"]
    model = {"moco": lambda: MoCo(backbone, spatial_dims=dims, queue_size=4096),
             "byol": lambda: BYOL(backbone, spatial_dims=dims, total_iterations=100),
             "swav": lambda: SwAV(backbone, spatial_dims=dims, freeze_prototypes_iterations=0)}[method]()
    return model, lambda views: model(views)["loss"]


def _supervised(backbone: str, dims: int):
    """The plain supervised step SparK is compared with: the backbone and a linear layer, cross-entropy."""
    net = torch.nn.Sequential(_backbone(backbone, dims), torch.nn.LazyLinear(2))
    return net, lambda views: torch.nn.functional.cross_entropy(net(views[0]), torch.zeros(
        len(views[0]), dtype=torch.long, device=views[0].device))


def _lightly(method: str, backbone: str, dims: int):
    """(model, loss of a list of views) built from lightly's modules as its examples do."""
    import copy

    from lightly.loss import NegativeCosineSimilarity, NTXentLoss, SwaVLoss
    from lightly.models.modules import (BYOLPredictionHead, BYOLProjectionHead, MoCoProjectionHead,
                                        SwaVProjectionHead, SwaVPrototypes)
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    net = _backbone(backbone, dims)
    dim = 2048 if backbone == "resnet50" else 512
    model = torch.nn.Module()
    model.backbone = net
    if method == "moco":
        model.head = MoCoProjectionHead(dim, 2048, 128)
        model.backbone_m, model.head_m = copy.deepcopy(net), copy.deepcopy(model.head)
        deactivate_requires_grad(model.backbone_m), deactivate_requires_grad(model.head_m)
        criterion = NTXentLoss(temperature=0.2, memory_bank_size=(4096, 128))

        def loss(views):
            update_momentum(model.backbone, model.backbone_m, 0.999)
            update_momentum(model.head, model.head_m, 0.999)
            q = model.head(model.backbone(views[0]))
            with torch.no_grad():
                k = model.head_m(model.backbone_m(views[1]))
            return criterion(q, k)
        return model, loss
    if method == "byol":
        model.projector, model.predictor = BYOLProjectionHead(dim, 4096, 256), BYOLPredictionHead(256, 4096, 256)
        model.backbone_m, model.projector_m = copy.deepcopy(net), copy.deepcopy(model.projector)
        deactivate_requires_grad(model.backbone_m), deactivate_requires_grad(model.projector_m)
        criterion, step = NegativeCosineSimilarity(), [0]

        def loss(views):
            tau = cosine_schedule(step[0], 100, 0.996, 1.0)
            step[0] += 1
            update_momentum(model.backbone, model.backbone_m, tau)
            update_momentum(model.projector, model.projector_m, tau)
            p0, p1 = (model.predictor(model.projector(model.backbone(v))) for v in views)
            with torch.no_grad():
                z0, z1 = (model.projector_m(model.backbone_m(v)) for v in views)
            return 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        return model, loss
    model.head, model.prototypes = SwaVProjectionHead(dim, 2048, 128), SwaVPrototypes(128, 500)
    criterion = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)

    def loss(views):
        model.prototypes.normalize()
        scores = [model.prototypes(torch.nn.functional.normalize(model.head(model.backbone(v)), dim=1)) for v in views]
        return criterion(scores[:2], scores[2:])
    return model, loss


def _measure(method: str, kind: str, backbone: str, size: int, batch: int, steps: int, dims: int,
             decoder_width: int, queue: mp.Queue) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model, loss_fn = {"ours": lambda: _ours(method, backbone, size, dims, decoder_width),
                      "supervised": lambda: _supervised(backbone, dims),
                      "lightly": lambda: _lightly(method, backbone, dims)}[kind]()
    model = model.to(device)
    views = _views(method, batch, size, dims, device)
    loss_fn(views)  # materialises lazy layers before the optimiser sees the parameters
    from medssl_monai.optimizers import build_optimizer

    opt = build_optimizer(model, "sgd", lr=1e-4, weight_decay=1e-6)
    for i in range(steps + 1):
        if i == 1:  # the first step warms up allocators and kernels
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        opt.zero_grad()
        loss_fn(views).backward()
        opt.step()
        if hasattr(model, "update_momentum"):  # as the trainer does after the optimiser step
            model.update_momentum()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((steps * batch / (time.perf_counter() - start), peak))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", choices=["spark", "moco", "byol", "swav"], default="spark")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--spatial_dims", type=int, choices=[2, 3], default=2)
    parser.add_argument("--decoder_width", type=int, default=768)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    peer = "supervised" if args.method == "spark" else "lightly"
    results: dict[str, list[tuple[float, float]]] = {"ours": [], peer: []}
    for _ in range(args.rounds):
        for kind in results:
            queue = ctx.Queue()
            proc = ctx.Process(target=_measure, args=(args.method, kind, args.backbone, args.size, args.batch,
                                                      args.steps, args.spatial_dims, args.decoder_width, queue))
            proc.start()
            results[kind].append(queue.get())
            proc.join()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU {platform.machine()}, {os.cpu_count()} cores"
    unit = "MiB CUDA peak" if torch.cuda.is_available() else "MiB max RSS"
    shape = "x".join([str(args.size)] * args.spatial_dims)
    print(f"device: {device}; torch {torch.__version__}; {args.method}, {args.backbone}, batch {args.batch}, "
          f"{shape}, 1 channel" + (f", decoder width {args.decoder_width}" if args.method == "spark" else ""))
    rates = {}
    for kind, values in results.items():
        rates[kind] = statistics.median(v[0] for v in values)
        print(f"{kind:>10}: {rates[kind]:8.2f} {'patches' if args.spatial_dims == 3 else 'images'}/s, peak {max(v[1] for v in values):8.0f} {unit}")
    print(f"ratio ours/{peer}: {rates['ours'] / rates[peer]:.2f}")


if __name__ == "__main__":
    main()
