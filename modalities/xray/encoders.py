"""Image encoders for radiographs: MONAI's 2-D ResNet and ViT with a pooled embedding and patch tokens.

Every encoder takes ``x`` ``(B, C, H, W)`` (``C = in_channels``, 1 for radiographs) and gives

* ``forward(x)``: the pooled embedding ``(B, embedding_dim)`` (global average of the last feature map /
  the mean of the patch tokens) — what contrastive objectives, heads and export use;
* ``forward_patches(x)``: patch tokens ``(B, P, patch_dim)``, ``P = gh · gw``, in row-major order
  (patch ``k`` covers grid cell ``(k // gw, k % gw)``, rows top to bottom) — what the gaze term compares
  with heatmaps pooled to the same grid;
* ``patch_grid(image_size)``: ``(gh, gw)`` for an input of ``image_size`` ``(H, W)``.

:class:`XrayResNet` wraps ``monai.networks.nets.ResNet`` (``spatial_dims=2``; basic or bottleneck
blocks; the default is ResNet-18 with torchvision's stride-2 stem, so the grid is ``H / 32``). Its patch
tokens are the cells of the last feature map. :class:`XrayViT` wraps ``monai.networks.nets.ViT``
(``spatial_dims=2``, convolutional patch embedding, no class token); its patch tokens are the
transformer's outputs after the final norm, and the image size is fixed when it is built (learned
position embeddings).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.networks.nets import ResNet as MonaiResNet
from monai.networks.nets import ViT
from torch import Tensor, nn

from medcl.configurable import Configurable
from medcl.errors import ConfigError

__all__ = ["ENCODERS", "XrayResNet", "XrayViT", "build_encoder"]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    values = tuple(int(v) for v in value)
    if len(values) != 2:
        raise ConfigError(f"{name} must be one integer or [height, width], got {value!r}")
    return (values[0], values[1])


def _check(module: nn.Module, x: Tensor, in_channels: int) -> None:
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ConfigError(
            f"{type(module).__name__} expects (B, {in_channels}, H, W) input, got shape {tuple(x.shape)}"
        )


class XrayResNet(Configurable, nn.Module):
    """MONAI ``ResNet`` in 2-D, without its classification layer.

    Args:
        in_channels: input channels (1 for radiographs).
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50+).
        layers: blocks per stage (ResNet-18: ``(2, 2, 2, 2)``).
        block_inplanes: channels per stage (ResNet: ``(64, 128, 256, 512)``).
        conv1_kernel: stem convolution size.
        conv1_stride: stem stride (2 as torchvision; MONAI's own default is 1).
        no_max_pool: skip the stem's max-pool (halves the downsampling).
        norm: normalisation layer (MONAI name): ``"batch"``, ``"instance"``, ``"group"`` ...

    ``embedding_dim = patch_dim = block_inplanes[-1] · expansion`` (1 basic, 4 bottleneck). Each
    stride-2 step maps a side ``n`` to ``ceil(n / 2)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        block_inplanes: Sequence[int] = (64, 128, 256, 512),
        conv1_kernel: int = 7,
        conv1_stride: int = 2,
        no_max_pool: bool = False,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ConfigError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        layers, block_inplanes = tuple(int(n) for n in layers), tuple(int(n) for n in block_inplanes)
        if len(layers) != 4 or len(block_inplanes) != 4 or min(layers) < 1 or min(block_inplanes) < 1:
            raise ConfigError(
                f"layers and block_inplanes need four positive entries, got {layers}, {block_inplanes}"
            )
        if conv1_stride not in (1, 2) or conv1_kernel < 1 or conv1_kernel % 2 == 0:
            raise ConfigError("conv1_stride must be 1 or 2 and conv1_kernel an odd size")
        self.in_channels = int(in_channels)
        self.net = MonaiResNet(
            block,
            list(layers),
            list(block_inplanes),
            spatial_dims=2,
            n_input_channels=self.in_channels,
            conv1_t_size=int(conv1_kernel),
            conv1_t_stride=int(conv1_stride),
            no_max_pool=bool(no_max_pool),
            feed_forward=False,
            norm=norm,
        )
        self._strides = int(conv1_stride == 2) + int(not no_max_pool) + 3
        self.embedding_dim = block_inplanes[-1] * (4 if block == "bottleneck" else 1)
        self.patch_dim = self.embedding_dim

    def feature_map(self, x: Tensor) -> Tensor:
        """The last stage's features ``(B, C, H, W) → (B, embedding_dim, gh, gw)``."""
        _check(self, x, self.in_channels)
        net = self.net
        x = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        """Pooled embedding ``(B, C, H, W) → (B, embedding_dim)`` (global average of the feature map)."""
        return self.feature_map(x).mean(dim=(2, 3))

    def forward_patches(self, x: Tensor) -> Tensor:
        """Patch tokens ``(B, C, H, W) → (B, gh · gw, patch_dim)``, row-major."""
        return self.feature_map(x).flatten(2).transpose(1, 2)

    def patch_grid(self, image_size: int | Sequence[int]) -> tuple[int, int]:
        """``(gh, gw)`` of :meth:`forward_patches` for inputs of ``image_size`` ``(H, W)``."""
        sides = []
        for side in _pair(image_size, "image_size"):
            for _ in range(self._strides):
                side = (side + 1) // 2
            sides.append(side)
        return (sides[0], sides[1])


class XrayViT(Configurable, nn.Module):
    """MONAI ``ViT`` in 2-D (convolutional patch embedding, learned position embeddings, no class token).

    Args:
        in_channels: input channels (1 for radiographs).
        image_size: the input size ``(H, W)`` (or one side), fixed: every side a multiple of
            ``patch_size``.
        patch_size: side of a square patch.
        hidden_size: token size (``embedding_dim = patch_dim``); a multiple of ``num_heads``.
        mlp_dim: hidden size of the transformer MLPs.
        num_layers: transformer blocks.
        num_heads: attention heads.
        dropout: dropout rate.
        qkv_bias: bias in the attention projections.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        hidden_size: int = 384,
        mlp_dim: int = 1536,
        num_layers: int = 6,
        num_heads: int = 6,
        dropout: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        size = _pair(image_size, "image_size")
        if patch_size < 1 or any(s % patch_size or s < patch_size for s in size):
            raise ConfigError(
                f"image_size {list(size)} must be a multiple of patch_size {patch_size} on each side"
            )
        if hidden_size % num_heads:
            raise ConfigError(f"hidden_size {hidden_size} must be a multiple of num_heads {num_heads}")
        self.in_channels = int(in_channels)
        self.image_size = size
        self.patch_size = int(patch_size)
        self.net = ViT(
            in_channels=self.in_channels,
            img_size=size,
            patch_size=self.patch_size,
            hidden_size=int(hidden_size),
            mlp_dim=int(mlp_dim),
            num_layers=int(num_layers),
            num_heads=int(num_heads),
            proj_type="conv",
            pos_embed_type="learnable",
            classification=False,
            dropout_rate=float(dropout),
            spatial_dims=2,
            qkv_bias=bool(qkv_bias),
        )
        self.embedding_dim = int(hidden_size)
        self.patch_dim = int(hidden_size)

    def forward_patches(self, x: Tensor) -> Tensor:
        """Patch tokens ``(B, C, H, W) → (B, gh · gw, hidden_size)``, row-major."""
        _check(self, x, self.in_channels)
        if tuple(x.shape[2:]) != self.image_size:
            raise ConfigError(
                f"XrayViT was built for {list(self.image_size)} images, got {list(x.shape[2:])}; set "
                "image_size to the preprocessing's size"
            )
        tokens, _ = self.net(x)
        return tokens

    def forward(self, x: Tensor) -> Tensor:
        """Pooled embedding ``(B, C, H, W) → (B, hidden_size)``: the mean of the patch tokens."""
        return self.forward_patches(x).mean(dim=1)

    def patch_grid(self, image_size: int | Sequence[int] | None = None) -> tuple[int, int]:
        """``(H / patch_size, W / patch_size)``; ``image_size`` (default: the built size) must be the
        size the ViT was built for."""
        size = self.image_size if image_size is None else _pair(image_size, "image_size")
        if size != self.image_size:
            raise ConfigError(f"XrayViT was built for {list(self.image_size)} images, not {list(size)}")
        return (size[0] // self.patch_size, size[1] // self.patch_size)


#: ``encoder`` names of the adapter → class.
ENCODERS: dict[str, type[nn.Module]] = {"resnet": XrayResNet, "vit": XrayViT}


def build_encoder(
    name: str, in_channels: int = 1, image_size: int | Sequence[int] = 224, **kwargs: Any
) -> nn.Module:
    """``XrayResNet(in_channels, **kwargs)`` (``"resnet"``) or ``XrayViT(in_channels, image_size,
    **kwargs)`` (``"vit"``).

    Raises:
        ConfigError: an unknown name, or settings the encoder refuses.
    """
    if name == "resnet":
        return XrayResNet(in_channels=in_channels, **kwargs)
    if name == "vit":
        return XrayViT(in_channels=in_channels, image_size=image_size, **kwargs)
    raise ConfigError(f"unknown X-ray encoder {name!r}; choose one of {', '.join(ENCODERS)}")
