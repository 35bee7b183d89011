"""Helpers shared by the modules of :mod:`medcl.losses`: input checks, precision and masking."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl.errors import ConfigError

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _check_positive(value: float, name: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be finite and > 0, got {value!r}")


def _check_temperature(temperature: float) -> None:
    """Raise :class:`ConfigError` for a temperature that is not finite and > 0."""
    _check_positive(temperature, "temperature")


def _float_input(x: Tensor, name: str) -> Tensor:
    """``x`` as a float tensor fit for a loss: half types upcast to float32, non-float rejected."""
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x.float() if x.dtype in _HALF_DTYPES else x


def _prepare(x: Tensor, normalize: bool, name: str) -> Tensor:
    """``x`` upcast from half types and, if ``normalize``, L2-normalised along the last dim."""
    x = _float_input(x, name)
    return F.normalize(x, dim=-1) if normalize else x


@contextlib.contextmanager
def _full_precision(device: torch.device) -> Iterator[None]:
    """Switch autocast off on ``device`` so matmuls run in the (float32 or float64) input dtype."""
    if torch.amp.is_autocast_available(device.type):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield


def _check_matrix(x: Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, dim), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); a loss needs at least one row")


def _check_pair(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    _check_matrix(a, name_a)
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _mask_self(logits: Tensor, self_cols: Tensor) -> Tensor:
    """``logits`` (rows, cols) with ``-inf`` at ``(i, self_cols[i])`` for every row ``i`` (out of place)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits.index_put((rows, self_cols), logits.new_tensor(float("-inf")))


def _settings_repr(module: nn.Module, *names: str) -> str:
    """``name=value, ...`` for a wrapper's ``extra_repr``."""
    return ", ".join(f"{name}={getattr(module, name)!r}" for name in names)
