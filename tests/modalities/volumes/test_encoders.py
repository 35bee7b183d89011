"""Volume backbones: shapes table, equivalence with the MONAI networks they wrap, parameter groups, gradient
checkpointing (same outputs and gradients, off outside training, ONNX export), errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from monai.networks.nets import BasicUNet, SwinUNETR
from monai.networks.nets import swin_unetr as monai_swin_unetr
from torch import Tensor, nn

from export.onnx import export_graph
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


@pytest.fixture()
def checkpoint_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every ``torch.utils.checkpoint.checkpoint`` call made by MONAI's Swin blocks, as the grad mode of
    the call (MONAI's ``swin_unetr`` calls it through the ``torch.utils.checkpoint`` module)."""
    calls: list[bool] = []
    original = monai_swin_unetr.checkpoint.checkpoint

    def spy(function, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return original(function, *args, **kwargs)

    monkeypatch.setattr(monai_swin_unetr.checkpoint, "checkpoint", spy)
    return calls


@pytest.mark.parametrize(
    ("kwargs", "shape", "method"),
    [
        (TINY_SWIN, (1, 1, 64, 64, 64), "forward_dense"),
        (TINY_SWIN, (2, 1, 64, 64, 64), "forward"),
        ({**TINY_SWIN, "spatial_dims": 2}, (2, 1, 64, 96), "forward_dense"),
    ],
)
def test_checkpointing_gives_the_same_outputs_and_gradients(
    kwargs, shape, method, checkpoint_calls: list[bool]
) -> None:
    torch.manual_seed(0)
    plain = SwinUNETRBackbone(**kwargs).train()
    checkpointed = SwinUNETRBackbone(**kwargs, use_checkpoint=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(shape)
    outputs, gradients = [], []
    for net in (plain, checkpointed):
        out = getattr(net, method)(x)
        weights = torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)  # every output counts differently
        (out * weights).sum().backward()
        outputs.append(out.detach())
        gradients.append({name: p.grad for name, p in net.named_parameters() if p.grad is not None})
    n_blocks = 2 * sum(kwargs["depths"])  # attention part and MLP part of each Swin block
    assert checkpoint_calls == [True] * n_blocks  # only the second network checkpoints, every block
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-6, atol=1e-7)
    assert gradients[0].keys() == gradients[1].keys() and len(gradients[0]) > 10
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_is_off_in_eval_mode_and_without_gradients(checkpoint_calls: list[bool]) -> None:
    torch.manual_seed(0)
    net = SwinUNETRBackbone(**TINY_SWIN, use_checkpoint=True)
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        net.train().forward_dense(x)
    net.eval()(x).sum().backward()
    assert checkpoint_calls == []
    net.train()(x)  # back to training: checkpointed again
    assert checkpoint_calls == [True] * 8


def test_spec_records_and_rebuilds_use_checkpoint(checkpoint_calls: list[bool]) -> None:
    net = SwinUNETRBackbone(**TINY_SWIN, use_checkpoint=True)
    spec = module_spec(net)
    assert spec["init_args"]["use_checkpoint"] is True
    assert module_spec(SwinUNETRBackbone(**TINY_SWIN))["init_args"]["use_checkpoint"] is False
    rebuilt = instantiate_spec(spec).train()
    assert rebuilt.use_checkpoint is True
    rebuilt.forward_dense(torch.randn(1, 1, 64, 64, 64))
    assert len(checkpoint_calls) == 8


class _Dense(nn.Module):
    """``forward_dense`` of a backbone as a module's forward (what the segmentation export traces)."""

    def __init__(self, backbone: SwinUNETRBackbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone.forward_dense(x)


def test_checkpointed_backbone_exports_to_onnx(tmp_path: Path, checkpoint_calls: list[bool]) -> None:
    torch.manual_seed(0)
    model = _Dense(SwinUNETRBackbone(**TINY_SWIN, use_checkpoint=True)).eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 64, 64, 64)).astype(np.float32)
    path = tmp_path / "swin.onnx"
    export_graph(model, x[:1], path, output_names=("features",))
    assert checkpoint_calls == []  # the traced graph holds no checkpoint machinery
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x})  # batch 2 through the dynamic batch axis
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 12, 64, 64, 64)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


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
