"""Tests of modalities.signals.encoders: shapes, pooling, TS2Vec's mask and receptive field, ONNX parity."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from medcl.errors import ConfigError
from modalities.signals import encoders
from modalities.signals.encoders import (
    SignalEncoder,
    TS2VecEncoder,
    TsaiEncoder,
    build_encoder,
    known_encoders,
)

SMALL_TS2VEC = {"hidden_dims": 16, "output_dims": 24, "depth": 3}


def _has_torchvision() -> bool:
    try:
        importlib.import_module("torchvision")
    except Exception:
        return False
    return True


# [name, kwargs, input shape (B, C, T), pooled shape, feature shape]
SHAPE_CASES = [
    ("ts2vec", {}, (2, 12, 256), (2, 320), (2, 256, 320)),
    ("ts2vec", SMALL_TS2VEC, (3, 1, 100), (3, 24), (3, 100, 24)),
    ("ts2vec", {**SMALL_TS2VEC, "kernel_size": 4}, (2, 2, 65), (2, 24), (2, 65, 24)),  # even kernel: trim
    ("ts2vec", {"output_dims": 8, "depth": 0}, (1, 4, 7), (1, 8), (1, 7, 8)),
    ("InceptionTime", {}, (2, 12, 256), (2, 128), (2, 256, 128)),
    ("InceptionTime", {"nf": 8, "depth": 3}, (2, 3, 100), (2, 32), (2, 100, 32)),
    ("ResCNN", {}, (2, 12, 128), (2, 128), (2, 128, 128)),
    ("FCN", {}, (2, 12, 128), (2, 128), (2, 128, 128)),
    ("FCN", {"layers": [16, 32, 24], "kss": [8, 5, 4]}, (2, 12, 101), (2, 24), (2, 101, 24)),
]


@pytest.mark.parametrize(("name", "kwargs", "input_shape", "pooled_shape", "feature_shape"), SHAPE_CASES)
def test_shapes_and_pooling(
    name: str,
    kwargs: dict[str, Any],
    input_shape: tuple[int, int, int],
    pooled_shape: tuple[int, int],
    feature_shape: tuple[int, int, int],
) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(name, input_shape[1], **kwargs).eval()
    assert isinstance(encoder, SignalEncoder)
    assert encoder.in_channels == input_shape[1]
    assert encoder.embedding_dim == pooled_shape[1] == feature_shape[2]
    x = torch.randn(*input_shape)
    with torch.no_grad():
        pooled = encoder(x)
        features = encoder.forward_features(x)
    assert pooled.shape == pooled_shape
    assert features.shape == feature_shape  # T' == T
    torch.testing.assert_close(pooled, encoder.pool(features), rtol=0, atol=0)
    expected = features.amax(dim=1) if name == "ts2vec" else features.mean(dim=1)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


@pytest.mark.parametrize(("arch", "head"), [("InceptionTime", "fc"), ("ResCNN", "lin"), ("FCN", "fc")])
def test_tsai_backbone_is_the_model_before_its_head(arch: str, head: str) -> None:
    """tsai's own forward = its linear head on our pooled embedding: we cut at the right place."""
    module = importlib.import_module(f"tsai.models.{arch}")
    torch.manual_seed(0)
    model = getattr(module, arch)(5, 1).eval()
    torch.manual_seed(0)
    encoder = TsaiEncoder(arch, in_channels=5).eval()
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        torch.testing.assert_close(getattr(model, head)(encoder(x)), model(x), rtol=1e-5, atol=1e-6)
    assert encoder.embedding_dim == getattr(model, head).in_features


def test_resnet_needs_torchvision() -> None:
    if _has_torchvision():
        encoder = build_encoder("ResNet", 3).eval()
        with torch.no_grad():
            assert encoder.forward_features(torch.randn(2, 3, 64)).shape == (2, 64, 128)
    else:
        with pytest.raises(ImportError, match="needs torchvision") as info:
            build_encoder("resnet", 3)
        assert "InceptionTime, ResCNN or FCN" in str(info.value)


