"""SparK for CNNs: masked image modelling on a ResNet through sparse convolution emulation, in 2D or 3D.

The encoder is an unmodified ResNet (torchvision's in 2D, MONAI's ``ResNet`` in 3D) whose convolutions, max
pools and batch norms are swapped for subclasses that keep masked positions at exactly zero: a convolution or
pooling output is multiplied by the mask at its resolution, and batch norm computes its statistics over
visible positions only. Parameter names do not change, so the encoder's state_dict loads straight into
``torchvision.models.resnet50()`` or ``monai.networks.nets.resnet50(spatial_dims=3, n_input_channels=1)``.

One mask per sample is drawn on the coarsest grid (input size / the encoder's downsampling: 32 for
torchvision's ResNets, 16 for MONAI's with its default stride-1 stem) and upsampled to every scale. The
densify step normalises each scale's features (sparse batch norm), fills masked positions with a learnable
mask token, and projects to the decoder's width; a light U-Net decoder (768 down to 24 channels for
ResNet50 in 2D) reconstructs the image; the loss is the mean squared error of per-patch-normalised voxels
over masked patches only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet as MonaiResNet
from torch import nn

from medssl_monai.losses.masked_reconstruction import MaskedPatchLoss, normalise_patches
from medssl_monai.networks.backbones import backbone_network, block_width

__all__ = ["upsample_mask", "MaskContext", "SparseEncoder", "LightDecoder", "SparK"]


def upsample_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A (B, 1, *grid) mask repeated to spatial ``size`` (a multiple of the grid): (B, 1, *size)."""
    grid = mask.shape[2:]
    if len(size) != len(grid) or any(s % g for s, g in zip(size, grid)):
        raise ValueError(f"feature map {tuple(size)} is not a multiple of the mask grid {tuple(grid)}")
    for axis, (s, g) in enumerate(zip(size, grid)):
        mask = mask.repeat_interleave(s // g, 2 + axis)
    return mask


class MaskContext:
    """The current mask, shared by every sparse module of one encoder: (B, 1, *grid) bool on the coarsest grid.

    Its upsampling to each feature map size, and the visible positions' indices there, are made once per mask and
    reused by every module at that size (ResNet50 has about 100 sparse modules, over five sizes); assign a new
    mask rather than editing one in place.
    """

    def __init__(self) -> None:
        self._mask: torch.Tensor | None = None
        self._upsampled: dict[tuple[int, ...], torch.Tensor] = {}
        self._positions: dict[tuple[int, ...], torch.Tensor | None] = {}

    @property
    def mask(self) -> torch.Tensor | None:
        return self._mask

    @mask.setter
    def mask(self, mask: torch.Tensor | None) -> None:
        self._mask, self._upsampled, self._positions = mask, {}, {}

    def at(self, size: Sequence[int]) -> torch.Tensor:
        """The mask upsampled to a feature map of spatial ``size``: (B, 1, *size) bool."""
        if self._mask is None:
            raise RuntimeError("sparse module called without a mask: call the encoder with (x, mask)")
        size = tuple(size)
        if size not in self._upsampled:
            self._upsampled[size] = upsample_mask(self._mask, size)
        return self._upsampled[size]

    def positions(self, size: Sequence[int]) -> torch.Tensor | None:
        """The flat indices of the visible positions of each sample in a feature map of spatial ``size``:
        (B, K) int64, ascending; None when the samples have different numbers of visible positions (a mask not
        drawn by :meth:`SparK.random_mask`, which keeps the same number for every sample) or none at all."""
        size = tuple(size)
        if size not in self._positions:
            visible = self.at(size).flatten(1)  # (B, S)
            counts = visible.sum(1)
            equal = bool((counts == counts[0]).all()) and bool(counts[0])
            self._positions[size] = visible.nonzero()[:, 1].view(visible.shape[0], -1) if equal else None
        return self._positions[size]


class _MaskedOutput:
    """Mixin: the module's output is zero at masked positions."""

    context: MaskContext

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out * self.context.at(out.shape[2:])


class SparseConv2d(_MaskedOutput, nn.Conv2d):
    """Conv2d whose output is zero at masked positions."""


class SparseConv3d(_MaskedOutput, nn.Conv3d):
    """Conv3d whose output is zero at masked positions."""


class SparseMaxPool2d(_MaskedOutput, nn.MaxPool2d):
    """MaxPool2d whose output is zero at masked positions."""


class SparseMaxPool3d(_MaskedOutput, nn.MaxPool3d):
    """MaxPool3d whose output is zero at masked positions."""


_SPARSE = {nn.Conv2d: SparseConv2d, nn.Conv3d: SparseConv3d, nn.MaxPool2d: SparseMaxPool2d,
           nn.MaxPool3d: SparseMaxPool3d}


def _visible_norm(x: torch.Tensor, context: MaskContext, forward) -> torch.Tensor:
    """Apply a 1D batch norm ``forward`` to the visible positions of x (B, C, *S); masked stay zero.

    The visible positions are gathered along the layout's contiguous position axis (x as (B, C, S), or as
    (B, S, C) when it is channels-last), normalised and scattered back: about 1.3x a dense batch norm's cost on a
    CPU, where boolean indexing of the channels-first layout costs 2-2.5x (it copies x to channels-last first).
    """
    b, c, *size = x.shape
    if context.mask is not None and context.mask.shape[0] != b:
        raise ValueError(f"a mask of {context.mask.shape[0]} samples for a batch of {b}")
    index = context.positions(size)  # (B, K), or None
    if index is None:  # samples with unequal visible counts: boolean indexing
        keep = context.at(size)[:, 0]  # (B, *S)
        channels_last = x.movedim(1, -1)  # (B, *S, C)
        out = torch.zeros_like(channels_last)
        out[keep] = forward(channels_last[keep])  # (N_visible, C)
        return out.movedim(-1, 1)
    if x.movedim(1, -1).is_contiguous():  # channels-last memory: positions then channels
        flat = x.movedim(1, -1).reshape(b, -1, c)  # (B, S, C), a view
        index = index.unsqueeze(-1).expand(-1, -1, c)  # (B, K, C)
        visible = forward(flat.gather(1, index).view(-1, c)).view(b, -1, c)  # BN1d over (B * K, C)
        return torch.zeros_like(flat).scatter_(1, index, visible).view(b, *size, c).movedim(-1, 1)
    flat = x.reshape(b, c, -1)  # (B, C, S)
    index = index.unsqueeze(1).expand(-1, c, -1)  # (B, C, K)
    return torch.zeros_like(flat).scatter_(2, index, forward(flat.gather(2, index))).view_as(x)  # BN1d over (B, C, K)


class SparseBatchNorm(nn.BatchNorm1d):
    """Batch norm over visible positions only, of 2D or 3D feature maps; parameter names as nn.BatchNorm2d's
    and nn.BatchNorm3d's."""

    context: MaskContext

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _visible_norm(x, self.context, super().forward)


class SparseSyncBatchNorm(nn.SyncBatchNorm):
    """Synchronised batch norm over visible positions of every rank (under DDP)."""

    context: MaskContext

    def _check_input_dim(self, input: torch.Tensor) -> None:  # noqa: A002 - torch's name
        if input.dim() not in (2, 3):
            raise ValueError(f"expected (N, C) or (B, C, K) visible features, got {input.dim()}D input")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _visible_norm(x, self.context, super().forward)


def _sparsify(module: nn.Module, context: MaskContext, sync_bn: bool) -> nn.Module:
    """Swap convolutions, max pools and batch norms of ``module`` for their sparse subclasses, in place."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm2d, nn.BatchNorm3d)):
            cls = SparseSyncBatchNorm if sync_bn else SparseBatchNorm
            new = cls(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine,
                      track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
        elif type(child) in _SPARSE:
            new = child
            new.__class__ = _SPARSE[type(child)]
        else:
            _sparsify(child, context, sync_bn)
            continue
        new.context = context
        setattr(module, name, new)
    return module


class SparseEncoder(nn.Module):
    """A ResNet run sparsely: returns its four stages' features, coarse first (strides 32, 16, 8, 4 for
    torchvision's ResNets in 2D; 16, 8, 4, 2 for MONAI's in 3D, whose stem keeps full resolution).

    Args:
        backbone: ``resnet18``, ``resnet34`` or ``resnet50``.
        in_channels: 1 for CT directly, 3 for the paper's replicated input (2D).
        sync_bn: use synchronised sparse batch norm (DDP).
        spatial_dims: 2 (torchvision's ResNet) or 3 (MONAI's ``ResNet``).
    """

    def __init__(self, backbone: str = "resnet50", in_channels: int = 1, sync_bn: bool = False,
                 spatial_dims: int = 2) -> None:
        super().__init__()
        net = backbone_network(backbone, in_channels, spatial_dims)
        if spatial_dims == 2:
            del net.fc, net.avgpool
        self.spatial_dims = spatial_dims
        # the stem's stride times the three strided stages'
        self.downsample = net.conv1.stride[0] * (1 if getattr(net, "no_max_pool", False) else 2) * 8
        self.context = MaskContext()
        self.net = _sparsify(net, self.context, sync_bn)
        # channels of the four stages' features, coarse first
        self.widths = [block_width(m) for m in (net.layer4[-1], net.layer3[-1], net.layer2[-1], net.layer1[-1])]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """x (B, C, *S) already masked; mask (B, 1, *S / downsample) bool, True = visible."""
        self.context.mask = mask
        try:
            n = self.net
            act = n.act if isinstance(n, MonaiResNet) else n.relu
            x = n.maxpool(act(n.bn1(n.conv1(x))))  # (B, 64, *S * 4 / downsample)
            f4 = n.layer1(x)
            f8 = n.layer2(f4)
            f16 = n.layer3(f8)
            f32 = n.layer4(f16)
        finally:
            self.context.mask = None
        return [f32, f16, f8, f4]

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under torchvision's (2D) or MONAI's (3D) names (no ``fc``)."""
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}


