"""Default encoders for physiological signals: tsai's CNN backbones and TS2Vec's dilated conv encoder.

Every encoder is a :class:`SignalEncoder`: an ``nn.Module`` with ``in_channels`` and ``embedding_dim``
attributes and

* ``forward_features(x)``: ``(B, C, T)`` → ``(B, T, D)``, one ``D = embedding_dim`` vector per input
  time step, channel *last* as in TS2Vec (our encoders keep the time length: ``T' == T``; TS2Vec's
  convolutions are built to, and :class:`TsaiEncoder` checks it on every eager call);
* ``pool(features)``: ``(B, T, D)`` → ``(B, D)``;
* ``forward(x)`` = ``pool(forward_features(x))``: ``(B, C, T)`` → ``(B, D)``.

tsai is optional: :class:`TsaiEncoder` imports it when built and explains how to install it when it is
missing. Without torchvision (the usual case on CPU machines, see ENV.md) tsai's InceptionTime, ResCNN
and FCN work; its ResNet (and XCM, TST, ...) import torchvision through fastai and are refused with an
explanation.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medcl.configurable import Configurable
from medcl.errors import ConfigError

__all__ = [
    "TSAI_INSTALL_HINT",
    "SignalEncoder",
    "TS2VecEncoder",
    "TsaiEncoder",
    "build_encoder",
    "known_encoders",
]

TSAI_INSTALL_HINT = (
    "install it with `pip install --no-deps tsai==1.0.1 fastai==2.8.7` (--no-deps because fastai declares "
    "torchvision, which has no CPU build on our registries and breaks `import lightning` when its compiled "
    "ops do not load; the model code needs only the packages medcl already depends on)"
)


def _exporting() -> bool:
    """True while tracing/exporting, where shape checks would become traced constants or warnings."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


class SignalEncoder(Configurable, nn.Module):
    """Base class of the signal encoders: ``forward(x) = pool(forward_features(x))``.

    Encoders are :class:`~medcl.configurable.Configurable`: they record their constructor arguments, so a
    checkpoint can rebuild them without pickled code (:func:`medcl.checkpoints.load_encoder`).

    Attributes:
        in_channels: ``C``, channels of the input.
        embedding_dim: ``D``, size of the pooled embedding and of each time step's features.
    """

    in_channels: int
    embedding_dim: int

    def _check_input(self, x: torch.Tensor) -> None:
        if _exporting():
            return
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (B, {self.in_channels}, T), "
                f"got {tuple(x.shape)}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Time-resolved features: ``(B, C, T)`` → ``(B, T, D)``."""
        raise NotImplementedError

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Pool features over time: ``(B, T, D)`` → ``(B, D)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embedding: ``(B, C, T)`` → ``(B, D)``."""
        return self.pool(self.forward_features(x))


# ----------------------------------------------------------------------------------------------------
# tsai backbones
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _TsaiArch:
    name: str  # tsai's class name
    module: str  # the module defining it
    backbone: tuple[str, ...]  # the model's submodules before global pooling, in forward order
    head: str  # the final nn.Linear (its in_features is the backbone's output channels)


_TSAI_ARCHS: dict[str, _TsaiArch] = {
    arch.name.lower(): arch
    for arch in (
        _TsaiArch("InceptionTime", "tsai.models.InceptionTime", ("inceptionblock",), "fc"),
        _TsaiArch("ResCNN", "tsai.models.ResCNN", ("block1", "block2", "block3", "block4"), "lin"),
        _TsaiArch("FCN", "tsai.models.FCN", ("convblock1", "convblock2", "convblock3"), "fc"),
        _TsaiArch("ResNet", "tsai.models.ResNet", ("resblock1", "resblock2", "resblock3"), "fc"),
    )
}


def _import_tsai_model(arch: _TsaiArch) -> type[nn.Module]:
    """tsai's model class, or an ``ImportError`` saying what is missing and what to do."""
    try:
        module = importlib.import_module(arch.module)
    except ModuleNotFoundError as error:
        missing = (error.name or "").split(".")[0]
        if missing == "torchvision":
            raise ImportError(
                f"tsai's {arch.name} needs torchvision (tsai.models.utils imports fastai.vision, which "
                "imports torchvision), and torchvision is not installed. Use InceptionTime, ResCNN or FCN, "
                "which do not need it, or install the torchvision build matching your torch (CPU machines: "
                "none is available on our registries; see ENV.md, 'tsai: the hard one')"
            ) from error
        raise ImportError(
            f"TsaiEncoder({arch.name!r}) needs tsai, but importing it failed: module {missing!r} is missing; "
            + TSAI_INSTALL_HINT
        ) from error
    except RuntimeError as error:  # a torchvision whose compiled ops do not match torch
        if "torchvision" not in str(error):
            raise
        raise ImportError(
            f"tsai's {arch.name} imports torchvision, whose compiled operators do not load with this torch "
            f"({error}); uninstall torchvision, or install the build matching your torch (see ENV.md)"
        ) from error
    return getattr(module, arch.name)


