"""Volume backbones: shapes table, equivalence with the MONAI networks they wrap, parameter groups, errors."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet, SwinUNETR

from medcl.configurable import instantiate_spec, module_spec
from medcl.errors import ConfigError
from modalities.volumes.encoders import SwinUNETRBackbone, UNetBackbone

TINY_UNET = {"features": (4, 4, 8, 8, 16, 4)}
TINY_SWIN = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)}

CASES = [
    # backbone, kwargs, input shape, pooled dim, dense channels
    (UNetBackbone, {**TINY_UNET}, (2, 1, 32, 32, 32), 40, 4),
    (UNetBackbone, {**TINY_UNET, "in_channels": 2}, (1, 2, 32, 48, 32), 40, 4),
    (UNetBackbone, {**TINY_UNET, "spatial_dims": 2}, (2, 1, 32, 64), 40, 4),
    (SwinUNETRBackbone, {**TINY_SWIN}, (1, 1, 64, 64, 64), 31 * 12, 12),
    (SwinUNETRBackbone, {**TINY_SWIN, "spatial_dims": 2}, (2, 1, 64, 64), 31 * 12, 12),
]


@pytest.mark.parametrize(("cls", "kwargs", "shape", "pooled", "dense"), CASES)
def test_shapes(cls, kwargs, shape, pooled, dense) -> None:
    torch.manual_seed(0)
    net = cls(**kwargs)
    x = torch.randn(shape)
    assert net.embedding_dim == pooled and net.feature_channels == dense
    assert net(x).shape == (shape[0], pooled)
    assert net.forward_dense(x).shape == (shape[0], dense, *shape[2:])


def test_unet_dense_equals_monai_basic_unet_without_output_conv() -> None:
    torch.manual_seed(0)
    backbone = UNetBackbone(**TINY_UNET).eval()
    features = TINY_UNET["features"]
    reference = BasicUNet(spatial_dims=3, in_channels=1, out_channels=4, features=features).eval()
    reference.load_state_dict(backbone.net.state_dict(), strict=False)
    x = torch.randn(1, 1, 32, 32, 32)
    # BasicUNet's final 1x1 conv is replaced by identity in the backbone: compare the decoder output.
    reference.final_conv = torch.nn.Identity()
    torch.testing.assert_close(backbone.forward_dense(x), reference(x))


def test_unet_pooled_is_mean_of_each_encoder_scale() -> None:
    torch.manual_seed(0)
    backbone = UNetBackbone(**TINY_UNET).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    net = backbone.net
    maps = [net.conv_0(x)]
    for down in (net.down_1, net.down_2, net.down_3, net.down_4):
        maps.append(down(maps[-1]))
    expected = torch.cat([m.mean(dim=(2, 3, 4)) for m in maps], dim=1)
    torch.testing.assert_close(backbone(x), expected)


def test_swin_dense_equals_monai_swinunetr_without_output_conv() -> None:
    torch.manual_seed(0)
    backbone = SwinUNETRBackbone(**TINY_SWIN).eval()
    reference = SwinUNETR(in_channels=1, out_channels=1, use_v2=True, **TINY_SWIN).eval()
    reference.load_state_dict(backbone.net.state_dict(), strict=False)
    reference.out = torch.nn.Identity()
    x = torch.randn(1, 1, 64, 64, 64)
    torch.testing.assert_close(backbone.forward_dense(x), reference(x))


@pytest.mark.parametrize(("cls", "kwargs"), [(UNetBackbone, TINY_UNET), (SwinUNETRBackbone, TINY_SWIN)])
def test_encoder_and_decoder_parameters_partition_the_model(cls, kwargs) -> None:
    net = cls(**kwargs)
    encoder = {id(p) for p in net.encoder_parameters()}
    decoder = {id(p) for p in net.decoder_parameters()}
    everything = {id(p) for p in net.parameters()}
    assert encoder and decoder
    assert encoder.isdisjoint(decoder) and encoder | decoder == everything


def test_pooled_embedding_uses_only_encoder_parameters() -> None:
    torch.manual_seed(0)
    net = UNetBackbone(**TINY_UNET)
    net(torch.randn(2, 1, 32, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in net.encoder_parameters())
    assert all(p.grad is None for p in net.decoder_parameters())


@pytest.mark.parametrize(("cls", "kwargs"), [(UNetBackbone, TINY_UNET), (SwinUNETRBackbone, TINY_SWIN)])
def test_rebuilt_from_spec_gives_the_same_outputs(cls, kwargs) -> None:
    torch.manual_seed(0)
    net = cls(**kwargs).eval()
    rebuilt = instantiate_spec(module_spec(net)).eval()
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, *(64,) * 3) if cls is SwinUNETRBackbone else torch.randn(1, 1, 32, 32, 32)
    torch.testing.assert_close(rebuilt(x), net(x))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 1, 32, 32), "expects (B, C, H, W, D)"),
        ((1, 2, 32, 32, 32), "takes 1 input channel"),
        ((1, 1, 32, 40, 32), "multiple of 16"),
        ((1, 1, 16, 32, 32), "at least 32"),
    ],
)
def test_bad_inputs_raise_config_errors(shape, message) -> None:
    net = UNetBackbone(**TINY_UNET)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        net(torch.zeros(shape))


def test_bad_settings_raise() -> None:
    with pytest.raises(ConfigError, match="six positive sizes"):
        UNetBackbone(features=(4, 4, 8))
    with pytest.raises(ConfigError, match="divisible by 12"):
        SwinUNETRBackbone(feature_size=10)
