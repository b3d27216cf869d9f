"""SparK for CNNs: masked image modelling on a torchvision ResNet through sparse convolution emulation.

The encoder is an unmodified torchvision ResNet whose convolutions, max pools and batch norms are swapped
for subclasses that keep masked positions at exactly zero: a convolution or pooling output is multiplied by
the mask at its resolution, and batch norm computes its statistics over visible positions only. Parameter
names do not change, so the encoder's state_dict loads straight into ``torchvision.models.resnet50()``.

One mask per sample is drawn on the coarsest grid (input size / 32) and upsampled to every scale. The
densify step normalises each scale's features (sparse batch norm), fills masked positions with a learnable
mask token, and projects to the decoder's width; a light U-Net decoder (768 down to 24 channels for
ResNet50) reconstructs the image; the loss is the mean squared error of per-patch-normalised pixels over
masked patches only.
"""

from __future__ import annotations

import torch
from torch import nn

from medssl_monai.losses.masked_reconstruction import MaskedPatchLoss, normalise_patches
from medssl_monai.networks.backbones import resnet

__all__ = ["upsample_mask", "MaskContext", "SparseEncoder", "LightDecoder", "SparK"]
DOWNSAMPLE = 32


def upsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (B, 1, h, w) mask repeated to spatial ``size`` (a multiple of (h, w)): (B, 1, H, W)."""
    h, w = mask.shape[-2:]
    if size[0] % h or size[1] % w:
        raise ValueError(f"feature map {tuple(size)} is not a multiple of the mask grid {(h, w)}")
    return mask.repeat_interleave(size[0] // h, 2).repeat_interleave(size[1] // w, 3)


class MaskContext:
    """The current mask, shared by every sparse module of one encoder: (B, 1, h, w) bool on the coarsest grid."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def at(self, size: tuple[int, int]) -> torch.Tensor:
        """The mask upsampled to a feature map of spatial ``size``: (B, 1, H, W) bool."""
        if self.mask is None:
            raise RuntimeError("sparse module called without a mask: call the encoder with (x, mask)")
        return upsample_mask(self.mask, size)


class SparseConv2d(nn.Conv2d):
    """Conv2d whose output is zero at masked positions."""

    context: MaskContext

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out * self.context.at(out.shape[-2:])


class SparseMaxPool2d(nn.MaxPool2d):
    """MaxPool2d whose output is zero at masked positions."""

    context: MaskContext

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out * self.context.at(out.shape[-2:])


def _visible_norm(norm: nn.Module, x: torch.Tensor, mask: torch.Tensor, forward) -> torch.Tensor:
    """Apply a 1D batch norm ``forward`` to the visible positions of x (B, C, H, W); masked stay zero."""
    keep = mask[:, 0]  # (B, H, W)
    visible = x.permute(0, 2, 3, 1)[keep]  # (N_visible, C)
    out = torch.zeros_like(x.permute(0, 2, 3, 1))
    out[keep] = forward(visible)
    return out.permute(0, 3, 1, 2)


class SparseBatchNorm2d(nn.BatchNorm1d):
    """Batch norm over visible positions only; parameter names as nn.BatchNorm2d's."""

    context: MaskContext

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _visible_norm(self, x, self.context.at(x.shape[-2:]), super().forward)


class SparseSyncBatchNorm2d(nn.SyncBatchNorm):
    """Synchronised batch norm over visible positions of every rank (under DDP)."""

    context: MaskContext

    def _check_input_dim(self, input: torch.Tensor) -> None:  # noqa: A002 - torch's name
        if input.dim() != 2:
            raise ValueError(f"expected (N, C) visible features, got {input.dim()}D input")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _visible_norm(self, x, self.context.at(x.shape[-2:]), super().forward)


def _sparsify(module: nn.Module, context: MaskContext, sync_bn: bool) -> nn.Module:
    """Swap convolutions, max pools and batch norms of ``module`` for their sparse subclasses, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            cls = SparseSyncBatchNorm2d if sync_bn else SparseBatchNorm2d
            new = cls(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine,
                      track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
        elif isinstance(child, nn.Conv2d):
            new = child
            new.__class__ = SparseConv2d
        elif isinstance(child, nn.MaxPool2d):
            new = child
            new.__class__ = SparseMaxPool2d
        else:
            _sparsify(child, context, sync_bn)
            continue
        new.context = context
        setattr(module, name, new)
    return module


class SparseEncoder(nn.Module):
    """A torchvision ResNet run sparsely: returns features at strides 32, 16, 8, 4 (coarse first).

    Args:
        backbone: ``resnet18``, ``resnet34`` or ``resnet50``.
        in_channels: 1 for CT directly, 3 for the paper's replicated input.
        sync_bn: use synchronised sparse batch norm (DDP).
    """

    def __init__(self, backbone: str = "resnet50", in_channels: int = 1, sync_bn: bool = False) -> None:
        super().__init__()
        net = resnet(backbone, in_channels)
        del net.fc, net.avgpool
        self.context = MaskContext()
        self.net = _sparsify(net, self.context, sync_bn)
        widths = [m.conv3.out_channels if hasattr(m, "conv3") else m.conv2.out_channels
                  for m in (net.layer4[-1], net.layer3[-1], net.layer2[-1], net.layer1[-1])]
        self.widths = widths  # channels of the features at strides 32, 16, 8, 4

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """x (B, C, H, W) already masked; mask (B, 1, H/32, W/32) bool, True = visible."""
        self.context.mask = mask
        try:
            n = self.net
            x = n.maxpool(n.relu(n.bn1(n.conv1(x))))  # (B, 64, H/4, W/4)
            f4 = n.layer1(x)
            f8 = n.layer2(f4)
            f16 = n.layer3(f8)
            f32 = n.layer4(f16)
        finally:
            self.context.mask = None
        return [f32, f16, f8, f4]

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under torchvision's names (no ``fc``)."""
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}