class TsaiEncoder(SignalEncoder):
    """A tsai classification network cut before its global pooling and final linear layer.

    The tsai model is built with ``c_out=1`` and its own modules (weights and parameter names kept
    under ``backbone.<tsai name>``) up to, not including, global average pooling form the backbone;
    the head is dropped. :meth:`pool` is the mean over time, exactly what tsai's GAP feeds its head.

    Architectures (case-insensitive): ``InceptionTime`` (D = 4 * nf = 128), ``ResCNN`` (D = 128),
    ``FCN`` (D = layers[-1] = 128), ``ResNet`` (D = 128; needs torchvision). All pad "same": ``T' == T``.

    Args:
        arch: tsai architecture name.
        in_channels: ``C`` (keyword only).
        arch_kwargs: passed to the tsai class (e.g. ``{"nf": 16, "depth": 3}`` for InceptionTime,
            ``{"layers": [64, 128, 64]}`` for FCN); not ``c_in``/``c_out``. A dict (not ``**kwargs``)
            so that YAML configs can set it.

    Raises:
        ConfigError: unknown architecture or arguments tsai does not accept.
        ImportError: tsai (or, for ResNet, torchvision) is missing; the message says how to install.

    Shapes:
        ``forward``: ``(B, C, T)`` → ``(B, D)``; ``forward_features``: ``(B, C, T)`` → ``(B, T, D)``.
    """

    def __init__(
        self, arch: str = "InceptionTime", *, in_channels: int, arch_kwargs: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        arch_kwargs = dict(arch_kwargs or {})
        spec = _TSAI_ARCHS.get(str(arch).lower())
        if spec is None:
            raise ConfigError(
                f"unknown tsai architecture {arch!r}; TsaiEncoder supports "
                f"{', '.join(a.name for a in _TSAI_ARCHS.values())}"
            )
        self.in_channels = _check_channels(in_channels, "TsaiEncoder")
        reserved = {"c_in", "c_out"} & set(arch_kwargs)
        if reserved:
            raise ConfigError(f"TsaiEncoder sets {', '.join(sorted(reserved))} itself; do not pass them")
        model_class = _import_tsai_model(spec)
        try:
            model = model_class(self.in_channels, 1, **arch_kwargs)
        except TypeError as error:
            raise ConfigError(f"tsai's {spec.name} rejected the arguments {arch_kwargs}: {error}") from error
        self.arch = spec.name
        self.backbone = nn.Sequential(OrderedDict((name, getattr(model, name)) for name in spec.backbone))
        head = getattr(model, spec.head)
        if not isinstance(head, nn.Linear):
            raise ConfigError(
                f"tsai's {spec.name}.{spec.head} is not a Linear layer; this tsai version differs"
            )
        self.embedding_dim = int(head.in_features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features per time step: ``(B, C, T)`` → ``(B, T, D)``."""
        self._check_input(x)
        features = self.backbone(x)  # (B, D, T)
        if not _exporting() and features.shape[-1] != x.shape[-1]:
            raise ValueError(
                f"{self.arch} changed the time length from {x.shape[-1]} to {features.shape[-1]}; "
                "use arguments that keep 'same' padding"
            )
        return features.transpose(1, 2)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Mean over time (tsai's global average pooling): ``(B, T, D)`` → ``(B, D)``."""
        return features.mean(dim=1)


# ----------------------------------------------------------------------------------------------------
# TS2Vec
# ----------------------------------------------------------------------------------------------------
class _SamePadConv(nn.Module):
    """Dilated Conv1d whose output has the input's length: ``(B, in, T)`` → ``(B, out, T)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.receptive_field = (kernel_size - 1) * dilation + 1
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, padding=self.receptive_field // 2, dilation=dilation
        )
        # An even receptive field pads one sample too many: drop the last output.
        self.trim = 1 if self.receptive_field % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out[:, :, : out.shape[-1] - self.trim] if self.trim else out


class _DilatedBlock(nn.Module):
    """Residual block: ``GELU → conv → GELU → conv`` plus the input (through a 1x1 conv when the
    channels change, and always in the last block, as in TS2Vec)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, final: bool
    ) -> None:
        super().__init__()
        self.conv1 = _SamePadConv(in_channels, out_channels, kernel_size, dilation)
        self.conv2 = _SamePadConv(out_channels, out_channels, kernel_size, dilation)
        self.projector = (
            nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels or final else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.projector is None else self.projector(x)
        x = self.conv1(F.gelu(x))
        x = self.conv2(F.gelu(x))
        return x + residual


class _DilatedConvEncoder(nn.Module):
    """Stack of :class:`_DilatedBlock`; block ``i`` has dilation ``2**i``. ``(B, H, T)`` → ``(B, out, T)``."""

    def __init__(self, in_channels: int, channels: list[int], kernel_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            *(
                _DilatedBlock(
                    channels[i - 1] if i > 0 else in_channels,
                    channels[i],
                    kernel_size,
                    dilation=2**i,
                    final=i == len(channels) - 1,
                )
                for i in range(len(channels))
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TS2VecEncoder(SignalEncoder):
    """TS2Vec's encoder (Yue et al., AAAI 2022), also COMET's (NeurIPS 2023).

    Per time step, a linear layer maps the ``C`` channels to ``hidden_dims``; time steps where any
    channel is NaN are zeroed at the input and masked after it. In training mode a random timestamp
    mask zeroes each time step's hidden vector with probability ``mask_p`` (``mask_mode="binomial"``),
    drawn from torch's *default* generator (so ``torch.manual_seed`` / Lightning's ``seed_everything``
    make it reproducible); in eval mode, and for ``mask_mode="none"``, nothing is masked beyond NaN
    steps. Then ``depth + 1`` residual blocks of two dilated "same" convolutions (kernel
    ``kernel_size``, block ``i`` with dilation ``2**i``, GELU before each convolution, a 1x1 projection
    on the residual where channels change and in the last block) with channels
    ``[hidden_dims] * depth + [output_dims]``, and dropout ``repr_dropout`` on the output.

    Parameter names match TS2Vec's ``TSEncoder`` (``input_fc``, ``feature_extractor.net.<i>.conv1.conv``,
    ...), so its and COMET's checkpoints load with ``load_state_dict``.

    :meth:`pool` is the max over time (TS2Vec's and COMET's instance-level representation).
    The receptive field is ``1 + 2 (kernel_size - 1) (2**(depth + 1) - 1)`` samples (8189 by default).

    Args:
        in_channels: ``C``.
        hidden_dims: channels of the input projection and the hidden blocks.
        output_dims: ``D``, channels of the last block.
        depth: number of hidden blocks (>= 0); there are ``depth + 1`` blocks in all.
        kernel_size: convolution kernel size (>= 1).
        mask_mode: ``"binomial"`` (TS2Vec's default) or ``"none"``.
        mask_p: probability that a time step is masked in training (TS2Vec: 0.5), in ``[0, 1)``.
        repr_dropout: dropout on the output features (TS2Vec: 0.1), in ``[0, 1)``.

    Shapes:
        ``forward``: ``(B, C, T)`` → ``(B, D)``; ``forward_features``: ``(B, C, T)`` → ``(B, T, D)``.
    """

    MASK_MODES = ("binomial", "none")

    def __init__(
        self,
        in_channels: int,
        hidden_dims: int = 64,
        output_dims: int = 320,
        depth: int = 10,
        kernel_size: int = 3,
        mask_mode: str = "binomial",
        mask_p: float = 0.5,
        repr_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_channels = _check_channels(in_channels, "TS2VecEncoder")
        self.hidden_dims = _check_count(hidden_dims, "hidden_dims", 1)
        self.output_dims = _check_count(output_dims, "output_dims", 1)
        self.depth = _check_count(depth, "depth", 0)
        self.kernel_size = _check_count(kernel_size, "kernel_size", 1)
        if mask_mode not in self.MASK_MODES:
            raise ConfigError(f"TS2VecEncoder: mask_mode must be one of {self.MASK_MODES}, got {mask_mode!r}")
        self.mask_mode = mask_mode
        for name, value in (("mask_p", mask_p), ("repr_dropout", repr_dropout)):
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise ConfigError(f"TS2VecEncoder: {name} must be in [0, 1), got {value!r}")
        self.mask_p = float(mask_p)
        self.embedding_dim = self.output_dims
        self.input_fc = nn.Linear(self.in_channels, self.hidden_dims)
        self.feature_extractor = _DilatedConvEncoder(
            self.hidden_dims, [self.hidden_dims] * self.depth + [self.output_dims], self.kernel_size
        )
        self.repr_dropout = nn.Dropout(p=float(repr_dropout))

    @property
    def receptive_field(self) -> int:
        """Input samples that one output time step sees (before the edges cut it)."""
        return 1 + sum(
            (block.conv1.receptive_field - 1) + (block.conv2.receptive_field - 1)
            for block in self.feature_extractor.net
        )

    def _random_keep_mask(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        """``(B, T)`` bool, True where a time step is kept; drawn from torch's default generator."""
        return torch.rand(batch, length, device=device) >= self.mask_p

    def forward_features(self, x: torch.Tensor, keep_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Features per time step: ``(B, C, T)`` → ``(B, T, D)``.

        Args:
            x: input, NaN allowed (a time step with any NaN channel is masked).
            keep_mask: optional ``(B, T)`` bool, False where a time step must be masked; replaces the
                random training mask (NaN steps are masked regardless). ``None``: the random mask in
                training mode, none in eval mode.
        """
        self._check_input(x)
        steps = x.transpose(1, 2)  # (B, T, C)
        nan_steps = torch.isnan(steps).any(dim=-1)  # (B, T)
        hidden = self.input_fc(steps.masked_fill(nan_steps.unsqueeze(-1), 0.0))  # (B, T, H)
        masked = nan_steps
        if keep_mask is not None:
            masked = masked | ~keep_mask.to(device=x.device, dtype=torch.bool)
        elif self.training and self.mask_mode == "binomial":
            masked = masked | ~self._random_keep_mask(x.shape[0], x.shape[2], x.device)
        hidden = hidden.masked_fill(masked.unsqueeze(-1), 0.0)
        features = self.repr_dropout(self.feature_extractor(hidden.transpose(1, 2)))  # (B, D, T)
        return features.transpose(1, 2)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Max over time (TS2Vec/COMET): ``(B, T, D)`` → ``(B, D)``."""
        return features.amax(dim=1)

    def forward(self, x: torch.Tensor, keep_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled embedding ``pool(forward_features(x, keep_mask))``: ``(B, C, T)`` → ``(B, D)``."""
        return self.pool(self.forward_features(x, keep_mask))


# ----------------------------------------------------------------------------------------------------
# factory
# ----------------------------------------------------------------------------------------------------
def _check_channels(value: int, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner}: in_channels must be an integer >= 1, got {value!r}")
    return value


def _check_count(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"TS2VecEncoder: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def known_encoders() -> list[str]:
    """Names :func:`build_encoder` accepts (matched case-insensitively)."""
    return ["ts2vec", *(arch.name for arch in _TSAI_ARCHS.values())]


def build_encoder(name: str, in_channels: int, **kwargs: Any) -> SignalEncoder:
    """Build a signal encoder by name: ``"ts2vec"`` (:class:`TS2VecEncoder`) or a tsai architecture
    (:class:`TsaiEncoder`: ``"InceptionTime"``, ``"ResCNN"``, ``"FCN"``, ``"ResNet"``), case-insensitive.

    Args:
        name: the encoder's name.
        in_channels: ``C``.
        **kwargs: the encoder's other constructor arguments.

    Raises:
        ConfigError: an unknown name (the message lists the known ones) or bad arguments.
    """
    key = str(name).strip().lower()
    if key == "ts2vec":
        try:
            return TS2VecEncoder(in_channels, **kwargs)
        except TypeError as error:
            raise ConfigError(f"TS2VecEncoder rejected the arguments {kwargs}: {error}") from error
    if key in _TSAI_ARCHS:
        return TsaiEncoder(_TSAI_ARCHS[key].name, in_channels=in_channels, arch_kwargs=kwargs)
    raise ConfigError(f"unknown encoder {name!r}; known encoders: {', '.join(known_encoders())}")
