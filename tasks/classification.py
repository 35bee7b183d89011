"""Classification heads on (pre)trained encoders: linear probe, fine-tuning, or training from scratch.

:class:`ClassificationModule` is one LightningModule for the three arms of a label-efficiency study,
with the same encoder architecture in all of them:

- ``mode="linear"``: the pretrained encoder is frozen (no gradients, BatchNorm statistics fixed) and a
  linear head is trained on its embeddings (the torch linear probe; :mod:`tasks.probe` has the
  scikit-learn one);
- ``mode="finetune"``: pretrained encoder + MLP head, the encoder trained at ``encoder_lr_scale`` × the
  head's learning rate;
- ``mode="scratch"``: the same encoder architecture with random weights, trained end to end at the
  full learning rate (the architecture can come from a pretraining checkpoint, without its weights).

Targets: multi-class (two-class problems included: cross-entropy over the classes) or multi-label
(binary cross-entropy per class). Validation and test report AUROC, AUPRC, macro-F1 and accuracy
(:func:`tasks.metrics.classification_metrics`) over the whole evaluation set.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl import dist
from medcl.checkpoints import encoder_from_checkpoint, load_checkpoint, run_record
from medcl.configurable import instantiate_spec
from medcl.data import contract
from medcl.errors import ConfigError
from medcl.training.schedule import warmup_cosine
from tasks.metrics import classification_metrics

__all__ = ["MODES", "ClassificationModule", "build_head"]

MODES = ("linear", "finetune", "scratch")


def build_head(
    kind: str, in_dim: int, num_classes: int, hidden_dim: int = 128, dropout: float = 0.1
) -> nn.Module:
    """``"linear"``: ``Linear(D, K)``; ``"mlp"``: ``Linear(D, H) → ReLU → Dropout → Linear(H, K)``."""
    if kind == "linear":
        return nn.Linear(in_dim, num_classes)
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )
    raise ConfigError(f"head must be 'linear' or 'mlp', got {kind!r}")


def _encoder_for(
    mode: str, encoder: nn.Module | None, encoder_ckpt: str | None
) -> tuple[nn.Module, dict | None]:
    """The encoder of a mode, and the pretraining input spec it expects (None when not pretrained)."""
    checkpoint = load_checkpoint(encoder_ckpt) if encoder_ckpt is not None else None
    meta = (checkpoint or {}).get("medcl") or {}
    if mode in ("linear", "finetune"):
        if checkpoint is None:
            raise ConfigError(
                f"mode={mode!r} needs a pretrained encoder: set encoder_ckpt "
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


class ClassificationModule(L.LightningModule):
    """A classification head on an encoder (see the module docstring).

    Args:
        encoder: the encoder (``forward(x) → (B, D)``, attribute ``embedding_dim``); optional when
            ``encoder_ckpt`` names a medcl checkpoint that records its architecture.
        encoder_ckpt: a pretraining checkpoint (``last.ckpt``) whose encoder weights to start from
            (``linear``/``finetune``), or whose architecture to use (``scratch``).
        mode: ``"linear"``, ``"finetune"`` or ``"scratch"``.
        num_classes: number of classes ``K`` (linked from the data module by ``medcl finetune``).
        task: ``"multiclass"`` or ``"multilabel"`` (linked from the data module).
        class_names: names of the ``K`` classes (recorded in checkpoints and exports).
        input_key: the batch key of the input tensor (``"signal"``, ``"image"``, ...); None: the data
            module's ``input_key``, taken when the Trainer sets the module up (the CLI links it).
        head: ``"linear"`` or ``"mlp"``; default linear for ``mode="linear"``, MLP otherwise.
        hidden_dim: MLP hidden width.
        dropout: MLP dropout.
        lr: AdamW learning rate of the head (and of the encoder in ``scratch`` mode).
        encoder_lr_scale: the encoder's learning rate relative to ``lr`` in ``finetune`` mode.
        weight_decay: AdamW weight decay.
        warmup_epochs: linear warm-up, then cosine decay to 0 at ``max_epochs``.
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        encoder_ckpt: str | None = None,
        mode: str = "finetune",
        num_classes: int = 2,
        task: str = "multiclass",
        class_names: list[str] | None = None,
        input_key: str | None = None,
        head: str | None = None,
        hidden_dim: int = 128,
        dropout: float = 0.1,
        lr: float = 1e-3,
        encoder_lr_scale: float = 0.1,
        weight_decay: float = 1e-4,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if task not in ("multiclass", "multilabel"):
            raise ConfigError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
        if num_classes < 2 and task == "multiclass":
            raise ConfigError(f"a multiclass task needs at least 2 classes, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"{len(class_names)} class names for {num_classes} classes")
        self.save_hyperparameters(ignore=["encoder"])
        self.encoder, self._pretrained_input = _encoder_for(mode, encoder, encoder_ckpt)
        embedding_dim = getattr(self.encoder, "embedding_dim", None)
        if not isinstance(embedding_dim, int):
            raise ConfigError(f"{type(self.encoder).__name__} has no integer attribute embedding_dim")
        self.head = build_head(
            head or ("linear" if mode == "linear" else "mlp"), embedding_dim, num_classes, hidden_dim, dropout
        )
        if mode == "linear":
            self.encoder.requires_grad_(False)
        self.encoder.train(mode != "linear")  # load_encoder returns it in eval mode
        self._pretrained_input = (
            (load_checkpoint(encoder_ckpt).get("medcl") or {}).get("input")
            if encoder_ckpt and mode != "scratch"
            else None
        )
        self._outputs: dict[str, list[tuple[Tensor, Tensor]]] = {"val": [], "test": []}
        self.results: dict[str, dict[str, float]] = {}

    def setup(self, stage: str) -> None:
        """Take the data module's input key (when not given), and refuse data that differs from what
        the encoder was pretrained on (channels, rate)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        data_key = getattr(datamodule, "input_key", None)
        if data_key is not None:
            if self.hparams["input_key"] is None:
                self.hparams["input_key"] = data_key
            elif self.hparams["input_key"] != data_key:
                raise ConfigError(
                    f"input_key is {self.hparams['input_key']!r} but the data module's samples hold "
                    f"{data_key!r}; leave input_key unset to take the data module's"
                )
        adapter = getattr(datamodule, "adapter", None)
        if adapter is None or not self._pretrained_input:
            return
        now, before = adapter.input_spec(), self._pretrained_input
        for key in ("channels", "fs"):
            if key in before and key in now and before[key] != now[key]:
                raise ConfigError(
                    f"the encoder was pretrained on {key}={before[key]} but the data gives {key}={now[key]}; "
                    "use the pretraining run's data settings"
                )

    def train(self, mode: bool = True) -> ClassificationModule:
        super().train(mode)
        if self.hparams["mode"] == "linear":
            self.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics
        return self

    # ----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Logits: ``(B, C, ...) → (B, K)``."""
        return self.head(self.encoder(x))

    def predict_proba(self, x: Tensor) -> Tensor:
        """Class probabilities ``(B, K)``: softmax (multi-class) or per-class sigmoid (multi-label)."""
        logits = self(x)
        return (
            torch.sigmoid(logits) if self.hparams["task"] == "multilabel" else torch.softmax(logits, dim=-1)
        )

    def _inputs(self, batch: dict[str, Any]) -> Tensor:
        if contract.VIEWS in batch:
            return batch[contract.VIEWS][:, 0]
        key = self.hparams["input_key"]
        if key not in batch:
            raise ConfigError(
                f"the batch has no input {key!r} (it holds {sorted(batch)}); set input_key to the data "
                "module's input_key"
            )
        return batch[key]

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.hparams["task"] == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, target.float())
        return F.cross_entropy(logits, target.long())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if contract.LABEL not in batch:  # every sample of the batch failed to load (on_error="skip")
            return None
        logits = self(self._inputs(batch))
        loss = self._loss(logits, batch[contract.LABEL])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        if contract.LABEL not in batch:
            return
        logits = self(self._inputs(batch))
        loss = self._loss(logits, batch[contract.LABEL])
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=logits.shape[0])
        probabilities = (
            torch.sigmoid(logits) if self.hparams["task"] == "multilabel" else torch.softmax(logits, -1)
        )
        self._outputs[stage].append(
            (probabilities.detach().float().cpu(), batch[contract.LABEL].detach().cpu())
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _epoch_metrics(self, stage: str) -> None:
        outputs = self._outputs[stage]
        self._outputs[stage] = []
        if not outputs or self.trainer.sanity_checking:
            return
        # Every rank scores the whole evaluation set (ranks may hold different numbers of samples).
        probabilities = dist.gather_no_grad(torch.cat([p for p, _ in outputs]))
        targets = dist.gather_no_grad(torch.cat([t for _, t in outputs]))
        scores = classification_metrics(probabilities.numpy(), targets.numpy(), self.hparams["task"])
        self.results[stage] = scores
        for name in ("auroc", "auprc", "f1_macro", "accuracy"):
            if not math.isnan(scores[name]):
                self.log(f"{stage}/{name}", scores[name], prog_bar=name == "auroc")

    def on_validation_epoch_end(self) -> None:
        self._epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_metrics("test")
        # Only into a logger's run folder: without a logger, log_dir would be the current directory.
        if self.trainer.is_global_zero and self.trainer.logger is not None and "test" in self.results:
            path = Path(self.trainer.log_dir) / "test_metrics.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.results["test"], indent=2) + "\n")

    # ----------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        lr = self.hparams["lr"]
        groups: list[dict[str, Any]] = [{"params": list(self.head.parameters()), "lr": lr}]
        if self.hparams["mode"] != "linear":
            scale = self.hparams["encoder_lr_scale"] if self.hparams["mode"] == "finetune" else 1.0
            groups.append({"params": list(self.encoder.parameters()), "lr": lr * scale})
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=self.hparams["weight_decay"])
        factor = warmup_cosine(self.trainer, self.hparams["warmup_epochs"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record what rebuilding and exporting the model needs, as plain data."""
        checkpoint["medcl"] = {
            **run_record(self, self.encoder),
            "kind": "classification",
            "task": self.hparams["task"],
            "class_names": self.hparams["class_names"],
        }
