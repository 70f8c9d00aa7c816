"""A faithful re-statement of the authors' RefConv module, for tests and benchmarks only.

The authors' public code swaps each convolution for a module that keeps the pretrained kernel in a
``weight`` buffer and an ``nn.Conv2d`` named ``convmap`` (RT), recomputing ``Wt`` on every forward, in
training and in eval alike. It is 2-D only and supports zero padding only. We keep it to check that
:class:`refconv.RefConv` computes the same function and to measure our layer against theirs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AuthorsRefConv", "authors_convert"]


class AuthorsRefConv(nn.Module):
    """The authors' ``RepConv``/``RefConv`` layer (basis buffer + ``convmap``), generalised to dilation and bias."""

    def __init__(self, conv: nn.Conv2d, map_k: int = 3) -> None:
        super().__init__()
        out_channels, cin_g, kh, kw = conv.weight.shape
        assert kh == kw and map_k <= kh
        self.origin_kernel_shape = (out_channels, cin_g, kh, kw)
        self.register_buffer("weight", conv.weight.detach().clone())
        groups = conv.groups
        in_channels = cin_g * groups
        g_rt = in_channels * out_channels // (groups**2)
        self.num_2d_kernels = out_channels * in_channels // groups
        self.kernel_size = kh
        self.convmap = nn.Conv2d(
            self.num_2d_kernels, self.num_2d_kernels, map_k, stride=1, padding=map_k // 2, groups=g_rt, bias=False
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, groups

    def forward(self, inputs: Tensor) -> Tensor:
        origin_weight = self.weight.view(1, self.num_2d_kernels, self.kernel_size, self.kernel_size)
        kernel = self.weight + self.convmap(origin_weight).view(*self.origin_kernel_shape)
        return F.conv2d(inputs, kernel, self.bias, self.stride, self.padding, self.dilation, self.groups)


def authors_convert(model: nn.Module, map_k: int = 3) -> nn.Module:
    """Swap every square, zero-padded ``nn.Conv2d`` with kernel >= map_k for :class:`AuthorsRefConv` (in place)."""
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if type(m) is nn.Conv2d
        and m.kernel_size[0] == m.kernel_size[1] >= map_k
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
    ]
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = AuthorsRefConv(conv, map_k)
        setattr(parent, child, new)
    for p in model.parameters():
        p.requires_grad_(True)
    return model
