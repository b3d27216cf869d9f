"""Channels-last memory layout for 2D and 3D networks and their inputs, one of the speed levers of training.

Convolutions on GPUs (tensor cores) and with oneDNN on CPUs can run faster when the channel is the innermost
dimension: ``channels_last`` for (B, C, H, W) tensors, ``channels_last_3d`` for (B, C, D, H, W). torch's
``Module.to(memory_format=...)`` takes one format for every tensor, which fails on a 3D network's 5D weights;
these helpers choose the format by each tensor's rank.
"""

from __future__ import annotations

import torch
from torch import nn

from medssl_monai.utils.options import as_bool

__all__ = ["channels_last_format", "place"]


def channels_last_format(ndim: int) -> torch.memory_format:
    """The channels-last format of a tensor of ``ndim`` dimensions (4: 2D, 5: 3D), contiguous for the rest."""
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim, torch.contiguous_format)


def place(network: nn.Module, device: torch.device | str, channels_last: bool = False) -> nn.Module:
    """``network`` on ``device``, its 4D and 5D parameters and buffers (convolution weights) channels-last when
    ``channels_last``. Parameters keep their identity, so an optimiser or DDP built afterwards sees them; call it
    before wrapping the network in DistributedDataParallel."""
    network = network.to(device)
    if as_bool(channels_last, "channels_last"):
        with torch.no_grad():
            for tensor in (*network.parameters(), *network.buffers()):
                if tensor.ndim in (4, 5):
                    tensor.data = tensor.data.contiguous(memory_format=channels_last_format(tensor.ndim))
    return network
