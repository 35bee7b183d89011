"""The pretraining LightningModule: encoder + objective, an online linear probe, and diagnostics.

:class:`PretrainModule` encodes all views of a batch in one encoder call, hands the embeddings (and,
when the objective asks, time-resolved features) to the objective, and adds, when labels exist, an
online linear probe trained on *detached* embeddings (it never shapes the encoder; it tells how linearly
separable the classes are while pretraining runs). Alignment and uniformity (Wang & Isola, 2020) of the
encoder's normalised embeddings are logged at every step.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from medcl.checkpoints import run_record
from medcl.configurable import module_spec
from medcl.data import contract
from medcl.errors import ConfigError
from medcl.losses.alignment import alignment, uniformity
from medcl.objectives.base import BatchObjective, EncodedViews, Objective
from medcl.training.schedule import warmup_cosine

__all__ = ["PretrainModule"]


class PretrainModule(L.LightningModule):
    """Contrastive pretraining of an encoder.

    Args:
        encoder: a module with ``embedding_dim``; ``forward(x) → (B, D)``; for objectives that need
            features also ``forward_features(x) → (B, T, D)`` and ``pool(features) → (B, D)``.
        objective: the pretraining objective (e.g. :class:`medcl.objectives.SimCLR`).
        lr: AdamW learning rate of encoder and objective heads.
        weight_decay: AdamW weight decay.
        warmup_epochs: linear warm-up length; then cosine decay to 0 at ``max_epochs``.
        probe_num_classes: classes of the online linear probe (None: no probe).
        probe_task: ``"multilabel"`` or ``"multiclass"``.
        probe_lr: learning rate of the probe.
        compile_encoder: run the encoder through ``torch.compile`` (done in :meth:`configure_model`, so
            only under a Trainer; the encoder is compiled in place and the checkpoint keys do not change).
        compile_backend: the ``torch.compile`` backend (``"inductor"`` needs a C++ compiler on CPU;
            ``"aot_eager"`` and ``"eager"`` trace without generating code).
    """

    def __init__(
        self,
        encoder: nn.Module,
        objective: Objective,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: int = 1,
        probe_num_classes: int | None = None,
        probe_task: str | None = None,
        probe_lr: float = 1e-2,
        compile_encoder: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "objective"])
        embedding_dim = getattr(encoder, "embedding_dim", None)
        if not isinstance(embedding_dim, int):
            raise ConfigError(f"{type(encoder).__name__} has no integer attribute embedding_dim")
        if (
            objective.needs_features
            and not isinstance(objective, BatchObjective)
            and not hasattr(encoder, "forward_features")
        ):
            raise ConfigError(
                f"{type(objective).__name__} needs time-resolved features but {type(encoder).__name__} has "
                "no forward_features()"
            )
        if probe_num_classes is not None and probe_task not in ("multilabel", "multiclass"):
            raise ConfigError(f"probe_task must be 'multilabel' or 'multiclass', got {probe_task!r}")
        self.encoder = encoder
        self.objective = objective
        objective.bind(embedding_dim)
        # BatchNorm without affine parameters standardises the embeddings for the linear layer (as in MAE's
        # linear probing), so one learning rate works whatever the encoder's output scale.
        self.probe = (
            nn.Sequential(
                nn.BatchNorm1d(embedding_dim, affine=False), nn.Linear(embedding_dim, probe_num_classes)
            )
            if probe_num_classes
            else None
        )
        self.probe_auroc: torchmetrics.Metric | None = None
        if probe_num_classes:
            self.probe_auroc = (
                torchmetrics.classification.MultilabelAUROC(num_labels=probe_num_classes, average="macro")
                if probe_task == "multilabel"
                else torchmetrics.classification.MulticlassAUROC(
                    num_classes=probe_num_classes, average="macro"
                )
            )
        if compile_encoder:
            import torch._dynamo

            backends = torch._dynamo.list_backends(exclude_tags=())
            if compile_backend not in backends:
                raise ConfigError(f"compile_backend must be one of {backends}, got {compile_backend!r}")
        # Set by configure_model() when compile_encoder is on (a function, not a submodule).
        self._compiled = False
        self._compiled_features: Any = None

    # ----------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        adapter = getattr(datamodule, "adapter", None)
        expected = getattr(adapter, "num_channels", None)
        actual = getattr(self.encoder, "in_channels", None)
        if expected is not None and actual is not None and expected != actual:
            raise ConfigError(
                f"the encoder takes {actual} input channels but the data has {expected}; set the encoder's "
                f"in_channels to {expected} (or select {actual} channels in the adapter)"
            )
        if isinstance(self.objective, BatchObjective) and datamodule is not None and adapter is not None:
            # An objective may need the training data first (e.g. to fit a tokenizer on its reports).
            setup_data = getattr(self.objective, "setup_data", None)
            if setup_data is not None:
                setup_data(datamodule)
            # The objective makes its own inputs from every sample (crops, mirror images): tell the data.
            datamodule.item_transform = self.objective.item_transform(adapter.input_key)
            # ... and, where they differ, for validation and test samples (e.g. without augmentation)
            datamodule.eval_item_transform = self.objective.eval_item_transform(adapter.input_key)

    def configure_model(self) -> None:
        """Compile the encoder when ``compile_encoder`` is on (once; the Trainer calls this per stage).

        ``nn.Module.compile`` works in place, so ``state_dict`` keys keep their names (no ``_orig_mod.``)
        and every ``encoder(x)`` call, the objectives' included, runs the compiled graph;
        ``forward_features`` (called directly for objectives that need features) is compiled separately.
        """
        if not self.hparams.get("compile_encoder") or self._compiled:
            return
        backend = self.hparams.get("compile_backend", "inductor")
        self.encoder.compile(backend=backend)
        if self.objective.needs_features and hasattr(self.encoder, "forward_features"):
            self._compiled_features = torch.compile(self.encoder.forward_features, backend=backend)
        self._compiled = True

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Pooled embeddings ``(N, D)`` and, if the objective needs them, features ``(N, T, D)``."""
        if self.objective.needs_features:
            forward_features = self._compiled_features or self.encoder.forward_features
            features = forward_features(x)
            return self.encoder.pool(features), features
        return self.encoder(x), None

    def forward(self, x: Tensor) -> Tensor:
        """Pooled embeddings of a batch of inputs: ``(B, C, ...) → (B, D)``."""
        return self.encode(x)[0]

    # ----------------------------------------------------------------------------------------------
    def _step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        # Samples skipped with on_error="skip" are logged, counted and limited by the data module
        # (ManifestDataModule.max_skip_fraction); a batch in which every sample failed has no inputs: the
        # step returns None, so there is no backward pass and the weights stay as they were.
        views = batch.get(contract.VIEWS)
        n_loaded = 0 if views is None else int(views.shape[0])
        if isinstance(self.objective, BatchObjective):
            n_loaded = len(batch.get(contract.INDEX, []))
        if isinstance(self.objective, BatchObjective):
            return self._batch_objective_step(batch, stage, n_loaded)
        if views is None:
            return None
        n_views, batch_size = views.shape[1], views.shape[0]
        x = views.transpose(0, 1).reshape(n_views * batch_size, *views.shape[2:])
        pooled, features = self.encode(x)
        pooled = pooled.reshape(n_views, batch_size, -1)
        if features is not None:
            features = features.reshape(n_views, batch_size, *features.shape[1:])
        terms = self.objective(EncodedViews(pooled, features, batch[contract.PATIENT], batch[contract.TRIAL]))
        loss = terms["loss"]
        logged = {f"{stage}/{name}": value.detach() for name, value in terms.items() if name != "loss"}
        with torch.no_grad():
            z = F.normalize(pooled.detach().float(), dim=-1)
            logged[f"{stage}/alignment"] = alignment(z[0], z[1], normalize=False)
            if batch_size > 1:  # uniformity needs pairs
                logged[f"{stage}/uniformity"] = uniformity(z[0], normalize=False)
        if self.probe is not None and contract.LABEL in batch:
            probe_loss = self._probe_step(pooled[0].detach(), batch, stage)
            if probe_loss is not None:
                logged[f"{stage}/probe_loss"] = probe_loss.detach()
                loss = loss + probe_loss
        on_step = stage == "train"
        self.log_dict(
            logged,
            on_step=on_step,
            on_epoch=True,
            prog_bar=False,
            batch_size=batch_size,
            sync_dist=not on_step,
        )
        self.log(
            f"{stage}/loss",
            terms["loss"].detach(),
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
            sync_dist=not on_step,
        )
        return loss

    def _batch_objective_step(self, batch: dict[str, Any], stage: str, n_loaded: int) -> Tensor | None:
        """A step of an objective that makes its own inputs (see :class:`BatchObjective`)."""
        if n_loaded == 0:
            return None
        terms = self.objective.forward_batch(self.encoder, batch)
        on_step = stage == "train"
        logged = {f"{stage}/{name}": value.detach() for name, value in terms.items() if name != "loss"}
        self.log_dict(
            logged, on_step=on_step, on_epoch=True, prog_bar=False, batch_size=n_loaded, sync_dist=not on_step
        )
        self.log(
            f"{stage}/loss",
            terms["loss"].detach(),
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            batch_size=n_loaded,
            sync_dist=not on_step,
        )
        return terms["loss"]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Momentum (EMA) teachers follow the encoder after every real optimiser step.
        hook = getattr(self.objective, "on_after_optimizer_step", None)
        if hook is not None:
            hook(self.encoder)

    def _probe_step(self, embeddings: Tensor, batch: dict[str, Any], stage: str) -> Tensor | None:
        """Probe loss on the labelled rows of ``embeddings`` ``(B, D)`` (detached by the caller)."""
        if self.probe is None or self.probe_auroc is None:
            return None
        mask = batch[contract.HAS_LABEL].bool()
        if int(mask.sum()) < (2 if self.training else 1):  # the probe's BatchNorm needs 2 rows to train
            return None
        logits = self.probe(embeddings[mask].float())
        target = batch[contract.LABEL][mask]
        if self.hparams["probe_task"] == "multilabel":
            loss = F.binary_cross_entropy_with_logits(logits, target.float())
            scores, target_int = torch.sigmoid(logits), target.long()
        else:
            loss = F.cross_entropy(logits, target.long())
            scores, target_int = torch.softmax(logits, dim=-1), target.long()
        if stage != "train":
            self.probe_auroc.update(scores.detach(), target_int)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_probe_metric(self, stage: str) -> None:
        if self.probe_auroc is not None and self.probe_auroc.update_count > 0:
            self.log(f"{stage}/probe_auroc", self.probe_auroc.compute(), prog_bar=True, sync_dist=False)
            self.probe_auroc.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_probe_metric("val")

    def on_test_epoch_end(self) -> None:
        self._log_probe_metric("test")

    # ----------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        probe_params = list(self.probe.parameters()) if self.probe is not None else []
        probe_ids = {id(p) for p in probe_params}
        main_params = [p for p in self.parameters() if id(p) not in probe_ids and p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": main_params, "lr": self.hparams["lr"]}]
        if probe_params:
            groups.append({"params": probe_params, "lr": self.hparams["probe_lr"], "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(
            groups, lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
        factor = warmup_cosine(self.trainer, self.hparams["warmup_epochs"])

        # The probe learns at a constant rate: only the first group follows warm-up and cosine decay.
        lambdas = [factor] + [lambda _step: 1.0] * (len(groups) - 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the duplicate ``_encode_fn.*`` copy of the encoder weights that older checkpoints hold
        (the eager encoder used to be registered twice), so resuming from them still loads strictly."""
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("_encode_fn.")]:
            del state[key]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add what downstream code needs to rebuild the encoder without pickled objects."""
        checkpoint["medcl"] = {**run_record(self, self.encoder), "objective": module_spec(self.objective)}

    def configure_callbacks(self) -> list[L.Callback]:
        """Exact resume: per-batch seeding, atomic checkpoints (:mod:`medcl.training.checkpointing`)."""
        from medcl.training.checkpointing import ExactResume

        return [ExactResume()]
