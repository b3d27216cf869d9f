"""Pre-training step throughput of our methods next to a peer, same backbone, batch, image size and optimiser.

The peer of MoCo v2, BYOL and SwAV is the same method assembled from lightly's modules and losses as lightly's
examples do (``pip install -e ".[test]"`` brings lightly); SparK's is the official SparK (``--spark_repo``, a
checkout of github.com/keyu-tian/SparK: its sparse encoder on timm's ResNet and its light decoder, 3 channels
as it is written for), or without one a plain supervised step of the backbone. Each method's compute ideal is
measured in every run (:data:`IDEALS`): a supervised step divided by the method's backbone passes
(:func:`passes`); for SwAV a supervised step over its own 2 global and 6 local crops (:func:`_supervised_views`);
for SparK its own encoder, projections and decoder run densely, without masking (:func:`_dense_spark`). All kinds
are timed in one process (:func:`_blocks`): after an untimed round, ``--rounds`` rounds of one block of
``--steps`` steps per kind, the order rotated and reversed from round to round (:func:`common.time_blocks`), so
that a slow spell of a shared machine falls on every kind of a round alike; each ratio is taken within a round (ours over the
peer or the ideal; for a lever, ours with it over ours without), then the median over the rounds with its
range. Peak memory (CUDA peak allocation on a GPU, process max RSS on a CPU) and the first step's time are each
kind's alone, in a fresh process. Prints the median images/s of each kind with its range (images = samples of
the batch, whatever the number of views), the ratios and the peaks. Inputs are random tensors of each method's
view shapes, so only the step is timed. With ``--spatial_dims 3`` every input is a ``size``-cubed patch and every
backbone MONAI's 3D ResNet (the methods' own and the peers' alike); ``--decoder_width`` sets SparK's decoder.
``--levers channels_last,foreach,compile,amp`` also measures ours with each of the trainer's speed ids on
(compile: steady-state steps after the first, which compiles; amp: bf16 autocast on a CPU, fp16 on a GPU), and
``batch_views`` (BYOL, SwAV) ours with the network's one pass over the views of one size turned off, a pass per
view instead; each effect is the rate with the lever over the rate without.
Usage: python benchmarks/bench_pretrain.py --method spark|moco|byol|swav [--backbone resnet50 --size 224
--batch 16 --steps 3 --rounds 6 --spatial_dims 2 --in_channels 1 --decoder_width 768 --levers foreach
--spark_repo PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import torch
import torchvision
from common import alternate, device_name, in_child, median_range, ranged, repeated, sync, time_blocks

LOCAL_SIZE_RATIO = 96 / 224  # SwAV's local crops relative to the global ones
LEVERS = ("channels_last", "foreach", "compile", "amp")  # the trainer's speed ids, each measured on top of "ours"
# the networks' speed ids, on by default in "ours": each measured as ours with it off; {lever: its methods}
NETWORK_LEVERS = {"batch_views": ("byol", "swav")}


def lever_kind(lever: str) -> str:
    """The kind that measures ``lever``: ``ours+<lever>`` (a trainer's id turned on) or ``ours-<lever>`` (a
    network's id turned off)."""
    return f"ours-{lever}" if lever in NETWORK_LEVERS else f"ours+{lever}"


@dataclasses.dataclass(frozen=True)
class Setting:
    """What every kind of one comparison shares."""

    method: str
    backbone: str = "resnet50"
    size: int = 224
    batch: int = 16
    steps: int = 3
    spatial_dims: int = 2
    in_channels: int = 1
    decoder_width: int = 768
    spark_repo: str | None = None


# the kind whose step, divided by :func:`passes`, is a method's compute ideal
IDEALS = {"spark": "dense", "moco": "supervised", "byol": "supervised", "swav": "supervised_views"}


def passes(method: str) -> float:
    """The backbone work of one step of ``method`` in steps of its ideal's kind (:data:`IDEALS`; a forward alone
    counts 1/3 of a forward + backward, as a backward costs about two forwards). MoCo v2: the query's forward +
    backward and the key's forward, in supervised steps on one view (4/3); BYOL: both views through the online
    network and both through the target (8/3). SwAV: its 2 global and 6 local crops forward + backward, measured
    as one supervised step over those very crops (1), as a crop's cost is not its share of the pixels (per-layer
    overheads, the efficiency of larger batches). SparK: one pass of its encoder and decoder, measured unmasked
    (1)."""
    return {"moco": 4 / 3, "byol": 8 / 3}.get(method, 1.0)


def _views(setting: Setting, device: torch.device) -> list[torch.Tensor]:
    """Random inputs of the method's shape: one batch (SparK), two views, or 2 global + 6 local crops (SwAV)."""
    size = setting.size
    shapes = {"spark": [size], "moco": [size] * 2, "byol": [size] * 2,
              "swav": [size] * 2 + [round(size * LOCAL_SIZE_RATIO)] * 6}[setting.method]
    return [torch.rand(setting.batch, setting.in_channels, *[s] * setting.spatial_dims, device=device) for s in shapes]


def _backbone(setting: Setting) -> torch.nn.Module:
    """A ResNet without classifier, built with its library alone: torchvision's (2D), MONAI's (3D)."""
    if setting.spatial_dims == 3:
        import monai.networks.nets

        return getattr(monai.networks.nets, setting.backbone)(spatial_dims=3, n_input_channels=setting.in_channels,
                                                              feed_forward=False)
    net = getattr(torchvision.models, setting.backbone)()
    net.conv1 = torch.nn.Conv2d(setting.in_channels, 64, 7, 2, 3, bias=False)
    net.fc = torch.nn.Identity()
    return net


def _ours(setting: Setting, batch_views: bool = True):
    """(model, loss of a list of views) for medssl-monai's implementation, ``batch_views`` as BYOL and SwAV take
    it."""
    from medssl_monai.networks import BYOL, MoCo, SparK, SwAV

    backbone, dims, channels = setting.backbone, setting.spatial_dims, setting.in_channels
    if setting.method == "spark":
        model = SparK(backbone, in_channels=channels, image_size=setting.size, decoder_width=setting.decoder_width,
                      spatial_dims=dims)
        return model, lambda views: model(views[0])["loss"]
    build = {"moco": lambda: MoCo(backbone, channels, spatial_dims=dims, queue_size=4096),
             "byol": lambda: BYOL(backbone, channels, spatial_dims=dims, total_iterations=100,
                                  batch_views=batch_views),
             "swav": lambda: SwAV(backbone, channels, spatial_dims=dims, freeze_prototypes_iterations=0,
                                  batch_views=batch_views)}
    model = build[setting.method]()
    return model, lambda views: model(views)["loss"]


def _supervised(setting: Setting, all_views: bool = False):
    """A plain supervised step: the backbone and a linear layer, cross-entropy, on the first view or, with
    ``all_views``, on every view, the views of one size as one batch (as SwAV's ``embed`` batches them)."""
    net = torch.nn.Sequential(_backbone(setting), torch.nn.LazyLinear(2))

    def loss(views: list[torch.Tensor]) -> torch.Tensor:
        if all_views:
            views = [torch.cat(list(group)) for _, group in itertools.groupby(views, key=lambda v: v.shape[2:])]
        out = [net(x) for x in views[:len(views) if all_views else 1]]  # (N, 2) per batch
        return sum(torch.nn.functional.cross_entropy(o, torch.zeros(len(o), dtype=torch.long, device=o.device))
                   for o in out)
    return net, loss


def _supervised_views(setting: Setting):
    """A supervised step over every view of the method (SwAV's compute ideal)."""
    return _supervised(setting, all_views=True)


def _official_spark(setting: Setting):
    """(model, loss) of the official SparK from a checkout of its repository, as its ``pretrain/main.py``
    builds it (timm ResNet made sparse, LightDecoder, mask ratio 0.6, batch norm per process)."""
    if setting.in_channels != 3 or setting.spatial_dims != 2:
        raise ValueError("the official SparK is 2D and reconstructs 3 channels: use --in_channels 3")
    import timm.layers.drop

    # written for timm 0.5.4; timm 1.x moved this module (kept as an alias, its code is otherwise unchanged)
    sys.modules.setdefault("timm.models.layers.drop", timm.layers.drop)
    sys.path.insert(0, str(Path(setting.spark_repo) / "pretrain"))
    from decoder import LightDecoder
    from models import build_sparse_encoder
    from spark import SparK

    encoder = build_sparse_encoder(setting.backbone, input_size=setting.size, sbn=False)
    model = SparK(encoder, LightDecoder(encoder.downsample_raito, width=setting.decoder_width, sbn=False),
                  mask_ratio=0.6, densify_norm="bn", sbn=False)
    return model, lambda views: model(views[0])


def _lightly(setting: Setting):
    """(model, loss of a list of views) built from lightly's modules as its examples do."""
    method, backbone = setting.method, setting.backbone
    import copy

    from lightly.loss import NegativeCosineSimilarity, NTXentLoss, SwaVLoss
    from lightly.models.modules import (
        BYOLPredictionHead,
        BYOLProjectionHead,
        MoCoProjectionHead,
        SwaVProjectionHead,
        SwaVPrototypes,
    )
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    net = _backbone(setting)
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


def _dense_spark(setting: Setting):
    """(model, loss) of SparK's compute without its masking, SparK's compute ideal: the plain backbone (stock
    layers), batch norm and the same projections on its four stages, the same light decoder, a mean squared
    error on the whole image."""
    from medssl_monai.networks import SparK

    spark = SparK(setting.backbone, in_channels=setting.in_channels, image_size=setting.size,
                  decoder_width=setting.decoder_width, spatial_dims=setting.spatial_dims)
    model = torch.nn.Module()
    model.net = _backbone(setting)
    norm = getattr(torch.nn, f"BatchNorm{setting.spatial_dims}d")
    model.norms = torch.nn.ModuleList(norm(w) for w in spark.encoder.widths)
    model.projs, model.decoder = spark.densify_projs, spark.decoder

    def loss(views):
        n, x = model.net, views[0]
        act = n.act if hasattr(n, "act") else n.relu
        f4 = n.layer1(n.maxpool(act(n.bn1(n.conv1(x)))))
        f8 = n.layer2(f4)
        f16 = n.layer3(f8)
        stages = [n.layer4(f16), f16, f8, f4]  # coarse first, as SparK's decoder takes them
        pred = model.decoder([proj(norm(f)) for f, norm, proj in zip(stages, model.norms, model.projs)])
        return torch.nn.functional.mse_loss(pred, x)
    return model, loss


BUILDERS = {"ours": _ours, "supervised": _supervised, "supervised_views": _supervised_views, "dense": _dense_spark,
            "lightly": _lightly, "official": _official_spark}


def _step(kind: str, setting: Setting, device: torch.device):
    """One training step of ``kind`` as a callable: ``ours``, ``ours+<lever>`` (one of :data:`LEVERS` on),
    ``ours-<lever>`` (one of :data:`NETWORK_LEVERS` off),
    ``supervised``, ``supervised_views``, ``dense`` (SparK unmasked), ``lightly`` or ``official``; its model is
    built, placed and its lazy layers materialised, but no step has run yet."""
    from medssl_monai.optimizers import build_optimizer
    from medssl_monai.utils import channels_last_format, place

    torch.manual_seed(0)
    base, _, lever = kind.partition("+")
    base, _, off = base.partition("-")
    model, loss_fn = BUILDERS[base](setting, **({off: False} if off else {}))
    views = _views(setting, device)
    model = place(model, device)
    loss_fn(views)  # materialises lazy layers before the optimiser sees the parameters
    if lever == "channels_last":  # as the trainer does: weights before the optimiser exists, inputs every step
        model = place(model, device, channels_last=True)
        views = [v.contiguous(memory_format=channels_last_format(v.ndim)) for v in views]
    if lever == "compile":
        loss_fn = torch.compile(loss_fn)
    if lever == "amp":  # the trainer's autocast: bf16 on a CPU, its default fp16 on a GPU (here without a scaler)
        dtype, plain_loss = (torch.bfloat16 if device.type == "cpu" else torch.float16), loss_fn

        def loss_fn(views: list[torch.Tensor]) -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype):
                return plain_loss(views)
    opt = build_optimizer(model, "sgd", lr=1e-4, weight_decay=1e-6, foreach=True if lever == "foreach" else None)

    def step() -> None:
        opt.zero_grad()
        loss_fn(views).backward()
        opt.step()
        if hasattr(model, "update_momentum"):  # as the trainer does after the optimiser step
            model.update_momentum()
    return step


