"""Volume contrast: predict how random crops overlap a volume's base crops (VoCo, Wu et al., CVPR 2024)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from medcl.configurable import Configurable
from medcl.errors import ConfigError
from medcl.heads import ProjectionHead
from medcl.losses.voco import voco_logits, voco_prediction_loss_parts, voco_regularization_loss
from medcl.objectives.base import BatchObjective
from medcl.objectives.voco_geometry import BASES_KEY, CROPS_KEY, FIT_MODES, OVERLAP_KEY, VoCoCropsd

__all__ = ["VoCo"]

_TEACHER_PREFIXES = ("teacher_encoder.", "teacher_head.")


def _check_weight(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be finite and >= 0, got {value!r}")
    return float(value)


class VoCo(Configurable, BatchObjective):
    """VoCo's overlap prediction and base-crop regularisation on an encoder's pooled embedding.

    Per sample, :meth:`item_transform` (:class:`~medcl.objectives.voco_geometry.VoCoCropsd`) brings the
    volume to ``(n·r, n·r, r)``, cuts the ``n²`` base crops and ``k`` random crops of side ``r`` and
    computes the overlap labels ``y`` ``(k, n²)`` (geometry and how crops are drawn: module docstring of
    :mod:`medcl.objectives.voco_geometry`). :meth:`forward_batch` embeds every crop with
    ``head(encoder(crop))`` (:class:`~medcl.heads.ProjectionHead` on the pooled embedding) and returns

    * ``voco_pred`` = :func:`~medcl.losses.voco_prediction_loss` of the logits and ``y``, also split
      into its parts ``voco_pred_pos`` and ``voco_pred_neg`` (detached, for logging);
    * ``voco_reg`` = :func:`~medcl.losses.voco_regularization_loss` of the student's base embeddings;
    * ``loss = prediction_weight · voco_pred + regularization_weight · voco_reg``. A term whose weight is
      0 is not computed, has no key and contributes nothing (with ``prediction_weight = 0`` the random
      crops are not even encoded, and no teacher is made).

    The student (the encoder being trained, and ``head``) encodes the base crops and the random crops of
    the whole batch in ONE call, ``(B·(n² + k), C, r, r, r)``.

    **Logits.** Without a teacher, ``logits = ReLU(cos(z_crop, z_base))`` on student embeddings,
    gradients through both. With ``ema_teacher=True`` (default, as the reference repository, which
    adds the teacher because the plain version converged poorly), a momentum copy of encoder + head
    (no gradients) also embeds the crops, in one call under ``torch.no_grad``, and

    * ``symmetric_assignment=True`` (default, the reference's ``VoCoHead.forward``):
      ``logits = ½ [ReLU(cos(student crop, teacher base)) + ReLU(cos(teacher crop, student base))]``;
      the teacher encodes bases and crops;
    * ``symmetric_assignment=False``: ``logits = ReLU(cos(student crop, teacher base))``; the teacher
      encodes only the bases (targets from the teacher, predictions from the student).

    The regulariser always uses the student's base embeddings (as the reference).

    **The teacher.** It is made lazily, on the first :meth:`forward_batch`, as a deep copy of the
    encoder and of ``head`` with ``requires_grad = False`` (the reference initialises its teacher
    independently at random; a copy starts it where the student is). It is registered as the
    submodules ``teacher_encoder`` and ``teacher_head``, so it is part of :meth:`state_dict` and of
    checkpoints; loading a state dict that holds a teacher into a VoCo that has none yet keeps those
    tensors and puts them into the teacher when it is made (and :meth:`state_dict` still returns them
    meanwhile). The teacher follows ``.train()``/``.eval()`` of the objective.
    :meth:`update_teacher` (also called :meth:`on_after_optimizer_step`, the hook that
    :class:`~medcl.training.PretrainModule` calls after every optimiser step) sets, for every parameter,
    ``teacher ← m · teacher + (1 − m) · student`` with ``m = teacher_momentum`` (0.9, as the reference),
    and copies the student's buffers (e.g. BatchNorm statistics). The reference updates the teacher at
    the start of each forward pass, after the student has been updated by the previous step: the same
    sequence of teachers. The teacher is made outside inference mode even when the first call comes
    from a validation loop run under ``torch.inference_mode`` (its tensors must be updatable in place).
    It is never given to the optimiser (it does not exist yet when the optimiser is built, and it has
    no trainable parameter).

    **Reference settings.** The reference (``Luffy03/VoCo``: ``voco_train.py``, ``models/voco_head.py``,
    ``utils/data_utils.py``) returns ``pos, neg, b_loss`` and trains ``pos + neg + b_loss``, i.e.
    prediction and regularisation weights 1 and 1 (our defaults); its code uses a ``4 × 4`` grid of
    ``96³`` crops on a ``384 × 384 × 96`` resize, each crop resized to ``64³``, 2 random crops per
    volume (``sw_batch_size``), with random flips / 90° rotations / intensity shifts of every crop (not
    done here), and a 3-layer MLP head (hidden and output 2048, BatchNorm without affine parameters or
    running statistics) on the concatenated global averages of five SwinUNETR scales. Our head is the
    2-layer :class:`~medcl.heads.ProjectionHead`; the CPU defaults (``n = 2``, ``r = 32``, ``k = 4``,
    128-d projection) are small; VoCo v2 uses ``n = 3``, ``r = 64``.

    Args:
        n_bases_per_side: ``n`` (>= 2); ``n²`` base crops per volume.
        crop_size: ``r`` (>= 2), the side of every crop; must suit the encoder (e.g. a multiple of 16
            and >= 32 for :class:`~modalities.volumes.encoders.UNetBackbone`).
        n_random_crops: ``k`` (>= 1) random crops per volume.
        projection_dim: output size of the projection head.
        hidden_dim: hidden width of the projection head.
        prediction_weight: weight of ``voco_pred`` (>= 0).
        regularization_weight: weight of ``voco_reg`` (>= 0).
        ema_teacher: use the momentum teacher.
        teacher_momentum: ``m`` in ``[0, 1)``.
        symmetric_assignment: with the teacher, average the two directions (see above).
        volume_fit: how :class:`~medcl.objectives.voco_geometry.VoCoCropsd` brings a volume to the
            region: ``"random_crop"`` (pad, then a random window), ``"center_crop"`` or ``"resize"``.
        pad_value: padding value of the crop fits.
        log_eps: lower clamp inside the prediction loss's log.

    Raises:
        ConfigError: invalid sizes, weights (negative, not finite, or both 0), momentum, or fit.
    """

    def __init__(
        self,
        n_bases_per_side: int = 2,
        crop_size: int = 32,
        n_random_crops: int = 4,
        projection_dim: int = 128,
        hidden_dim: int = 512,
        prediction_weight: float = 1.0,
        regularization_weight: float = 1.0,
        ema_teacher: bool = True,
        teacher_momentum: float = 0.9,
        symmetric_assignment: bool = True,
        volume_fit: str = "random_crop",
        pad_value: float = 0.0,
        log_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("n_bases_per_side", n_bases_per_side, 2),
            ("crop_size", crop_size, 2),
            ("n_random_crops", n_random_crops, 1),
            ("projection_dim", projection_dim, 1),
            ("hidden_dim", hidden_dim, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
        self.prediction_weight = _check_weight(prediction_weight, "prediction_weight")
        self.regularization_weight = _check_weight(regularization_weight, "regularization_weight")
        if self.prediction_weight == 0 and self.regularization_weight == 0:
            raise ConfigError(
                "VoCo: prediction_weight and regularization_weight are both 0; nothing to train"
            )
        if isinstance(teacher_momentum, bool) or not isinstance(teacher_momentum, (int, float)):
            raise ConfigError(f"teacher_momentum must be a number, got {teacher_momentum!r}")
        if not 0.0 <= teacher_momentum < 1.0:
            raise ConfigError(f"teacher_momentum must be in [0, 1), got {teacher_momentum!r}")
        if volume_fit not in FIT_MODES:
            raise ConfigError(f"volume_fit must be one of {FIT_MODES}, got {volume_fit!r}")
        if isinstance(log_eps, bool) or not isinstance(log_eps, (int, float)) or not 0 < log_eps < 1:
            raise ConfigError(f"log_eps must be a number in (0, 1), got {log_eps!r}")
        self.n_bases_per_side = n_bases_per_side
        self.crop_size = crop_size
        self.n_random_crops = n_random_crops
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.ema_teacher = bool(ema_teacher)
        self.teacher_momentum = float(teacher_momentum)
        self.symmetric_assignment = bool(symmetric_assignment)
        self.volume_fit = volume_fit
        self.pad_value = float(pad_value)
        self.log_eps = float(log_eps)
        self.head: ProjectionHead | None = None
        self.teacher_encoder: nn.Module | None = None
        self.teacher_head: nn.Module | None = None
        #: teacher tensors loaded before the teacher exists (keys relative to this module)
        self._pending_teacher: dict[str, Tensor] | None = None
        self.register_load_state_dict_pre_hook(_keep_teacher_state)
        self.register_state_dict_post_hook(_add_pending_teacher_state)

    @property
    def n_bases(self) -> int:
        """``n²``."""
        return self.n_bases_per_side**2

    @property
    def uses_teacher(self) -> bool:
        """A teacher is used (``ema_teacher`` and a prediction term to make targets for)."""
        return self.ema_teacher and self.prediction_weight > 0

    # ----------------------------------------------------------------------------------------------
    def bind(self, embedding_dim: int) -> None:
        """Create the projection head ``(N, embedding_dim) → (N, projection_dim)``."""
        self.head = ProjectionHead(embedding_dim, self.hidden_dim, self.projection_dim)

    def project(self, pooled: Tensor) -> Tensor:
        """``head(pooled)``: ``(N, D) → (N, projection_dim)``."""
        if self.head is None:
            raise ConfigError("VoCo.bind(embedding_dim) must be called before use")
        return self.head(pooled)

    def item_transform(self, input_key: str) -> VoCoCropsd:
        """:class:`~medcl.objectives.voco_geometry.VoCoCropsd` reading ``input_key``, with these settings."""
        return VoCoCropsd(
            keys=input_key,
            n_bases_per_side=self.n_bases_per_side,
            crop_size=self.crop_size,
            n_random_crops=self.n_random_crops,
            fit=self.volume_fit,
            pad_value=self.pad_value,
        )

    # ----------------------------------------------------------------------------------------------
    def _embed(self, encoder: nn.Module, head: nn.Module, x: Tensor) -> Tensor:
        pooled = encoder(x)
        if pooled.dim() != 2 or pooled.shape[0] != x.shape[0]:
            raise ConfigError(
                f"{type(encoder).__name__}.forward must return (N, embedding_dim) for N = {x.shape[0]} "
                f"crops, got {tuple(pooled.shape)}"
            )
        return head(pooled)

    def _check_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        missing = [key for key in (BASES_KEY, CROPS_KEY, OVERLAP_KEY) if key not in batch]
        if missing:
            raise ConfigError(
                f"VoCo batch lacks {missing}: the dataset must apply VoCo.item_transform to every sample"
            )
        bases, crops, labels = batch[BASES_KEY], batch[CROPS_KEY], batch[OVERLAP_KEY]
        m, k, r = self.n_bases, self.n_random_crops, self.crop_size
        if bases.dim() != 6 or tuple(bases.shape[1:2]) != (m,) or tuple(bases.shape[3:]) != (r, r, r):
            raise ConfigError(
                f"{BASES_KEY} must have shape (B, {m}, C, {r}, {r}, {r}), got {tuple(bases.shape)}"
            )
        batch_size, channels = bases.shape[0], bases.shape[2]
        if tuple(crops.shape) != (batch_size, k, channels, r, r, r):
            raise ConfigError(
                f"{CROPS_KEY} must have shape ({batch_size}, {k}, {channels}, {r}, {r}, {r}), "
                f"got {tuple(crops.shape)}"
            )
        if tuple(labels.shape) != (batch_size, k, m):
            raise ConfigError(
                f"{OVERLAP_KEY} must have shape ({batch_size}, {k}, {m}), got {tuple(labels.shape)}"
            )
        return bases, crops, labels

    def forward_batch(self, encoder: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Named terms of one collated batch.

        Args:
            encoder: ``forward(x: (N, C, r, r, r)) -> (N, embedding_dim)``.
            batch: ``voco_bases`` ``(B, n², C, r, r, r)``, ``voco_crops`` ``(B, k, C, r, r, r)``,
                ``voco_overlap`` ``(B, k, n²)``.

        Returns:
            ``{"loss", "voco_pred", "voco_pred_pos", "voco_pred_neg", "voco_reg"}`` (scalars); the terms of
            a weight-0 loss are absent.
        """
        if self.head is None:
            raise ConfigError("VoCo.bind(embedding_dim) must be called before forward_batch")
        bases, crops, labels = self._check_batch(batch)
        batch_size, m, k = bases.shape[0], self.n_bases, self.n_random_crops
        volume = bases.shape[2:]
        predict = self.prediction_weight > 0
        inputs = [bases.reshape(batch_size * m, *volume)]
        if predict:
            inputs.append(crops.reshape(batch_size * k, *volume))
        if self.uses_teacher:
            self._ensure_teacher(encoder)  # before the student's forward: a copy of the pre-step encoder
        student = self._embed(encoder, self.head, torch.cat(inputs))
        student_bases = student[: batch_size * m].reshape(batch_size, m, -1)
        terms: dict[str, Tensor] = {}
        loss = student.new_zeros(())
        if predict:
            student_crops = student[batch_size * m :].reshape(batch_size, k, -1)
            logits = self._logits(student_bases, student_crops, inputs)
            pos, neg = voco_prediction_loss_parts(logits, labels, self.log_eps)
            terms["voco_pred"] = pos + neg
            terms["voco_pred_pos"] = pos.detach()
            terms["voco_pred_neg"] = neg.detach()
            loss = loss + self.prediction_weight * terms["voco_pred"]
        if self.regularization_weight > 0:
            terms["voco_reg"] = voco_regularization_loss(student_bases)
            loss = loss + self.regularization_weight * terms["voco_reg"]
        return {"loss": loss, **terms}

    def _logits(self, student_bases: Tensor, student_crops: Tensor, inputs: list[Tensor]) -> Tensor:
        """``(B, k, n²)`` logits, from the student alone or with the teacher (see the class docstring)."""
        if not self.uses_teacher:
            return voco_logits(student_crops, student_bases)
        teacher_encoder, teacher_head = self.teacher_encoder, self.teacher_head
        if teacher_encoder is None or teacher_head is None:
            raise RuntimeError("VoCo: the teacher was not made")  # _ensure_teacher runs first
        batch_size, m, k = student_bases.shape[0], self.n_bases, self.n_random_crops
        with torch.no_grad():
            x = torch.cat(inputs) if self.symmetric_assignment else inputs[0]
            teacher = self._embed(teacher_encoder, teacher_head, x).detach()
        teacher_bases = teacher[: batch_size * m].reshape(batch_size, m, -1)
        logits = voco_logits(student_crops, teacher_bases)
        if self.symmetric_assignment:
            teacher_crops = teacher[batch_size * m :].reshape(batch_size, k, -1)
            logits = 0.5 * (logits + voco_logits(teacher_crops, student_bases))
        return logits

    # --- the momentum teacher ----------------------------------------------------------------------
    def _ensure_teacher(self, encoder: nn.Module) -> None:
        """Make the teacher (a frozen copy of encoder and head) if it does not exist yet."""
        if self.teacher_encoder is not None and self.teacher_head is not None:
            return
        if self.head is None:
            raise ConfigError("VoCo.bind(embedding_dim) must be called before the teacher is made")
        # Under torch.inference_mode (a validation loop) copies would be inference tensors, which can never
        # be updated in place afterwards: make them as ordinary tensors.
        with torch.inference_mode(False), torch.no_grad():
            teacher_encoder = copy.deepcopy(encoder)
            teacher_head = copy.deepcopy(self.head)
            for module in (teacher_encoder, teacher_head):
                for parameter in module.parameters():
                    parameter.requires_grad_(False)
                    parameter.grad = None
            pending, self._pending_teacher = self._pending_teacher, None
            if pending is not None:
                for name, module in (("teacher_encoder", teacher_encoder), ("teacher_head", teacher_head)):
                    state = {
                        key[len(name) + 1 :]: value
                        for key, value in pending.items()
                        if key.startswith(name + ".")
                    }
                    try:
                        module.load_state_dict(state, strict=True)
                    except RuntimeError as error:
                        raise ConfigError(
                            f"the checkpoint's VoCo {name} does not fit the encoder "
                            f"{type(encoder).__name__}: {error}"
                        ) from error
        teacher_encoder.train(self.training)
        teacher_head.train(self.training)
        self.teacher_encoder = teacher_encoder
        self.teacher_head = teacher_head

    @staticmethod
    def _pairs(teacher: nn.Module, student: nn.Module, what: str) -> Iterator[tuple[Tensor, Tensor]]:
        getter = (
            (lambda mod: list(mod.parameters()))
            if what == "parameters"
            else (lambda mod: list(mod.buffers()))
        )
        ours, theirs = getter(teacher), getter(student)
        if len(ours) != len(theirs) or any(a.shape != b.shape for a, b in zip(ours, theirs, strict=False)):
            raise ConfigError(
                f"the VoCo teacher's {what} do not match {type(student).__name__}'s: was the encoder "
                "replaced after the teacher was made?"
            )
        return zip(ours, theirs, strict=True)

    def update_teacher(self, encoder: nn.Module) -> None:
        """EMA step: ``teacher ← m · teacher + (1 − m) · student`` for every parameter; buffers copied.

        A no-op before the teacher exists (no :meth:`forward_batch` yet) or without a teacher.
        """
        if self.teacher_encoder is None or self.teacher_head is None or self.head is None:
            return
        m = self.teacher_momentum
        with torch.no_grad():
            for teacher, student in ((self.teacher_encoder, encoder), (self.teacher_head, self.head)):
                for t, s in self._pairs(teacher, student, "parameters"):
                    t.mul_(m).add_(s.detach().to(t.dtype), alpha=1.0 - m)
                for t, s in self._pairs(teacher, student, "buffers"):
                    t.copy_(s)

    def on_after_optimizer_step(self, encoder: nn.Module) -> None:
        """:meth:`update_teacher`; ``PretrainModule`` calls it after every optimiser step."""
        self.update_teacher(encoder)


# --- checkpoints of a lazily made teacher (module-level functions: torch tags hooks with attributes,
# which bound methods do not take) ------------------------------------------------------------------


def _keep_teacher_state(module: VoCo, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: hold the teacher's tensors until the teacher is made."""
    if module.teacher_encoder is not None:
        return
    keys = [key for key in state_dict if key.startswith(tuple(prefix + p for p in _TEACHER_PREFIXES))]
    if keys:
        module._pending_teacher = {key[len(prefix) :]: state_dict.pop(key) for key in keys}


def _add_pending_teacher_state(
    module: VoCo, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """State-dict post-hook: a loaded but not yet made teacher is still saved."""
    if module.teacher_encoder is None and module._pending_teacher is not None:
        for key, value in module._pending_teacher.items():
            state_dict[prefix + key] = value
