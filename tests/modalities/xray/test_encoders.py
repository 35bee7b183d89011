"""X-ray encoders (MONAI ResNet and ViT in 2-D): shapes, patch grids, row-major patch order, pooling,
ill-configured inputs, and rebuilding from the checkpoint spec."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from medcl.configurable import instantiate_spec, module_spec
from medcl.errors import ConfigError
from modalities.xray.encoders import XrayResNet, XrayViT, build_encoder

TINY_RESNET = {"layers": [1, 1, 1, 1], "block_inplanes": [4, 8, 8, 16]}
TINY_VIT = {"patch_size": 16, "hidden_size": 32, "mlp_dim": 64, "num_layers": 2, "num_heads": 4}

RESNET_CASES = [
    # kwargs, input (H, W), grid, embedding_dim
    ({**TINY_RESNET}, (64, 64), (2, 2), 16),
    ({**TINY_RESNET}, (65, 97), (3, 4), 16),
    ({**TINY_RESNET, "conv1_stride": 1, "no_max_pool": True}, (37, 50), (5, 7), 16),
    ({**TINY_RESNET, "block": "bottleneck"}, (96, 64), (3, 2), 64),
]


@pytest.mark.parametrize(("kwargs", "size", "grid", "dim"), RESNET_CASES)
def test_resnet_shapes_and_grid(
    kwargs: dict[str, Any], size: tuple[int, int], grid: tuple[int, int], dim: int
) -> None:
    torch.manual_seed(0)
    model = XrayResNet(**kwargs).eval()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        pooled, patches, fmap = model(x), model.forward_patches(x), model.feature_map(x)
    assert model.patch_grid(size) == grid and tuple(fmap.shape[2:]) == grid
    assert pooled.shape == (2, dim) and patches.shape == (2, grid[0] * grid[1], dim)
    assert model.embedding_dim == model.patch_dim == dim
    gh, gw = grid
    for k in range(gh * gw):  # row-major: token k is cell (k // gw, k % gw)
        torch.testing.assert_close(patches[:, k], fmap[:, :, k // gw, k % gw])
    torch.testing.assert_close(pooled, patches.mean(dim=1))


def test_vit_shapes_grid_and_row_major_tokens() -> None:
    torch.manual_seed(0)
    model = XrayViT(image_size=(64, 48), **TINY_VIT).eval()
    assert model.patch_grid() == (4, 3) == model.patch_grid((64, 48))
    x = torch.randn(2, 1, 64, 48)
    with torch.no_grad():
        patches, pooled = model.forward_patches(x), model(x)
        assert patches.shape == (2, 12, 32) and pooled.shape == (2, 32)
        torch.testing.assert_close(pooled, patches.mean(dim=1))
        # the patch embedding orders tokens row-major: changing only patch (2, 1) changes only token 7
        embed = model.net.patch_embedding
        y = x.clone()
        y[:, :, 32:48, 16:32] += 1.0
        changed = (embed(y) - embed(x)).abs().amax(dim=(0, 2)) > 1e-6
    assert changed.nonzero().flatten().tolist() == [2 * 3 + 1]


def test_bad_inputs_and_settings() -> None:
    model = XrayResNet(**TINY_RESNET)
    with pytest.raises(ConfigError, match="expects"):
        model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ConfigError, match="expects"):
        model(torch.zeros(1, 64, 64))
    vit = XrayViT(image_size=64, **TINY_VIT)
    with pytest.raises(ConfigError, match="built for"):
        vit(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ConfigError, match="built for"):
        vit.patch_grid(32)
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        XrayViT(image_size=(64, 50), **TINY_VIT)
    with pytest.raises(ConfigError, match="num_heads"):
        XrayViT(image_size=64, **{**TINY_VIT, "num_heads": 3})
    with pytest.raises(ConfigError):
        XrayResNet(block="wide")
    with pytest.raises(ConfigError, match="unknown X-ray encoder"):
        build_encoder("densenet")


@pytest.mark.parametrize(("name", "kwargs"), [("resnet", TINY_RESNET), ("vit", TINY_VIT)])
def test_rebuilt_from_spec_gives_the_same_outputs(name: str, kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = build_encoder(name, 1, 64, **kwargs).eval()
    spec = module_spec(model)
    assert spec is not None
    rebuilt = instantiate_spec(spec).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
        torch.testing.assert_close(rebuilt.forward_patches(x), model.forward_patches(x))


def test_gradients_reach_the_first_layer() -> None:
    for model in (XrayResNet(**TINY_RESNET), XrayViT(image_size=32, **TINY_VIT)):
        x = torch.randn(2, 1, 32, 32)
        model.forward_patches(x).square().mean().backward()
        first = next(p for p in model.parameters() if p.requires_grad)
        assert first.grad is not None and float(first.grad.abs().sum()) > 0