def _blocks(kinds: list[str], setting: Setting, rounds: int, queue: mp.Queue) -> None:
    """Time every kind in this one process (:func:`common.time_blocks`): ``rounds`` rounds, after an untimed one
    (which compiles), of one block of ``setting.steps`` steps per kind; puts {kind: seconds of its block, per
    round}."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    blocks = {kind: repeated(_step(kind, setting, device), setting.steps) for kind in kinds}
    queue.put(time_blocks(blocks, rounds, device))


def _footprint(kind: str, setting: Setting, queue: mp.Queue) -> None:
    """Peak memory of ``kind`` alone in this process (CUDA peak allocation on a GPU, max RSS on a CPU) over a
    first and a second step; puts (peak MiB, seconds of the first step, which warms up allocators and kernels
    and compiles)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    step = _step(kind, setting, device)
    start = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - start
    step()
    sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((peak, first))


def peer_of(setting: Setting) -> str:
    """The kind ``ours`` is compared with: lightly's method, the official SparK, or (no checkout) a supervised
    step."""
    if setting.method != "spark":
        return "lightly"
    return "official" if setting.spark_repo else "supervised"


def compare(setting: Setting, levers: list[str], rounds: int) -> dict:
    """Every kind's block times over ``rounds`` in one process (:func:`_blocks`) and, each kind alone in a fresh
    process, its peak memory and first step (:func:`_footprint`): ours, ours with each lever, the peer, and the
    compute ideal's step (:data:`IDEALS`). Returns {"seconds": {kind: [per round]}, "footprint": {kind:
    (peak MiB, first step s)}}."""
    ideal = IDEALS[setting.method]
    kinds = ["ours", *map(lever_kind, levers), *dict.fromkeys([peer_of(setting), ideal])]
    footprint = {kind: values[0] for kind, values in alternate(_footprint, kinds, 1, setting).items()}
    return {"seconds": in_child(_blocks, kinds, setting, rounds), "footprint": footprint}