class _UpBlock(nn.Sequential):
    """Upsample x2 by transposed convolution, then two 3x3 convolutions with batch norm and ReLU6."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1, bias=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True),
        )


class LightDecoder(nn.Module):
    """Light U-Net decoder: five x2 upsampling blocks from ``width`` at stride 32 to ``width / 32`` at stride 1."""

    def __init__(self, width: int = 768, out_channels: int = 1) -> None:
        super().__init__()
        self.channels = [width // 2**i for i in range(6)]  # 768, 384, 192, 96, 48, 24
        self.blocks = nn.ModuleList(_UpBlock(a, b) for a, b in zip(self.channels[:-1], self.channels[1:]))
        self.proj = nn.Conv2d(self.channels[-1], out_channels, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: densified maps at strides 32, 16, 8, 4 with the decoder's widths; returns (B, C, H, W)."""
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
        in_channels: 1 (CT as is) or 3 (replicated, paper-compatible).
        image_size: input height and width; a multiple of 32.
        mask_ratio: share of masked patches on the 32x grid.
        decoder_width: decoder channels at stride 32 (768 for ResNet50 as in the paper).
        sync_bn: synchronised sparse batch norm (DDP).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        in_channels: int = 1,
        image_size: int = 224,
        mask_ratio: float = 0.6,
        decoder_width: int = 768,
        sync_bn: bool = False,
    ) -> None:
        super().__init__()
        if image_size % DOWNSAMPLE:
            raise ValueError(f"image_size must be a multiple of {DOWNSAMPLE} for SparK, got {image_size}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.image_size, self.mask_ratio, self.in_channels = image_size, mask_ratio, in_channels
        self.grid = image_size // DOWNSAMPLE
        if self.grid**2 - max(1, round(self.grid**2 * (1 - mask_ratio))) < 1:
            raise ValueError(f"image_size {image_size} with mask_ratio {mask_ratio} leaves no patch of the "
                             f"{self.grid}x{self.grid} grid masked, so there is nothing to reconstruct; use a larger "
                             "image_size or mask_ratio")
        self.encoder = SparseEncoder(backbone, in_channels, sync_bn)
        self.decoder = LightDecoder(decoder_width, in_channels)
        dec = self.decoder.channels[:4]
        norm = SparseSyncBatchNorm2d if sync_bn else SparseBatchNorm2d
        self.densify_norms = nn.ModuleList(norm(w) for w in self.encoder.widths)
        for m in self.densify_norms:
            m.context = self.encoder.context
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, w, 1, 1)) for w in self.encoder.widths)
        for token in self.mask_tokens:
            nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)
        self.densify_projs = nn.ModuleList(
            nn.Conv2d(w, d, kernel_size=1 if i == 0 else 3, padding=0 if i == 0 else 1)
            for i, (w, d) in enumerate(zip(self.encoder.widths, dec))
        )
        self.criterion = MaskedPatchLoss()

    def random_mask(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """(B, 1, g, g) bool, True = visible; exactly round(g*g*(1-mask_ratio)) visible patches per sample."""
        n = self.grid * self.grid
        keep = max(1, round(n * (1 - self.mask_ratio)))
        order = torch.rand(batch, n, device=device).argsort(dim=1)
        mask = torch.zeros(batch, n, dtype=torch.bool, device=device)
        mask.scatter_(1, order[:, :keep], True)
        return mask.view(batch, 1, self.grid, self.grid)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D) of the whole, unmasked input, for monitoring (k-NN, collapse)."""
        b, _, h, w = x.shape
        visible = torch.ones(b, 1, h // DOWNSAMPLE, w // DOWNSAMPLE, dtype=torch.bool, device=x.device)
        return self.encoder(x, visible)[0].mean(dim=(2, 3))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C) with p = 32, L = (H/32)*(W/32)."""
        b, c, h, w = x.shape
        p = DOWNSAMPLE
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x (B, C, H, W); returns ``loss``, ``reconstruction`` (B, C, H, W, in the input's scale), ``mask``."""
        b, c, h, w = x.shape
        if (h, w) != (self.image_size, self.image_size) or c != self.in_channels:
            raise ValueError(f"SparK expects input (B, {self.in_channels}, {self.image_size}, {self.image_size}), "
                             f"got {tuple(x.shape)}")
        mask = self.random_mask(b, x.device) if mask is None else mask
        masked = x * upsample_mask(mask, (h, w))
        features = self.encoder(masked, mask)  # strides 32, 16, 8, 4
        self.encoder.context.mask = mask
        try:
            dense = []
            for f, norm, token, proj in zip(features, self.densify_norms, self.mask_tokens, self.densify_projs):
                visible = self.encoder.context.at(f.shape[-2:])
                f = torch.where(visible, norm(f), token.expand_as(f))
                dense.append(proj(f))
        finally:
            self.encoder.context.mask = None
        pred = self.decoder(dense)  # (B, C, H, W) in normalised-patch space

        pred_patches, target = self.patchify(pred), self.patchify(x)  # (B, L, p*p*C)
        loss = self.criterion(pred_patches, target, ~mask.view(b, -1))
        _, mean, std = normalise_patches(target)
        rec = pred_patches * std + mean
        rec = rec.view(b, h // DOWNSAMPLE, w // DOWNSAMPLE, DOWNSAMPLE, DOWNSAMPLE, c).permute(0, 5, 1, 3, 2, 4)
        return {"loss": loss, "reconstruction": rec.reshape(b, c, h, w), "mask": mask, "masked_input": masked}