def test_missing_tsai_explains_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = encoders._TsaiArch("InceptionTime", "tsai_not_installed_here.models", ("inceptionblock",), "fc")
    monkeypatch.setitem(encoders._TSAI_ARCHS, "inceptiontime", missing)
    with pytest.raises(ImportError, match=r"pip install --no-deps tsai==1\.0\.1 fastai==2\.8\.7") as info:
        TsaiEncoder("InceptionTime", in_channels=3)
    assert "'tsai_not_installed_here' is missing" in str(info.value)


def test_tsai_time_length_check() -> None:
    encoder = TsaiEncoder("FCN", in_channels=2, arch_kwargs={"layers": [8, 8, 8]})
    encoder.backbone = nn.Sequential(nn.Conv1d(2, 8, 3))  # a backbone that shortens the signal
    with pytest.raises(ValueError, match="changed the time length from 50 to 48"):
        encoder.forward_features(torch.randn(1, 2, 50))


@pytest.mark.parametrize(
    ("name", "kwargs", "error"),
    [
        ("bogus", {}, ConfigError),
        ("ts2vec", {"mask_mode": "continuous"}, ConfigError),
        ("ts2vec", {"depth": -1}, ConfigError),
        ("ts2vec", {"mask_p": 1.0}, ConfigError),
        ("ts2vec", {"hidden": 3}, ConfigError),
        ("fcn", {"c_out": 3}, ConfigError),
        ("fcn", {"no_such_argument": 1}, ConfigError),
    ],
)
def test_bad_configurations(name: str, kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        build_encoder(name, 3, **kwargs)


def test_unknown_name_lists_known_encoders() -> None:
    with pytest.raises(ConfigError) as info:
        build_encoder("transformer", 12)
    for name in ("ts2vec", "InceptionTime", "ResCNN", "FCN", "ResNet"):
        assert name in str(info.value)
    assert known_encoders() == ["ts2vec", "InceptionTime", "ResCNN", "FCN", "ResNet"]
    with pytest.raises(ConfigError):
        TsaiEncoder("XCM", in_channels=3)
    with pytest.raises(ConfigError):
        build_encoder("ts2vec", 0)


def test_names_are_case_insensitive() -> None:
    assert isinstance(build_encoder("TS2Vec", 2, **SMALL_TS2VEC), TS2VecEncoder)
    encoder = build_encoder("inceptiontime", 2, nf=4, depth=1)
    assert isinstance(encoder, TsaiEncoder) and encoder.arch == "InceptionTime"


def test_wrong_input_shape() -> None:
    encoder = TS2VecEncoder(3, **SMALL_TS2VEC)
    with pytest.raises(ValueError, match=r"\(B, 3, T\)"):
        encoder(torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, T\)"):
        encoder(torch.randn(3, 16))


# ----------------------------------------------------------------------------------------------------
# TS2Vec specifics
# ----------------------------------------------------------------------------------------------------
def test_ts2vec_mask_in_training_only() -> None:
    torch.manual_seed(0)
    encoder = TS2VecEncoder(3, repr_dropout=0.0, **SMALL_TS2VEC)
    x = torch.randn(2, 3, 64)
    encoder.train()
    torch.manual_seed(1)
    first = encoder(x)
    second = encoder(x)
    assert not torch.equal(first, second)  # a new mask per pass
    torch.manual_seed(1)
    torch.testing.assert_close(encoder(x), first, rtol=0, atol=0)  # from torch's default generator
    encoder.eval()
    evaluated = encoder(x)
    torch.testing.assert_close(encoder(x), evaluated, rtol=0, atol=0)
    encoder.train()
    everything_kept = torch.ones(2, 64, dtype=torch.bool)
    torch.testing.assert_close(encoder(x, keep_mask=everything_kept), evaluated, rtol=0, atol=0)
    no_mask = TS2VecEncoder(3, repr_dropout=0.0, mask_mode="none", **SMALL_TS2VEC)
    no_mask.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(no_mask.train()(x), evaluated, rtol=0, atol=0)


@pytest.mark.parametrize("mask_p", [0.5, 0.2])
def test_ts2vec_mask_fraction(mask_p: float) -> None:
    encoder = TS2VecEncoder(3, mask_p=mask_p, **SMALL_TS2VEC).train()
    seen: list[torch.Tensor] = []
    encoder.feature_extractor.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    torch.manual_seed(0)
    encoder(torch.randn(8, 3, 500))
    masked_steps = (seen[0] == 0).all(dim=1)  # (B, T): hidden vector zeroed
    assert masked_steps.float().mean().item() == pytest.approx(mask_p, abs=0.03)


def test_ts2vec_blocks_and_dilations() -> None:
    encoder = TS2VecEncoder(5, hidden_dims=16, output_dims=32, depth=4)
    blocks = list(encoder.feature_extractor.net)
    assert len(blocks) == 5
    for i, block in enumerate(blocks):
        assert block.conv1.conv.dilation == (2**i,) and block.conv2.conv.dilation == (2**i,)
        assert block.conv1.conv.kernel_size == (3,)
        assert (block.projector is not None) == (i == len(blocks) - 1)  # channels change / last block
    assert blocks[-1].conv2.conv.out_channels == 32
    assert TS2VecEncoder(5).receptive_field == 1 + 2 * 2 * (2**11 - 1) == 8189


@pytest.mark.parametrize(("depth", "kernel_size"), [(2, 3), (3, 3), (1, 5)])
def test_ts2vec_receptive_field(depth: int, kernel_size: int) -> None:
    encoder = TS2VecEncoder(2, hidden_dims=8, output_dims=8, depth=depth, kernel_size=kernel_size).eval()
    expected = 1 + 2 * (kernel_size - 1) * (2 ** (depth + 1) - 1)
    assert encoder.receptive_field == expected
    t0, length = 80, 161
    x = torch.randn(1, 2, length, requires_grad=True)
    encoder.forward_features(x)[0, t0].sum().backward()
    assert x.grad is not None
    reached = torch.nonzero(x.grad[0].abs().sum(dim=0)).flatten()
    half = (expected - 1) // 2
    assert (reached.min().item(), reached.max().item()) == (t0 - half, t0 + half)


def test_ts2vec_nan_time_steps() -> None:
    torch.manual_seed(0)
    encoder = TS2VecEncoder(3, **SMALL_TS2VEC).eval()
    x = torch.randn(2, 3, 50)
    x[0, :, 10:15] = float("nan")
    x[1, 2, 30] = float("nan")  # one channel is enough to mask the step
    nan_steps = torch.isnan(x).any(dim=1)
    x_before = x.clone()
    pooled, features = encoder(x), encoder.forward_features(x)
    assert torch.isfinite(pooled).all() and torch.isfinite(features).all()
    torch.testing.assert_close(x, x_before, equal_nan=True, rtol=0, atol=0)  # the input is not modified
    clean = torch.nan_to_num(x, nan=123.0)  # what is under a masked step does not matter
    torch.testing.assert_close(encoder(clean, keep_mask=~nan_steps), pooled, rtol=0, atol=0)
    assert not torch.equal(encoder(clean), pooled)
    # NaN must not reach the gradients either (0 * NaN = NaN in the input layer's weight gradient)
    encoder.train()(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


# ----------------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("ts2vec", {}), ("InceptionTime", {}), ("ts2vec", {**SMALL_TS2VEC, "kernel_size": 4})],
)
def test_onnx_export_parity_with_dynamic_batch(name: str, kwargs: dict[str, Any], tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(name, 12, **kwargs)
    encoder.train()(torch.randn(4, 12, 128))  # a training pass first (BatchNorm stats, masks) ...
    encoder.eval()  # ... then export in eval mode
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces itself
        torch.onnx.export(
            encoder,
            (torch.randn(2, 12, 128),),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["signal"],
            output_names=["embedding"],
            dynamic_axes={"signal": {0: "batch"}, "embedding": {0: "batch"}},
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"Dropout", "RandomUniform", "RandomUniformLike", "Bernoulli", "RandomNormal"}
    x = torch.randn(5, 12, 128)
    if name == "ts2vec":
        x[1, :, 20:30] = float("nan")
        x[3, 4, 60] = float("nan")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"signal": x.numpy()})
    with torch.no_grad():
        torch_out = encoder(x).numpy()
    assert onnx_out.shape == (5, encoder.embedding_dim)
    assert np.isfinite(onnx_out).all()
    np.testing.assert_allclose(onnx_out, torch_out, rtol=0, atol=1e-5)
