"""Numerically careful replacements of layers whose ONNX Runtime kernels lose float32 accuracy.

Instance normalisation. ONNX Runtime's CPU ``InstanceNormalization`` (and a single ``ReduceMean`` over
all spatial axes) accumulates the H·W·D sum of each channel in float32 one element after the other, so
the rounding error of the mean grows with the number of voxels and with ``|mean| / std`` of the channel,
and normalisation multiplies it by ``1 / std``. On real CT crops (144 × 96 × 32 voxels, half of them air
clipped to 0 by the window) a MONAI BasicUNet's logits came out of onnxruntime 1.3e-3 away from a
float64 reference, while torch's float32 kernels (pairwise sums) stayed within 6e-6. Reducing one axis
at a time (a mean of equal-sized means is the mean) keeps every partial sum short: the same graph then
agrees with the float64 reference within 4e-6, at the same speed (measured in
``tests/export/test_numerics.py``).

:func:`onnx_friendly` returns a copy of a model with every :class:`torch.nn.InstanceNorm1d`/``2d``/``3d``
that normalises with the instance's own statistics replaced by :class:`AxiswiseInstanceNorm` (the same
weights, the same function); :func:`export.onnx.export_graph` exports that copy, and the parity checks
compare onnxruntime with the *original* torch model.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["AxiswiseInstanceNorm", "onnx_friendly"]


class AxiswiseInstanceNorm(nn.Module):
    """Instance normalisation with per-axis reductions: ``(B, C, *spatial) → (B, C, *spatial)``.

    ``y = (x − mean) / sqrt(var + eps) · weight + bias`` with ``mean`` and the biased ``var`` of each
    ``(b, c)`` taken over all spatial axes, computed as nested means over one axis at a time (the last
    first). Mathematically :class:`torch.nn.InstanceNorm3d` (``track_running_stats=False``); the point is
    the float32 rounding of the exported graph (see the module docstring).

    Args:
        source: the instance-norm layer to mirror; its affine parameters are shared, not copied.
    """

    def __init__(self, source: nn.modules.instancenorm._InstanceNorm) -> None:
        super().__init__()
        self.eps = float(source.eps)
        self.affine = bool(source.affine)
        self.weight = source.weight if self.affine else None
        self.bias = source.bias if self.affine else None

    @staticmethod
    def _spatial_mean(x: Tensor) -> Tensor:
        for dim in range(x.ndim - 1, 1, -1):
            x = x.mean(dim=dim, keepdim=True)
        return x

    def forward(self, x: Tensor) -> Tensor:
        centred = x - self._spatial_mean(x)
        variance = self._spatial_mean(centred * centred)
        y = centred * torch.rsqrt(variance + self.eps)
        if self.weight is not None and self.bias is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def onnx_friendly(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (in its current train/eval mode) with every instance-norm layer that
    uses the instance's statistics replaced by :class:`AxiswiseInstanceNorm`; ``model`` is not changed.

    Layers with running statistics used in eval mode (``track_running_stats=True``) are kept: they do not
    reduce over the input.
    """
    clone = copy.deepcopy(model)
    _replace(clone)
    return clone


def _replace(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.instancenorm._InstanceNorm) and (
            child.training or not child.track_running_stats
        ):
            replacement = AxiswiseInstanceNorm(child)
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            _replace(child)
