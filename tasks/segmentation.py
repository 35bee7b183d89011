"""Segmentation heads on (pre)trained volume backbones: fine-tuning, frozen encoder, or from scratch.

:class:`SegmentationModule` puts a 1×1 convolution (``Conv3d``, or ``Conv2d`` for 2-D backbones) from the
backbone's dense decoder features to ``K`` class logits (background included). The backbone is any module
with ``forward_dense(x) → (B, F, *spatial)`` and ``feature_channels = F``, e.g.
:class:`modalities.volumes.encoders.UNetBackbone` or ``SwinUNETRBackbone``. The three arms of a
label-efficiency study share the architecture:

- ``mode="finetune"``: the pretrained backbone (from a pretraining checkpoint) is trained end to end, its
  *encoder* (the downsampling path, ``encoder_parameters()``) at ``encoder_lr_scale`` × ``lr``, the
  decoder and the head at ``lr`` — the same meaning as classification's ``finetune``;
- ``mode="scratch"``: the same architecture with random weights, everything at ``lr`` — the same meaning
  as classification's ``scratch``;
- ``mode="frozen_encoder"``: the pretrained encoder is frozen (no gradients, not in the optimiser, its
  normalisation and dropout layers in eval mode); the decoder and the head are trained at ``lr``. This is
  segmentation's counterpart of classification's ``linear`` probe, but it is not linear (a whole decoder
  is trained on the frozen features), so it has its own name; ``mode="linear"`` is refused with a pointer.

Loss: MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` on the training crops, plus, when
``asymmetry_weight > 0``, the asymmetry-contrast term of :mod:`medcl.objectives.asymmetry` on the dense
features (DESIGN.md §1.3, SATs). Validation and test run MONAI ``sliding_window_inference`` over each whole
volume (window ``roi_size``, overlap ``sw_overlap``, ``sw_mode`` blending), take the argmax, and score it
with MONAI ``DiceMetric(include_background=False)``: logged as ``<stage>/dice_<label name>`` per
foreground class (the mean over volumes whose mask has that class) and ``<stage>/dice`` (the mean of the
per-class values). Test scores also go to ``<log_dir>/test_metrics.json`` when the trainer has a logger.

Checkpoints carry ``checkpoint["medcl"]`` (plain data, see :meth:`SegmentationModule.on_save_checkpoint`),
from which :func:`load_segmentation_model` rebuilds the model with ``weights_only=True`` loading.
:func:`run_segmentation_efficiency` compares the arms at several label fractions and seeds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from torch import Tensor, nn

from medcl.checkpoints import encoder_from_checkpoint, load_checkpoint, run_record
from medcl.configurable import instantiate_spec
from medcl.data import contract
from medcl.data.adapter import Adapter
from medcl.data.splits import SplitConfig
from medcl.errors import ConfigError
from medcl.training.schedule import warmup_cosine
from tasks.segmentation_data import MASK_KEY, SegmentationDataModule

__all__ = [
    "ARMS",
    "MODES",
    "SegmentationModule",
    "SegmentationResult",
    "load_segmentation_model",
    "run_segmentation_efficiency",
]

MODES = ("finetune", "scratch", "frozen_encoder")
SW_MODES = ("gaussian", "constant")
#: the input-spec keys that must agree between pretraining and fine-tuning data
_INPUT_KEYS_TO_MATCH = ("channels", "image_modality", "spacing", "orientation")


def _backbone_for(
    mode: str, encoder: nn.Module | None, encoder_ckpt: str | None
) -> tuple[nn.Module, dict | None]:
    """The backbone of a mode, and the pretraining input spec it expects (None when not pretrained)."""
    checkpoint = load_checkpoint(encoder_ckpt) if encoder_ckpt is not None else None
    meta = (checkpoint or {}).get("medcl") or {}
    if mode != "scratch":
        if checkpoint is None:
            raise ConfigError(
                f"mode={mode!r} needs a pretrained backbone: set encoder_ckpt "
                "(use mode='scratch' for random weights)"
            )
        return encoder_from_checkpoint(checkpoint, encoder, source=str(encoder_ckpt)), meta.get("input")
    if encoder is not None:
        return encoder, None
    if checkpoint is None:
        raise ConfigError("mode='scratch' needs an encoder, or an encoder_ckpt whose architecture to use")
    if meta.get("encoder") is None:
        raise ConfigError(f"{encoder_ckpt} does not record its encoder's architecture; pass encoder=")
    return instantiate_spec(meta["encoder"]), None  # same architecture, fresh random weights


def _encoder_modules(backbone: nn.Module) -> list[nn.Module]:
    """The modules of the backbone's downsampling path (for eval mode when frozen)."""
    modules = getattr(backbone, "encoder_modules", None)
    return list(modules()) if callable(modules) else []


