"""Encoder-decoder backbones for volumes (and images): MONAI networks with a pooled and a dense output.

Every backbone gives two things:

* ``forward(x)``: a pooled embedding ``(B, C, *spatial) → (B, embedding_dim)``, the global average of
  every scale of the encoder (the downsampling path), concatenated — VoCo's multi-scale pooling, and
  what classification heads and the pretraining diagnostics use;
* ``forward_dense(x)``: per-voxel decoder features ``(B, C, *spatial) → (B, feature_channels, *spatial)``,
  the last feature map of the decoder before a segmentation head's 1×1 convolution (asymmetry
  contrast and segmentation use it).

:class:`SwinUNETRBackbone` is MONAI's ``SwinUNETR`` (v2 by default, as VoCo pretrains it);
:class:`UNetBackbone` is MONAI's ``BasicUNet`` — the light default for CPU runs. Both work in 2-D
(``spatial_dims=2``) and 3-D. The parameters of the encoder and of the decoder can be listed apart
(:meth:`encoder_parameters`, :meth:`decoder_parameters`), e.g. to fine-tune them at different rates.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from monai.networks.nets import BasicUNet, SwinUNETR
from monai.networks.nets.swin_unetr import SwinTransformerBlock
from torch import Tensor, nn

from medcl.configurable import Configurable
from medcl.errors import ConfigError

__all__ = ["SwinUNETRBackbone", "UNetBackbone", "VolumeBackbone"]


class VolumeBackbone(nn.Module):
    """Common checks and parameter groups of the volume backbones.

    Attributes:
        in_channels: input channels ``C``.
        embedding_dim: size of the pooled embedding.
        feature_channels: channels of :meth:`forward_dense`.
        spatial_multiple: every spatial side of the input must be a multiple of this, and at least
            twice it (the bottleneck keeps 2 voxels a side, which instance normalisation needs).
        spatial_dims: 2 or 3.
    """

    in_channels: int
    embedding_dim: int
    feature_channels: int
    spatial_multiple: int
    spatial_dims: int

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`ConfigError` unless ``x`` is ``(B, in_channels, *spatial)`` with valid sides."""
        if x.ndim != self.spatial_dims + 2:
            raise ConfigError(
                f"{type(self).__name__} expects (B, C, {'H, W, D' if self.spatial_dims == 3 else 'H, W'}) "
                f"input, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ConfigError(
                f"{type(self).__name__} takes {self.in_channels} input channel(s), got {x.shape[1]}"
            )
        bad = [
            int(side)
            for side in x.shape[2:]
            if int(side) % self.spatial_multiple or int(side) < 2 * self.spatial_multiple
        ]
        if bad:
            raise ConfigError(
                f"{type(self).__name__} needs every spatial side to be a multiple of {self.spatial_multiple} "
                f"and at least {2 * self.spatial_multiple} (instance norm needs 2 voxels a side at the "
                f"bottleneck), got {tuple(int(s) for s in x.shape[2:])}; pad or crop the ROI (e.g. roi sides "
                f"{self.spatial_multiple * 2} or {self.spatial_multiple * 4})"
            )

    def encoder_modules(self) -> list[nn.Module]:
        """The modules of the downsampling path."""
        raise NotImplementedError

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the encoder (the path that the pooled embedding uses)."""
        for module in self.encoder_modules():
            yield from module.parameters()

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter that is not the encoder's."""
        encoder_ids = {id(p) for p in self.encoder_parameters()}
        return (p for p in self.parameters() if id(p) not in encoder_ids)

    @staticmethod
    def _pool(maps: Sequence[Tensor]) -> Tensor:
        """Global average of each map ``(B, C_i, *spatial_i)``, concatenated: ``(B, Σ C_i)``."""
        return torch.cat([m.flatten(2).mean(dim=2) for m in maps], dim=1)


