"""Loading medcl checkpoints safely (``weights_only=True``) and rebuilding their encoders."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

import medcl
from medcl.configurable import instantiate_spec, module_spec
from medcl.errors import ConfigError, CorruptFileError

__all__ = ["encoder_from_checkpoint", "encoder_state_dict", "load_checkpoint", "load_encoder", "run_record"]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors and plain data only, no code.

    Raises:
        ConfigError: the file does not exist.
        CorruptFileError: the file is not a readable checkpoint, or it holds pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CorruptFileError(
            path,
            f"refused to load: it holds objects that are not plain data ({str(error).splitlines()[0]})",
            "medcl only loads checkpoints with weights_only=True",
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CorruptFileError(
            path, f"not a readable checkpoint ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CorruptFileError(path, "not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def encoder_state_dict(checkpoint: dict[str, Any], prefix: str = "encoder.") -> dict[str, torch.Tensor]:
    """The encoder's weights from a (pretraining or fine-tuning) checkpoint's ``state_dict``."""
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ConfigError(f"the checkpoint holds no weights under {prefix!r}")
    return state


def encoder_from_checkpoint(
    checkpoint: dict[str, Any], encoder: nn.Module | None = None, source: str = "the checkpoint"
) -> nn.Module:
    """The encoder of an already loaded checkpoint (:func:`load_encoder`); ``source`` names it in errors."""
    if encoder is None:
        spec = (checkpoint.get("medcl") or {}).get("encoder")
        if spec is None:
            raise ConfigError(
                f"{source} does not record how to build its encoder; build the same encoder and pass it "
                "as encoder="
            )
        encoder = instantiate_spec(spec)
    missing, unexpected = encoder.load_state_dict(encoder_state_dict(checkpoint), strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{source}: the encoder weights do not fit {type(encoder).__name__} "
            f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )
    return encoder.eval()


def load_encoder(path: str | Path, encoder: nn.Module | None = None) -> nn.Module:
    """The pretrained encoder of a medcl checkpoint.

    Args:
        path: a checkpoint written by :class:`medcl.training.PretrainModule` (e.g. ``last.ckpt``) or by a
            task module.
        encoder: an encoder of the same architecture to load the weights into; by default it is rebuilt
            from the spec stored in the checkpoint (medcl's own classes only).

    Returns:
        the encoder with the pretrained weights, in eval mode.
    """
    return encoder_from_checkpoint(load_checkpoint(path), encoder, source=str(path))


def run_record(module: Any, encoder: nn.Module) -> dict[str, Any]:
    """What a checkpoint records (under ``checkpoint["medcl"]``) to rebuild and export its model without
    pickled objects: the medcl version, the encoder's class spec, and, when the module's trainer has a
    data module with an adapter, the modality, the input/preprocessing spec and the adapter's spec."""
    trainer = getattr(module, "_trainer", None)
    adapter = getattr(getattr(trainer, "datamodule", None), "adapter", None)
    return {
        "medcl_version": medcl.__version__,
        "encoder": module_spec(encoder),
        "modality": getattr(adapter, "modality", None),
        "input": adapter.input_spec() if adapter is not None else None,
        "adapter": module_spec(adapter) if adapter is not None else None,
    }