class SegmentationModule(L.LightningModule):
    """A 1×1-convolution segmentation head on a dense backbone (see the module docstring).

    Args:
        encoder: the backbone (``forward_dense(x) → (B, F, *spatial)``, attribute ``feature_channels``;
            for ``finetune``/``frozen_encoder`` also ``encoder_parameters()``/``decoder_parameters()``);
            optional when ``encoder_ckpt`` names a medcl checkpoint that records its architecture.
        encoder_ckpt: a pretraining checkpoint (``last.ckpt``) whose backbone weights to start from
            (``finetune``/``frozen_encoder``), or whose architecture to use (``scratch``).
        mode: ``"finetune"``, ``"scratch"`` or ``"frozen_encoder"``.
        num_classes: mask classes ``K``, background included (linked from the data module).
        label_names: names of the ``K`` classes, background first (linked from the data module).
        input_key: the batch key of the image (linked from the data module).
        roi_size: the training crop and inference window, e.g. ``[32, 48, 32]`` (linked from the data
            module); every side must suit the backbone (``spatial_multiple``).
        lr: AdamW learning rate of the head and the decoder (and of the encoder in ``scratch`` mode).
        encoder_lr_scale: the encoder's learning rate relative to ``lr`` in ``finetune`` mode.
        weight_decay: AdamW weight decay.
        warmup_epochs: linear warm-up, then cosine decay to 0 at ``max_epochs``
            (:func:`medcl.training.schedule.warmup_cosine`).
        sw_batch_size: windows per forward pass in sliding-window inference.
        sw_overlap: overlap of neighbouring windows (fraction of the ROI).
        sw_mode: ``"gaussian"`` (windows weighted towards their centre) or ``"constant"`` blending.
        asymmetry_weight: weight of the auxiliary asymmetry-contrast loss (0: off; see :meth:`losses`).
        asymmetry_margin: the margin ``m`` of the asymmetry loss inside the mask (at most 2: the features
            are L2-normalised).
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        encoder_ckpt: str | None = None,
        mode: str = "finetune",
        num_classes: int = 2,
        label_names: list[str] | None = None,
        input_key: str = "image",
        roi_size: list[int] | None = None,
        lr: float = 1e-3,
        encoder_lr_scale: float = 0.1,
        weight_decay: float = 1e-5,
        warmup_epochs: float = 0,
        sw_batch_size: int = 4,
        sw_overlap: float = 0.25,
        sw_mode: str = "gaussian",
        asymmetry_weight: float = 0.0,
        asymmetry_margin: float = 1.0,
    ) -> None:
        super().__init__()
        if mode == "linear":
            raise ConfigError(
                "mode='linear' is classification's frozen-encoder probe; a segmentation head trains a "
                "decoder on the frozen encoder: use mode='frozen_encoder'"
            )
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if num_classes < 2:
            raise ConfigError(
                f"segmentation needs at least 2 classes (background included), got {num_classes}"
            )
        if label_names is not None and len(label_names) != num_classes:
            raise ConfigError(f"{len(label_names)} label names for {num_classes} classes")
        if sw_mode not in SW_MODES:
            raise ConfigError(f"sw_mode must be one of {SW_MODES}, got {sw_mode!r}")
        if not 0.0 <= sw_overlap < 1.0:
            raise ConfigError(f"sw_overlap must be in [0, 1), got {sw_overlap}")
        if sw_batch_size < 1:
            raise ConfigError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        if asymmetry_weight < 0:
            raise ConfigError(f"asymmetry_weight must be >= 0, got {asymmetry_weight}")
        self.save_hyperparameters(ignore=["encoder"])
        self.encoder, self._pretrained_input = _backbone_for(mode, encoder, encoder_ckpt)
        features = getattr(self.encoder, "feature_channels", None)
        if not callable(getattr(self.encoder, "forward_dense", None)) or not isinstance(features, int):
            raise ConfigError(
                f"{type(self.encoder).__name__} is not a dense backbone: it needs forward_dense(x) and an "
                "integer feature_channels (e.g. modalities.volumes.encoders.UNetBackbone)"
            )
        if mode != "scratch" and not callable(getattr(self.encoder, "encoder_parameters", None)):
            raise ConfigError(
                f"mode={mode!r} treats the encoder and the decoder differently; "
                f"{type(self.encoder).__name__} has no encoder_parameters()/decoder_parameters()"
            )
        self.spatial_dims = int(getattr(self.encoder, "spatial_dims", 3))
        self.roi_size = self._checked_roi(roi_size)
        conv = nn.Conv3d if self.spatial_dims == 3 else nn.Conv2d
        self.head = conv(features, num_classes, kernel_size=1)
        if mode == "frozen_encoder":
            for parameter in self.encoder.encoder_parameters():
                parameter.requires_grad_(False)
        self.train()  # encoder_from_checkpoint returns the backbone in eval mode; a frozen encoder stays so
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        self.asymmetry = self._asymmetry_objective() if asymmetry_weight > 0 else None
        #: per stage, MONAI's Dice of every evaluated volume and foreground class (its buffer)
        self.dice_metrics = {
            stage: DiceMetric(include_background=False, reduction="none", num_classes=num_classes)
            for stage in ("val", "test")
        }
        self._skipped = {"train": 0, "val": 0, "test": 0}
        self.results: dict[str, dict[str, float]] = {}

    def _checked_roi(self, roi_size: Sequence[int] | None) -> tuple[int, ...]:
        if roi_size is None or len(roi_size) != self.spatial_dims:
            raise ConfigError(f"roi_size must give {self.spatial_dims} sides, got {roi_size}")
        roi = tuple(int(s) for s in roi_size)
        multiple = int(getattr(self.encoder, "spatial_multiple", 1))
        if any(s % multiple or s < 2 * multiple for s in roi):
            raise ConfigError(
                f"roi_size {list(roi)} does not suit {type(self.encoder).__name__}: every side must be a "
                f"multiple of {multiple} and at least {2 * multiple}"
            )
        return roi

    def _asymmetry_objective(self) -> nn.Module:
        """The asymmetry-contrast objective of the auxiliary loss (imported only when it is used)."""
        try:
            from medcl.objectives.asymmetry import AsymmetryContrast
        except ImportError as error:  # pragma: no cover - the objective ships with medcl
            raise ConfigError(
                f"asymmetry_weight > 0 needs medcl.objectives.asymmetry ({error}); set asymmetry_weight: 0"
            ) from error
        return AsymmetryContrast(roi_size=self.roi_size, margin=self.hparams["asymmetry_margin"])

    @property
    def label_names(self) -> list[str]:
        """The class names (``class_<k>`` when none were given), background first."""
        names = self.hparams["label_names"]
        return (
            list(names) if names is not None else [f"class_{k}" for k in range(self.hparams["num_classes"])]
        )

    def setup(self, stage: str) -> None:
        """Refuse data that differs from what the backbone was pretrained on: channels, image modality,
        spacing or orientation of the adapters' input specs (the ROI may differ)."""
        adapter = getattr(getattr(self.trainer, "datamodule", None), "adapter", None)
        if adapter is None or not self._pretrained_input:
            return
        now, before = adapter.input_spec(), self._pretrained_input
        for key in _INPUT_KEYS_TO_MATCH:
            if key in before and key in now and before[key] != now[key]:
                raise ConfigError(
                    f"the encoder was pretrained on {key}={before[key]} but the data gives {key}={now[key]}; "
                    "use the pretraining run's data settings"
                )

    def train(self, mode: bool = True) -> SegmentationModule:
        super().train(mode)
        if self.hparams["mode"] == "frozen_encoder":
            for module in _encoder_modules(self.encoder):
                module.eval()  # a frozen encoder keeps its normalisation statistics and drops no units
        return self

    # ----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Class logits of a crop: ``(B, C, *roi) → (B, K, *roi)``."""
        return self.head(self.encoder.forward_dense(x))

    def infer(self, x: Tensor) -> Tensor:
        """Class logits of whole volumes, by sliding windows: ``(B, C, *spatial) → (B, K, *spatial)``."""
        return sliding_window_inference(
            x,
            roi_size=self.roi_size,
            sw_batch_size=self.hparams["sw_batch_size"],
            predictor=self,
            overlap=self.hparams["sw_overlap"],
            mode=self.hparams["sw_mode"],
        )

    def segment(self, x: Tensor) -> Tensor:
        """Class index of every voxel of whole volumes: ``(B, C, *spatial) → (B, 1, *spatial)`` long."""
        return self.infer(x).argmax(dim=1, keepdim=True)

    def losses(self, x: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Training loss terms of a batch of crops ``x`` ``(B, C, *roi)`` with masks ``(B, 1, *roi)``.

        ``dice_ce``: MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` of the head's logits; with
        ``asymmetry_weight > 0`` also ``asymmetry``: the ``loss`` of
        :meth:`medcl.objectives.asymmetry.AsymmetryContrast.auxiliary_loss` on the dense features of one
        backbone pass over ``cat([x, flip_lr(x)])`` (lesion = every foreground class). ``loss`` =
        ``dice_ce + asymmetry_weight · asymmetry``.

        The mirror image of a crop is ``flip_lr(crop)``: exact for crops centred on the volume's mirror
        plane along the left-right axis (``crop: symmetric`` in :class:`SegmentationDataModule`; half a
        voxel off when the padded side and the ROI differ by an odd number), not for other crops.
        """
        weight = float(self.hparams["asymmetry_weight"])
        if weight == 0:
            dice_ce = self.loss_fn(self(x), mask)
            return {"loss": dice_ce, "dice_ce": dice_ce}
        from medcl.losses.asymmetry import flip_lr

        features = self.encoder.forward_dense(torch.cat([x, flip_lr(x)]))
        dice_ce = self.loss_fn(self.head(features[: x.shape[0]]), mask)
        asymmetry = self.asymmetry.auxiliary_loss(features, x, mask)["loss"]
        return {"loss": dice_ce + weight * asymmetry, "dice_ce": dice_ce, "asymmetry": asymmetry}

    def _count_skips(self, batch: dict[str, Any], stage: str) -> None:
        skipped = int(batch.get(contract.N_SKIPPED, 0))
        if skipped:
            self._skipped[stage] += skipped
            self.log(f"{stage}/skipped_samples", float(self._skipped[stage]), on_step=True, batch_size=1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        self._count_skips(batch, "train")
        if MASK_KEY not in batch:  # every sample of the batch failed to load (on_error="skip")
            return None
        x, mask = batch[self.hparams["input_key"]], batch[MASK_KEY]
        terms = self.losses(x, mask)
        for name, value in terms.items():
            self.log(
                f"train/{name}",
                value.detach(),
                on_step=True,
                on_epoch=True,
                prog_bar=name == "loss",
                batch_size=x.shape[0],
            )
        return terms["loss"]

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        self._count_skips(batch, stage)
        if MASK_KEY not in batch:
            return
        x, mask = batch[self.hparams["input_key"]], batch[MASK_KEY]
        logits = self.infer(x)
        self.log(f"{stage}/loss", self.loss_fn(logits, mask), on_epoch=True, batch_size=x.shape[0])
        self.dice_metrics[stage](y_pred=logits.argmax(dim=1, keepdim=True), y=mask)  # buffers (B, K - 1)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Class index of every voxel of the batch's whole volumes, ``(B, 1, *spatial)`` long."""
        return self.segment(batch[self.hparams["input_key"]])

    def _epoch_metrics(self, stage: str) -> None:
        metric = self.dice_metrics[stage]
        # (N, K - 1), NaN where a volume's mask lacks the class; MONAI gathers the volumes of every rank.
        buffered = metric.get_buffer()
        metric.reset()
        if buffered is None or self.trainer.sanity_checking:
            return
        dice = buffered.detach().float().cpu()
        scores: dict[str, float] = {}
        for k, name in enumerate(self.label_names[1:]):
            present = dice[:, k][~torch.isnan(dice[:, k])]
            scores[f"dice_{name}"] = float(present.mean()) if len(present) else float("nan")
        per_class = [v for v in scores.values() if not math.isnan(v)]
        scores = {"dice": float(sum(per_class) / len(per_class)) if per_class else float("nan"), **scores}
        self.results[stage] = {**scores, "n": int(dice.shape[0]), "n_skipped": self._skipped[stage]}
        for name, value in scores.items():
            if not math.isnan(value):
                self.log(f"{stage}/{name}", value, prog_bar=name == "dice")

    def on_validation_epoch_end(self) -> None:
        self._epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_metrics("test")
        # Only runs with a logger have a run folder (without one, log_dir falls back to the working dir).
        has_run_dir = bool(self.trainer.loggers) and self.trainer.log_dir is not None
        if self.trainer.is_global_zero and has_run_dir and "test" in self.results:
            path = Path(self.trainer.log_dir) / "test_metrics.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.results["test"], indent=2) + "\n")

    # ----------------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups: ``decoder_head`` at ``lr``; ``encoder`` at ``lr · encoder_lr_scale``
        (``finetune``), at ``lr`` (``scratch``), or absent (``frozen_encoder``)."""
        lr, mode = self.hparams["lr"], self.hparams["mode"]
        if mode == "scratch" and not callable(getattr(self.encoder, "encoder_parameters", None)):
            return [{"name": "all", "params": list(self.parameters()), "lr": lr}]
        encoder = list(self.encoder.encoder_parameters())
        decoder = list(self.encoder.decoder_parameters())
        groups: list[dict[str, Any]] = [
            {"name": "decoder_head", "params": decoder + list(self.head.parameters()), "lr": lr}
        ]
        if mode != "frozen_encoder":
            scale = self.hparams["encoder_lr_scale"] if mode == "finetune" else 1.0
            groups.append({"name": "encoder", "params": encoder, "lr": lr * scale})
        return groups

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(
            self.parameter_groups(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
        factor = warmup_cosine(self.trainer, self.hparams["warmup_epochs"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record what rebuilding and exporting the model needs, as plain data (see the report keys in
        :func:`load_segmentation_model`)."""
        checkpoint["medcl"] = {
            **run_record(self, self.encoder),
            "kind": "segmentation",
            "task": "segmentation",
            "num_classes": int(self.hparams["num_classes"]),
            "label_names": self.label_names,
            "input_key": self.hparams["input_key"],
            "spatial_dims": self.spatial_dims,
            "roi_size": list(self.roi_size),
            "sliding_window": {
                "overlap": float(self.hparams["sw_overlap"]),
                "mode": self.hparams["sw_mode"],
                "sw_batch_size": int(self.hparams["sw_batch_size"]),
            },
            "head": {"in_channels": int(self.head.in_channels), "num_classes": int(self.head.out_channels)},
        }


def load_segmentation_model(checkpoint: str | Path | dict[str, Any]) -> SegmentationModule:
    """Rebuild a trained :class:`SegmentationModule` from its checkpoint, without unpickling code.

    The checkpoint is read with ``torch.load(weights_only=True)`` (:func:`medcl.checkpoints.load_checkpoint`);
    ``checkpoint["medcl"]`` gives the backbone's class spec (``encoder``), ``num_classes``,
    ``label_names``, ``input_key``, ``roi_size`` and ``sliding_window`` settings; the weights are loaded
    strictly. Returns the model in eval mode.
    """
    source = "the checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)
    loaded = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    meta = loaded.get("medcl") or {}
    if meta.get("kind") != "segmentation":
        raise ConfigError(f"{source} is not a segmentation checkpoint (kind {meta.get('kind')!r})")
    if meta.get("encoder") is None:
        raise ConfigError(f"{source} does not record its backbone's architecture")
    window = meta["sliding_window"]
    model = SegmentationModule(
        encoder=instantiate_spec(meta["encoder"]),
        mode="scratch",
        num_classes=meta["num_classes"],
        label_names=meta["label_names"],
        input_key=meta["input_key"],
        roi_size=meta["roi_size"],
        sw_batch_size=window["sw_batch_size"],
        sw_overlap=window["overlap"],
        sw_mode=window["mode"],
    )
    model.load_state_dict(loaded["state_dict"], strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------------
ARMS = ("finetune", "scratch", "frozen_encoder")


@dataclass
class SegmentationResult:
    """Test scores of one arm at one label fraction and seed (one row of the efficiency table)."""

    fraction: float
    seed: int
    arm: str
    dice: float
    train_patients: int
    train_samples: int
    test_patients: int
    test_samples: int
    epochs: int
    seconds: float
    checkpoint: str = ""
    dice_per_class: dict[str, float] = field(default_factory=dict)


def _default_epochs(fraction: float) -> int:
    """Epochs per arm: more at small fractions (fewer volumes per epoch)."""
    return 50 if fraction <= 0.1 else 20


def run_segmentation_efficiency(
    adapter: Adapter,
    encoder_ckpt: str | Path,
    split: SplitConfig,
    label_names: Sequence[str],
    roi_size: Sequence[int],
    fractions: Sequence[float] = (0.1, 1.0),
    seeds: Sequence[int] = (0,),
    arms: Sequence[str] = ("finetune", "scratch"),
    epochs: Callable[[float], int] | int = _default_epochs,
    batch_size: int = 4,
    lr: float = 5e-3,
    encoder_lr_scale: float = 0.1,
    crop: str = "pos_neg",
    sw_batch_size: int = 4,
    limit_train_batches: int | float | None = None,
    out_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Pretrained vs from-scratch segmentation at several label fractions and seeds.

    For every (fraction, seed) the training patients are drawn once (:mod:`tasks.fractions`) and every
    arm trains on exactly those patients for the same number of epochs; the model after the last epoch
    is scored on the whole test split (no model selection on test or validation data).

    Args:
        adapter: the volumes (``image`` and ``mask`` per sample).
        encoder_ckpt: the pretraining checkpoint (weights for ``finetune``/``frozen_encoder``,
            architecture for ``scratch``).
        split: the patient split (the same for every run).
        label_names: the mask classes, background first.
        roi_size: training crop and inference window.
        fractions: label fractions of the training patients.
        seeds: seeds of the patient draws (and of the training runs).
        arms: a subset of :data:`ARMS`.
        epochs: epochs per run, or a function of the fraction.
        batch_size, lr, encoder_lr_scale, crop, sw_batch_size: training and inference settings.
        limit_train_batches: cap of training batches per epoch (Lightning's), e.g. for smoke runs.
        out_dir: where each run writes its data record and trained model
            (``<out_dir>/f<fraction>_s<seed>/{data record, <arm>.ckpt}``); None: nowhere.
        progress: called with one line per finished run.

    Returns:
        one row per (fraction, seed, arm): ``fraction, seed, arm, dice, dice_<label>`` for every
        foreground label, ``train_patients, train_samples, test_patients, test_samples, epochs, seconds,
        checkpoint``.
    """
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ConfigError(f"unknown arm(s) {sorted(unknown)}; arms are {ARMS}")
    rows: list[dict[str, Any]] = []
    for fraction in fractions:
        n_epochs = epochs(fraction) if callable(epochs) else int(epochs)
        for seed in seeds:
            run_dir = None if out_dir is None else str(Path(out_dir) / f"f{fraction:g}_s{seed}")
            data = SegmentationDataModule(
                adapter,
                label_names=list(label_names),
                roi_size=list(roi_size),
                crop=crop,
                label_fraction=fraction,
                fraction_seed=seed,
                batch_size=batch_size,
                split=split,
                seed=seed,
                run_dir=run_dir,
            )
            data.setup("fit")
            if not len(data.samples["test"]):
                raise ConfigError("the test split has no volumes; check the split settings")
            counts = data.counts()
            for arm in arms:
                started = time.monotonic()
                saved = "" if run_dir is None else str(Path(run_dir) / f"{arm}.ckpt")
                L.seed_everything(seed, verbose=False)
                model = SegmentationModule(
                    encoder_ckpt=str(encoder_ckpt),
                    mode=arm,
                    num_classes=data.num_classes,
                    label_names=data.label_names,
                    input_key=data.input_key,
                    roi_size=data.roi_size,
                    lr=lr,
                    encoder_lr_scale=encoder_lr_scale,
                    sw_batch_size=sw_batch_size,
                )
                trainer = L.Trainer(
                    max_epochs=n_epochs,
                    accelerator="auto",
                    logger=False,
                    enable_checkpointing=False,
                    enable_progress_bar=False,
                    enable_model_summary=False,
                    use_distributed_sampler=False,
                    num_sanity_val_steps=0,
                    limit_val_batches=0,
                    limit_train_batches=limit_train_batches,
                )
                trainer.fit(model, datamodule=data)
                if saved:
                    trainer.save_checkpoint(saved, weights_only=True)  # model weights, no optimizer state
                trainer.test(model, datamodule=data, verbose=False)
                scores = model.results.get("test")
                if scores is None:
                    raise ConfigError("the test split produced no predictions")
                result = SegmentationResult(
                    fraction=fraction,
                    seed=seed,
                    arm=arm,
                    dice=scores["dice"],
                    train_patients=counts["train"]["patients"],
                    train_samples=counts["train"]["samples"],
                    test_patients=counts["test"]["patients"],
                    test_samples=counts["test"]["samples"],
                    epochs=n_epochs,
                    seconds=time.monotonic() - started,
                    checkpoint=saved,
                    dice_per_class={k: v for k, v in scores.items() if k.startswith("dice_")},
                )
                row = asdict(result)
                rows.append(
                    {**{k: v for k, v in row.items() if k != "dice_per_class"}, **row["dice_per_class"]}
                )
                if progress is not None:
                    progress(
                        f"{fraction:>6.0%} labels, seed {seed}, {arm:<14} Dice {result.dice:.3f} "
                        f"({result.train_patients} patients, {result.seconds:.0f} s)"
                    )
    return pd.DataFrame(rows)