class UNetBackbone(Configurable, VolumeBackbone):
    """MONAI ``BasicUNet`` without its output convolution.

    Args:
        in_channels: input channels.
        features: the six feature sizes of ``BasicUNet`` (four downsampling levels and the decoder's
            last level); the pooled embedding has ``sum(features[:5])`` dimensions and the dense features
            ``features[5]`` channels.
        spatial_dims: 3 for volumes, 2 for images.
        norm: normalisation layer (MONAI name), ``"instance"`` or ``"batch"``.
        dropout: dropout probability inside the blocks.

    Shapes: input ``(B, in_channels, *spatial)``, every side a multiple of 16 and at least 32.
    """

    def __init__(
        self,
        in_channels: int = 1,
        features: Sequence[int] = (16, 16, 32, 64, 128, 16),
        spatial_dims: int = 3,
        norm: str = "instance",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        if len(features) != 6 or min(features) < 1:
            raise ConfigError(f"features must be six positive sizes, got {features}")
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.in_channels = int(in_channels)
        self.spatial_dims = int(spatial_dims)
        self.embedding_dim = sum(features[:5])
        self.feature_channels = features[5]
        self.spatial_multiple = 16
        self.net = BasicUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=features[5],
            features=features,
            norm=(norm, {"affine": True}),
            dropout=dropout,
        )
        self.net.final_conv = nn.Identity()  # the segmentation head is the task's

    def encoder_modules(self) -> list[nn.Module]:
        return [self.net.conv_0, self.net.down_1, self.net.down_2, self.net.down_3, self.net.down_4]

    def _encode(self, x: Tensor) -> list[Tensor]:
        self.check_input(x)
        maps = [self.net.conv_0(x)]
        for down in (self.net.down_1, self.net.down_2, self.net.down_3, self.net.down_4):
            maps.append(down(maps[-1]))
        return maps

    def forward(self, x: Tensor) -> Tensor:
        """Pooled multi-scale embedding ``(B, C, *spatial) → (B, embedding_dim)``."""
        return self._pool(self._encode(x))

    def forward_dense(self, x: Tensor) -> Tensor:
        """Decoder features ``(B, C, *spatial) → (B, feature_channels, *spatial)``."""
        x0, x1, x2, x3, x4 = self._encode(x)
        u4 = self.net.upcat_4(x4, x3)
        u3 = self.net.upcat_3(u4, x2)
        u2 = self.net.upcat_2(u3, x1)
        return self.net.upcat_1(u2, x0)


class SwinUNETRBackbone(Configurable, VolumeBackbone):
    """MONAI ``SwinUNETR`` (v2 by default) without its output convolution.

    The pooled embedding averages the five scales of the Swin transformer (``swinViT``), as VoCo
    pretrains it: ``31 · feature_size`` dimensions. Dense features: the last decoder block,
    ``feature_size`` channels.

    Args:
        in_channels: input channels.
        feature_size: Swin embedding size (48 in SwinUNETR's and VoCo's papers; 12 or 24 for CPU runs).
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        use_v2: residual convolution blocks at the start of each stage (SwinUNETR v2).
        spatial_dims: 3 or 2.
        use_checkpoint: gradient checkpointing in the Swin transformer blocks (MONAI's
            ``use_checkpoint``): their activations are not kept for the backward pass but recomputed
            during it, which trades memory for time while training (``configs/pretrain/voco_ct.yaml`` on
            CPU: about 10 → 6.4 GiB peak, for one more forward pass of the Swin blocks per step). The
            outputs and gradients are the same. It only acts in training mode with gradients enabled: in
            eval mode or under ``torch.no_grad`` (validation, an EMA teacher, ONNX export) the blocks run
            plainly, whatever this flag says.

    Shapes: input ``(B, in_channels, *spatial)``, every side a multiple of 32 and at least 64.
    """

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        use_v2: bool = True,
        spatial_dims: int = 3,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if feature_size % 12:
            raise ConfigError(f"SwinUNETR needs feature_size divisible by 12, got {feature_size}")
        self.in_channels = int(in_channels)
        self.spatial_dims = int(spatial_dims)
        self.embedding_dim = 31 * int(feature_size)
        self.feature_channels = int(feature_size)
        self.spatial_multiple = 32
        self.use_checkpoint = bool(use_checkpoint)
        self.net = SwinUNETR(
            in_channels=in_channels,
            out_channels=1,
            feature_size=feature_size,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            use_v2=use_v2,
            spatial_dims=spatial_dims,
            use_checkpoint=self.use_checkpoint,
        )
        self.net.out = nn.Identity()  # the segmentation head is the task's

    def encoder_modules(self) -> list[nn.Module]:
        return [self.net.swinViT]

    def _swin(self, x: Tensor) -> list[Tensor]:
        """The five scales of the Swin transformer, checkpointed only when it can pay off.

        MONAI's blocks checkpoint whenever their ``use_checkpoint`` is set, in eval mode and while an
        ONNX graph is traced too; the flag is set here, before each call, to ``use_checkpoint`` and
        training with gradients enabled.
        """
        self.check_input(x)
        active = self.use_checkpoint and self.training and torch.is_grad_enabled()
        for module in self.net.swinViT.modules():
            if isinstance(module, SwinTransformerBlock):
                module.use_checkpoint = active
        return self.net.swinViT(x, self.net.normalize)

    def forward(self, x: Tensor) -> Tensor:
        """Pooled multi-scale embedding ``(B, C, *spatial) → (B, 31 · feature_size)``."""
        return self._pool(self._swin(x))

    def forward_dense(self, x: Tensor) -> Tensor:
        """Decoder features ``(B, C, *spatial) → (B, feature_size, *spatial)``."""
        net = self.net
        hidden = self._swin(x)
        enc0 = net.encoder1(x)
        enc1 = net.encoder2(hidden[0])
        enc2 = net.encoder3(hidden[1])
        enc3 = net.encoder4(hidden[2])
        dec4 = net.encoder10(hidden[4])
        dec3 = net.decoder5(dec4, hidden[3])
        dec2 = net.decoder4(dec3, enc3)
        dec1 = net.decoder3(dec2, enc2)
        dec0 = net.decoder2(dec1, enc1)
        return net.decoder1(dec0, enc0)