def _layers(spatial_dims: int) -> tuple[type, type, type]:
    """(convolution, transposed convolution, batch norm) classes of ``spatial_dims``."""
    return getattr(nn, f"Conv{spatial_dims}d"), getattr(nn, f"ConvTranspose{spatial_dims}d"), \
        getattr(nn, f"BatchNorm{spatial_dims}d")


class _UpBlock(nn.Sequential):
    """Upsample x2 by transposed convolution, then two 3x3 convolutions with batch norm and ReLU6."""

    def __init__(self, cin: int, cout: int, spatial_dims: int = 2) -> None:
        conv, transposed, norm = _layers(spatial_dims)
        super().__init__(
            transposed(cin, cout, kernel_size=4, stride=2, padding=1, bias=True),
            conv(cout, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU6(inplace=True),
            conv(cout, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU6(inplace=True),
        )


class LightDecoder(nn.Module):
    """Light U-Net decoder: x2 upsampling blocks from ``width`` at stride ``downsample`` to stride 1, halving the
    channels at each (768 to 24 for the 2D ResNet50's five)."""

    def __init__(self, width: int = 768, out_channels: int = 1, spatial_dims: int = 2, downsample: int = 32) -> None:
        super().__init__()
        steps = int(math.log2(downsample))
        self.channels = [width // 2**i for i in range(steps + 1)]  # 768, 384, 192, 96, 48, 24
        self.blocks = nn.ModuleList(_UpBlock(a, b, spatial_dims) for a, b in zip(self.channels[:-1], self.channels[1:]))
        self.proj = _layers(spatial_dims)[0](self.channels[-1], out_channels, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: densified maps of the encoder's four stages (coarse first) with the decoder's widths;
        returns (B, C, *S)."""
        x = 0
        for i, block in enumerate(self.blocks):
            if i < len(features):
                x = x + features[i]
            x = block(x)
        return self.proj(x)


class SparK(nn.Module):
    """SparK pre-training model: sparse encoder, densify step, light decoder, masked-patch loss.

    Args:
        backbone: ``resnet18``, ``resnet34`` or ``resnet50``.
        in_channels: 1 (CT as is) or 3 (replicated, paper-compatible; 2D).
        image_size: input size, one value for a square (cube) or one per axis; multiples of the encoder's
            downsampling (32 in 2D, 16 in 3D), which is also the side of a mask patch.
        mask_ratio: share of masked patches on the mask grid.
        decoder_width: decoder channels at the coarsest stride (768 for ResNet50 as in the paper).
        sync_bn: synchronised sparse batch norm (DDP).
        spatial_dims: 2 (slices, torchvision's ResNet) or 3 (volume patches, MONAI's ``ResNet``).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        in_channels: int = 1,
        image_size: int | Sequence[int] = 224,
        mask_ratio: float = 0.6,
        decoder_width: int = 768,
        sync_bn: bool = False,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.encoder = SparseEncoder(backbone, in_channels, sync_bn, spatial_dims)
        patch = self.encoder.downsample
        size = (image_size,) * spatial_dims if isinstance(image_size, int) else tuple(int(v) for v in image_size)
        if len(size) != spatial_dims or any(v % patch for v in size):
            raise ValueError(f"image_size must be {spatial_dims} multiples of {patch} for SparK ({spatial_dims}D), "
                             f"got {image_size}")
        self.image_size, self.mask_ratio, self.in_channels = size, mask_ratio, in_channels
        self.grid = tuple(v // patch for v in size)
        cells = math.prod(self.grid)
        if cells - max(1, round(cells * (1 - mask_ratio))) < 1:
            raise ValueError(f"image_size {image_size} with mask_ratio {mask_ratio} leaves no patch of the "
                             f"{'x'.join(map(str, self.grid))} grid masked, so there is nothing to reconstruct; use "
                             "a larger image_size or mask_ratio")
        self.decoder = LightDecoder(decoder_width, in_channels, spatial_dims, patch)
        dec = self.decoder.channels[:4]
        norm = SparseSyncBatchNorm if sync_bn else SparseBatchNorm
        self.densify_norms = nn.ModuleList(norm(w) for w in self.encoder.widths)
        for m in self.densify_norms:
            m.context = self.encoder.context
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, w, *(1,) * spatial_dims))
                                            for w in self.encoder.widths)
        for token in self.mask_tokens:
            nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)
        conv = _layers(spatial_dims)[0]
        self.densify_projs = nn.ModuleList(
            conv(w, d, kernel_size=1 if i == 0 else 3, padding=0 if i == 0 else 1)
            for i, (w, d) in enumerate(zip(self.encoder.widths, dec))
        )
        self.criterion = MaskedPatchLoss()

    def random_mask(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """(B, 1, *grid) bool, True = visible; exactly round(cells * (1 - mask_ratio)) visible patches per sample."""
        n = math.prod(self.grid)
        keep = max(1, round(n * (1 - self.mask_ratio)))
        order = torch.rand(batch, n, device=device).argsort(dim=1)
        mask = torch.zeros(batch, n, dtype=torch.bool, device=device)
        mask.scatter_(1, order[:, :keep], True)
        return mask.view(batch, 1, *self.grid)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D) of the whole, unmasked input, for monitoring (k-NN, collapse)."""
        p = self.encoder.downsample
        visible = torch.ones(x.shape[0], 1, *(s // p for s in x.shape[2:]), dtype=torch.bool, device=x.device)
        return self.encoder(x, visible)[0].mean(dim=tuple(range(2, x.ndim)))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, L, p^d * C): p the patch side, L the patches (row-major over the grid)."""
        b, c, *size = x.shape
        p, d = self.encoder.downsample, len(size)
        x = x.reshape(b, c, *(v for s in size for v in (s // p, p)))  # (B, C, g1, p, g2, p[, g3, p])
        x = x.permute(0, *range(2, 2 + 2 * d, 2), *range(3, 3 + 2 * d, 2), 1)  # (B, g1, g2[, g3], p, p[, p], C)
        return x.reshape(b, math.prod(s // p for s in size), p**d * c)

    def unpatchify(self, patches: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """The inverse of :meth:`patchify`: (B, L, p^d * C) -> (B, C, *size)."""
        b, d, p = patches.shape[0], len(size), self.encoder.downsample
        grid = [s // p for s in size]
        x = patches.reshape(b, *grid, *(p,) * d, -1)  # (B, g1, g2[, g3], p, p[, p], C)
        x = x.permute(0, 2 * d + 1, *(a for i in range(d) for a in (1 + i, 1 + d + i)))  # (B, C, g1, p, g2, p...)
        return x.reshape(b, -1, *size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x (B, C, *S); returns ``loss``, ``reconstruction`` (B, C, *S, in the input's scale), ``mask``."""
        b, c, *size = x.shape
        if tuple(size) != self.image_size or c != self.in_channels:
            raise ValueError(f"SparK expects input (B, {self.in_channels}, {', '.join(map(str, self.image_size))}), "
                             f"got {tuple(x.shape)}")
        mask = self.random_mask(b, x.device) if mask is None else mask
        masked = x * upsample_mask(mask, size)
        features = self.encoder(masked, mask)  # the four stages, coarse first
        self.encoder.context.mask = mask
        try:
            dense = []
            for f, norm, token, proj in zip(features, self.densify_norms, self.mask_tokens, self.densify_projs):
                visible = self.encoder.context.at(f.shape[2:])
                f = torch.where(visible, norm(f), token.expand_as(f))
                dense.append(proj(f))
        finally:
            self.encoder.context.mask = None
        pred = self.decoder(dense)  # (B, C, *S) in normalised-patch space

        pred_patches, target = self.patchify(pred), self.patchify(x)  # (B, L, p^d * C)
        loss = self.criterion(pred_patches, target, ~mask.view(b, -1))
        _, mean, std = normalise_patches(target)
        reconstruction = self.unpatchify(pred_patches * std + mean, size)
        return {"loss": loss, "reconstruction": reconstruction, "mask": mask, "masked_input": masked}