@dataclasses.dataclass
class Summary:
    """One comparison, read: each kind's median rate and range, peaks, and the ratios of ours to every other
    kind, each the median (and range) over the rounds of the ratio within a round."""

    setting: Setting
    rates: dict[str, tuple[float, float, float]]  # kind: (median, lowest, highest) images/s
    peaks: dict[str, float]  # kind: peak MiB, alone in its process
    firsts: dict[str, float]  # kind: first step, seconds
    peer: str
    passes: float  # the ideal's step count per step of ours (:func:`passes`)
    ideal: tuple[float, float, float]  # images/s: (median, lowest, highest) of the ideal's step / passes
    over: dict[str, tuple[float, float, float]]  # kind: ours' rate / the kind's, median and range over rounds
    levers: dict[str, tuple[float, float, float]]  # lever: rate with it / rate without, median and range

    @property
    def ours_over_peer(self) -> tuple[float, float, float]:
        return self.over[self.peer]

    @property
    def ours_over_ideal(self) -> tuple[float, float, float]:
        return tuple(v * self.passes for v in self.over[IDEALS[self.setting.method]])


def summarise(setting: Setting, results: dict) -> Summary:
    """The medians, ranges and paired ratios of :func:`compare`'s results."""
    per_round = {kind: [setting.steps * setting.batch / s for s in seconds]
                 for kind, seconds in results["seconds"].items()}  # images/s
    rates = {kind: median_range(values) for kind, values in per_round.items()}
    over = {kind: median_range([o / k for o, k in zip(per_round["ours"], values)])
            for kind, values in per_round.items()}
    count = passes(setting.method)
    ideal = tuple(v / count for v in rates[IDEALS[setting.method]])
    levers = {}  # lever: the rate with it over the rate without, per round
    for kind, values in per_round.items():
        if kind.startswith(("ours+", "ours-")):  # a lever turned on, or off (:func:`lever_kind`)
            levers[kind[5:]] = median_range([k / o if kind[4] == "+" else o / k
                                             for o, k in zip(per_round["ours"], values)])
    footprint = results["footprint"]
    return Summary(setting, rates, {k: v[0] for k, v in footprint.items()}, {k: v[1] for k, v in footprint.items()},
                   peer_of(setting), count, ideal, over, levers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", choices=["spark", "moco", "byol", "swav"], default="spark")
    parser.add_argument("--rounds", type=int, default=6, help="blocks of --steps steps per kind, in one process")
    parser.add_argument("--levers", default="", help=f"comma-separated, of {', '.join((*LEVERS, *NETWORK_LEVERS))}: "
                                                     "each also measured")
    for field in dataclasses.fields(Setting):
        if field.name != "method":
            parser.add_argument(f"--{field.name}", type=str if field.name in ("backbone", "spark_repo") else int,
                                default=field.default)
    args = parser.parse_args()
    levers = [lever for lever in args.levers.split(",") if lever]
    known = (*LEVERS, *(lever for lever, methods in NETWORK_LEVERS.items() if args.method in methods))
    if set(levers) - set(known):
        parser.error(f"lever(s) {sorted(set(levers) - set(known))} not known for {args.method}; expected "
                     f"{', '.join(known)}")
    setting = Setting(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Setting)})
    summary = summarise(setting, compare(setting, levers, args.rounds))
    unit = "MiB CUDA peak" if torch.cuda.is_available() else "MiB max RSS"
    shape = "x".join([str(setting.size)] * setting.spatial_dims)
    print(f"device: {device_name()}; torch {torch.__version__}; {setting.method}, {setting.backbone}, "
          f"batch {setting.batch}, {shape}, {setting.in_channels} channel(s)"
          + (f", decoder width {setting.decoder_width}" if setting.method == "spark" else ""))
    for kind, (rate, low, high) in summary.rates.items():
        unit_rate = "patches/s" if setting.spatial_dims == 3 else "images/s"
        print(f"{kind:>20}: {rate:8.2f} {unit_rate} ({low:.2f}-{high:.2f}), peak {summary.peaks[kind]:8.0f} {unit}, "
              f"first step {summary.firsts[kind]:.1f} s")
    print(f"ratio ours/{summary.peer}, paired by round: {ranged(summary.ours_over_peer)}")
    print(f"compute ideal: {IDEALS[setting.method]} / {summary.passes:.2f} passes = {summary.ideal[0]:.2f}/s; "
          f"ratio ours/ideal, paired by round: {ranged(summary.ours_over_ideal)}")
    for lever, effect in summary.levers.items():
        print(f"effect of {lever}, paired by round: {ranged(effect)}x ours")


if __name__ == "__main__":
    main()
