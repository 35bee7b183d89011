"""Gaze-guided image-report alignment (CoGaze-style; DESIGN.md §1.3).

Per batch of images with their reports (and, where there is one, a gaze heatmap or an annotation-derived
spatial prior on the image's pixel grid):

1. **Embeddings.** The image embedding is ``image_head(encoder(x))`` (the encoder's pooled output,
   projected); the patch embeddings are ``patch_head(encoder.forward_patches(x))`` (every patch token
   projected; the encoder's ``patch_grid(image_size)`` gives their ``(gh, gw)`` grid). Every report is
   split into sentences (``max_sentences`` kept, each truncated to ``max_length`` tokens); each sentence
   is embedded by the text encoder and projected by ``text_head``; the **report embedding is the mean of
   its sentences' projected embeddings** (so the report and the gaze term share one sentence encoder
   pass). All three projections have ``projection_dim`` outputs.
2. **Image-report InfoNCE** (:func:`cross_modal_multi_positive_info_nce`): symmetric, every image-report
   pair of the *same patient* is a positive (an image's own report and the reports of the patient's other
   images, and vice versa), the other patients' reports / images are the negatives; candidates come from
   every rank (``gather_distributed``). Only samples with at least one sentence take part.
3. **Gaze term** (:func:`medcl.losses.gaze.gaze_alignment_loss_terms`): the heatmaps are pooled to the
   patch grid (:func:`~medcl.losses.gaze.pool_heatmaps_to_patches`); bidirectional Jensen-Shannon on the
   top-``topk_ratio`` patches, ``weight_text_to_image`` × text→image + ``weight_image_to_text`` ×
   image→text (CoGaze: 0.2 / 0.8). Samples without a heatmap (``has_gaze`` 0) skip it; a batch without
   any costs no patch pass. With *image-level* heatmaps (one per image, e.g. the ``covid_cxr``
   ``annotation:lung_mask`` / ``annotation:boxes`` priors) the image→text target of every patch is
   uniform over the report's sentences: that direction only asks each patch to be equally similar to
   all sentences (see :mod:`medcl.losses.gaze`), so configs for such priors set it to 0.
4. **Disease-aware BCE** (optional, ``disease_weight > 0``): a linear classifier on the image embedding,
   binary cross-entropy against the multi-hot ``label`` of the labelled samples (``has_label``).

``loss = image_report_weight · image_report + gaze_weight · gaze + disease_weight · disease``; every term
is logged (``image_report``, ``gaze``, ``gaze_text_to_image``, ``gaze_image_to_text``, ``disease``) with
the counts ``with_report`` and ``with_gaze``.

The objective never imports a modality: the text encoder is a ``{"class_path", "init_args"}`` spec (e.g.
``modalities.xray.text_encoder.TransformerTextEncoder``), the tokenizer a spec of a class with
``fit(texts, vocab_size)``, ``encode_batch(texts, max_length)``, ``to_dict()`` and the classmethod
``from_dict(data)`` (e.g. ``modalities.xray.text.BPETokenizer``), and the sentence splitter the dotted
path of a function ``str → list[str]`` (e.g. ``modalities.xray.text.split_sentences``); all must lie
under medcl's allowed packages (:data:`medcl.configurable.ALLOWED_PREFIXES`).

**A pretrained text model** (e.g. ``modalities.xray.text_encoder.HuggingFaceTextEncoder`` on a locally
installed CXR-BERT or BioClinicalBERT folder): with ``tokenizer=None`` the text encoder's own
``tokenizer`` attribute is used as it is (nothing is fitted, nothing is stored in the checkpoint: the
model folder holds it).

**Tokenizer.** :meth:`GazeAlignment.setup_data` (called by :class:`~medcl.training.PretrainModule` when the
data module is set up, before the item transform is made) fits the tokenizer on the sentences of the
*training split's* reports only (``adapter.load_sample`` of every training row, so the text is exactly
what training sees; validation and test reports never reach it), with the text encoder's ``vocab_size``
as the vocabulary limit. The fitted tokenizer is the objective's extra state (``get_extra_state``: its
``to_dict()``, plain data), so checkpoints hold it and loading one rebuilds it; a tokenizer that is
already fitted (loaded) is kept by :meth:`~GazeAlignment.setup_data`. (When a run resumes, ``setup`` fits
before the checkpoint is restored; the fit is deterministic on the same split, so the item transform's
tokenizer equals the restored one.)

**Item transform** (:class:`GazeAlignmentInputs`): makes every sample fixed-shape so batches collate:
the image, the sentences' token ids / attention masks ``(max_sentences, max_length)`` with the sentence
count, and the heatmap ``(H, W)`` (zeros and ``has_gaze = 0`` when the sample has none). Images are not
augmented (the pairing with the report is the signal).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Randomizable
from monai.utils import MAX_SEED
from torch import Tensor, nn

from medcl import dist
from medcl.configurable import ALLOWED_PREFIXES, Configurable, check_class_path, instantiate_spec
from medcl.data import contract
from medcl.errors import ConfigError, DataError
from medcl.losses.gaze import gaze_alignment_loss_terms, pool_heatmaps_to_patches
from medcl.objectives.base import BatchObjective

__all__ = ["GazeAlignment", "GazeAlignmentInputs", "cross_modal_multi_positive_info_nce", "resolve_function"]

#: keys the item transform adds (besides the image under the adapter's input key)
TEXT_IDS = "text_ids"
TEXT_MASK = "text_mask"
N_SENTENCES = "n_sentences"
HEATMAP = "heatmap"
HAS_GAZE = "has_gaze"


# ----------------------------------------------------------------------------------------------------
# pure pieces
# ----------------------------------------------------------------------------------------------------
def resolve_function(path: str) -> Callable[..., Any]:
    """The function named by the dotted ``path`` (under medcl's allowed packages)."""
    check_class_path(str(path), ALLOWED_PREFIXES)
    module_name, _, name = str(path).rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"cannot import {path!r}: {error}") from error
    if not callable(target):
        raise ConfigError(f"{path!r} is not callable")
    return target


def cross_modal_multi_positive_info_nce(
    image: Tensor,
    text: Tensor,
    ids: Tensor,
    temperature: float = 0.07,
    gather_distributed: bool = False,
) -> Tensor:
    """Symmetric image↔text InfoNCE in which every pair with the same id is a positive.

    With cosine similarities ``s_ij = ⟨image_i, text_j⟩`` (both L2-normalised) and ``P(i) = {j : ids_j =
    ids_i}`` (``i`` itself included: the sample's own pair),

        ``L_i2t = mean_i −1/|P(i)| Σ_{p ∈ P(i)} log softmax_j(s_ij / τ)[p]``

    and ``L_t2i`` the same with the roles swapped; the loss is ``½ (L_i2t + L_t2i)`` (SupCon's ``L_out``
    across modalities; with one sample per id it is CLIP's loss). Computed in float32.

    Args:
        image: ``(N, D)`` image embeddings.
        text: ``(N, D)`` text embeddings; row ``i`` belongs to the sample of ``image[i]``.
        ids: ``(N,)`` integer ids (patient codes).
        temperature: τ > 0.
        gather_distributed: local anchors against the candidates of every rank (see :mod:`medcl.dist`).

    Returns:
        Scalar tensor (a zero connected to the inputs when ``N = 0``).
    """
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if image.dim() != 2 or image.shape != text.shape or ids.shape != (image.shape[0],):
        raise ValueError(
            f"need image (N, D), text (N, D) and ids (N,), got {tuple(image.shape)}, {tuple(text.shape)}, "
            f"{tuple(ids.shape)}"
        )
    n = image.shape[0]
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    image = F.normalize(image.to(dtype), dim=-1)
    text = F.normalize(text.to(dtype), dim=-1)
    ids = ids.to(image.device)
    if gather_distributed and dist.is_distributed():
        sizes = dist.gather_sizes(n, image.device)
        both = dist.gather(torch.stack([image, text], dim=1), sizes)
        all_image, all_text = both[:, 0], both[:, 1]
        all_ids = dist.gather_no_grad(ids, sizes)
    else:
        all_image, all_text, all_ids = image, text, ids
    if n == 0:
        return (image.sum() + text.sum()) * 0.0
    positives = ids[:, None] == all_ids[None, :]  # (N, M), each row has its own pair at least

    def direction(query: Tensor, keys: Tensor) -> Tensor:
        log_prob = F.log_softmax((query / temperature) @ keys.T, dim=1)
        per_anchor = -torch.where(positives, log_prob, 0.0).sum(dim=1) / positives.sum(dim=1)
        return per_anchor.mean()

    return 0.5 * (direction(image, all_text) + direction(text, all_image))


# ----------------------------------------------------------------------------------------------------
# the item transform
# ----------------------------------------------------------------------------------------------------
class GazeAlignmentInputs(Randomizable):
    """Per-sample inputs of :class:`GazeAlignment`, all of fixed shape so batches collate.

    Args:
        input_key: the sample's image ``(C, H, W)``.
        tokenizer: a fitted tokenizer (``encode_batch(texts, max_length) → ids, mask``, ``(N, L)``).
        split_sentences: ``str → list[str]``.
        max_sentences: sentences kept per report (the first ones).
        max_length: tokens per sentence ``L`` (longer sentences are truncated).
        report_key: the sample's report text (absent or empty: no sentences).
        gaze_key: the sample's heatmap ``(H, W)`` (absent: zeros and ``has_gaze = 0``).
        view: a random image view applied first (a MONAI ``Randomizable`` dictionary transform that
            moves ``gaze_key`` with the image, e.g. the X-ray adapter's anatomy-preserving
            :class:`~modalities.xray.adapter.XrayViewd`), seeded from this transform's own generator;
            None: the image is used as it is.

    Outputs (:attr:`output_keys`): ``input_key`` float32 ``(C, H, W)``; ``text_ids`` int64 and
    ``text_mask`` int64 ``(max_sentences, max_length)`` (rows past ``n_sentences`` are zero);
    ``n_sentences`` int64 scalar; ``heatmap`` float32 ``(H, W)``; ``has_gaze`` bool scalar.
    """

    def __init__(
        self,
        input_key: str,
        tokenizer: Any,
        split_sentences: Callable[[str], list[str]],
        max_sentences: int,
        max_length: int,
        report_key: str = "report",
        gaze_key: str = "gaze",
        view: Any = None,
    ) -> None:
        if view is not None and not callable(getattr(view, "set_random_state", None)):
            raise ConfigError(f"view must be a Randomizable transform, got {type(view).__name__}")
        self.view = view
        self.input_key = input_key
        self.tokenizer = tokenizer
        self.split_sentences = split_sentences
        self.max_sentences = int(max_sentences)
        self.max_length = int(max_length)
        self.report_key = report_key
        self.gaze_key = gaze_key
        self.output_keys = (input_key, TEXT_IDS, TEXT_MASK, N_SENTENCES, HEATMAP, HAS_GAZE)

    def randomize(self, data: Any = None) -> None:
        """Seed the view (when there is one) from this transform's generator."""
        if self.view is not None:
            self.view.set_random_state(seed=int(self.R.randint(MAX_SEED)))

    def sentences(self, sample: dict[str, Any]) -> list[str]:
        """The sample's report sentences that are kept (non-empty, at most ``max_sentences``)."""
        report = sample.get(self.report_key)
        if not isinstance(report, str) or not report.strip():
            return []
        return [s for s in self.split_sentences(report) if s.strip()][: self.max_sentences]

    def encode_report(self, sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
        """The sample's report as token ids and attention mask, int64 ``(max_sentences, max_length)``
        (rows past the sentence count are zero), and its sentence count."""
        sentences = self.sentences(sample)
        ids = np.zeros((self.max_sentences, self.max_length), dtype=np.int64)
        mask = np.zeros((self.max_sentences, self.max_length), dtype=np.int64)
        if sentences:
            encoded_ids, encoded_mask = self.tokenizer.encode_batch(sentences, self.max_length)
            ids[: len(sentences)] = np.asarray(encoded_ids, dtype=np.int64)
            mask[: len(sentences)] = np.asarray(encoded_mask, dtype=np.int64)
        return ids, mask, len(sentences)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        if self.input_key not in sample:
            raise ConfigError(f"GazeAlignmentInputs: the sample has no {self.input_key!r} array")
        if self.view is not None:
            self.randomize()
            sample = self.view(dict(sample))  # the image and its heatmap, warped together
        out = dict(sample)
        image = np.asarray(sample[self.input_key], dtype=np.float32)
        ids, mask, n_sentences = self.encode_report(sample)
        gaze = sample.get(self.gaze_key)
        if gaze is None:
            heatmap = np.zeros(image.shape[-2:], dtype=np.float32)
        else:
            heatmap = np.asarray(gaze, dtype=np.float32)
            if heatmap.shape != image.shape[-2:]:
                raise ConfigError(
                    f"GazeAlignmentInputs: heatmap {heatmap.shape} is not on the image's grid "
                    f"{image.shape[-2:]}"
                )
        out[self.input_key] = image
        out[TEXT_IDS] = ids
        out[TEXT_MASK] = mask
        out[N_SENTENCES] = np.int64(n_sentences)
        out[HEATMAP] = heatmap
        out[HAS_GAZE] = np.bool_(gaze is not None and float(heatmap.sum()) > 0)
        return out


# ----------------------------------------------------------------------------------------------------
# the objective
# ----------------------------------------------------------------------------------------------------
class GazeAlignment(Configurable, BatchObjective):
    """Gaze-guided image-report alignment (see the module docstring).

    Args:
        text_encoder: ``{"class_path", "init_args"}`` of the text encoder (``forward(ids, mask) → (S,
            D_t)``, ``embedding_dim``; a ``vocab_size`` attribute bounds the tokenizer's vocabulary).
        tokenizer: ``{"class_path", "init_args"}`` of the tokenizer class (see the module docstring), or
            None to use the text encoder's own pretrained ``tokenizer`` (a Hugging Face model's).
        sentence_splitter: dotted path of a function ``str → list[str]``.
        projection_dim: size of the shared image / patch / sentence embedding space.
        max_sentences: sentences kept per report.
        max_length: tokens per sentence (≤ the text encoder's ``max_length``).
        tokenizer_min_frequency: the tokenizer's ``min_frequency`` when fitting.
        temperature: τ of the image-report InfoNCE.
        image_report_weight: weight of the image-report InfoNCE.
        gaze_weight: weight of the gaze term (0 disables it and the patch pass).
        weight_text_to_image: weight of the text→image JS direction (CoGaze: 0.2).
        weight_image_to_text: weight of the image→text JS direction (CoGaze: 0.8; 0 for image-level
            heatmaps, see the module docstring).
        gaze_temperature: τ of the sentence·patch softmax (CoGaze: 0.07).
        topk_ratio: fraction of the gazed patches kept in the gaze target (CoGaze: 0.25).
        disease_weight: weight of the disease-aware BCE (0: off).
        num_labels: number of findings of ``label`` (needed when ``disease_weight > 0``).
        gather_distributed: image-report candidates from every rank.
        augment_images: give every training image (and its heatmap, moved with it) a random view from
            the data's adapter (``adapter.view_transform()``; taken in :meth:`setup_data`): on small data
            the pairs are otherwise memorised within a few epochs. Validation and test images are
            not augmented (:meth:`eval_item_transform`), nor is anything in evaluation.

    Terms: ``loss``, ``image_report``, ``gaze``, ``gaze_text_to_image``, ``gaze_image_to_text``,
    ``disease``, ``with_report``, ``with_gaze``.
    """

    def __init__(
        self,
        text_encoder: dict[str, Any],
        tokenizer: dict[str, Any] | None,
        sentence_splitter: str,
        projection_dim: int = 128,
        max_sentences: int = 8,
        max_length: int = 32,
        tokenizer_min_frequency: int = 2,
        temperature: float = 0.07,
        image_report_weight: float = 1.0,
        gaze_weight: float = 1.0,
        weight_text_to_image: float = 0.2,
        weight_image_to_text: float = 0.8,
        gaze_temperature: float = 0.07,
        topk_ratio: float = 0.25,
        disease_weight: float = 0.0,
        num_labels: int | None = None,
        gather_distributed: bool = True,
        augment_images: bool = False,
    ) -> None:
        super().__init__()
        weights = {
            "image_report_weight": image_report_weight,
            "gaze_weight": gaze_weight,
            "weight_text_to_image": weight_text_to_image,
            "weight_image_to_text": weight_image_to_text,
            "disease_weight": disease_weight,
        }
        for name, value in weights.items():
            if not float(value) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if image_report_weight + gaze_weight + disease_weight == 0:
            raise ConfigError("image_report_weight, gaze_weight and disease_weight are all 0")
        if gaze_weight > 0 and weight_text_to_image + weight_image_to_text == 0:
            raise ConfigError("gaze_weight > 0 needs weight_text_to_image or weight_image_to_text > 0")
        if not temperature > 0 or not gaze_temperature > 0:
            raise ConfigError(f"temperatures must be > 0, got {temperature}, {gaze_temperature}")
        if not 0 < topk_ratio <= 1:
            raise ConfigError(f"topk_ratio must be in (0, 1], got {topk_ratio}")
        if min(int(projection_dim), int(max_sentences), int(max_length) - 1) < 1:
            raise ConfigError("projection_dim and max_sentences must be >= 1 and max_length >= 2")
        if disease_weight > 0 and (num_labels is None or int(num_labels) < 1):
            raise ConfigError("disease_weight > 0 needs num_labels (the number of findings of 'label')")
        self.text_encoder_spec = dict(text_encoder)
        self.tokenizer_spec = None if tokenizer is None else dict(tokenizer)
        self.text_encoder: nn.Module = instantiate_spec(self.text_encoder_spec)
        text_dim = getattr(self.text_encoder, "embedding_dim", None)
        if not isinstance(text_dim, int):
            raise ConfigError(f"{type(self.text_encoder).__name__} has no integer attribute embedding_dim")
        encoder_length = getattr(self.text_encoder, "max_length", None)
        if isinstance(encoder_length, int) and max_length > encoder_length:
            raise ConfigError(
                f"max_length {max_length} exceeds the text encoder's max_length {encoder_length}"
            )
        if self.tokenizer_spec is None:  # the text model's own, pretrained tokenizer
            own = getattr(self.text_encoder, "tokenizer", None)
            if not callable(getattr(own, "encode_batch", None)):
                raise ConfigError(
                    f"tokenizer is None but {type(self.text_encoder).__name__} has no tokenizer of its own "
                    "(an attribute with encode_batch); give a tokenizer spec to fit on the reports"
                )
            self.tokenizer: Any = own
            self._tokenizer_class: type | None = None
            self._fitted = True
        else:
            self.tokenizer = instantiate_spec(self.tokenizer_spec)  # unfitted until setup_data
            self._tokenizer_class = type(self.tokenizer)
            self._fitted = False
        self.sentence_splitter = str(sentence_splitter)
        self._split = resolve_function(self.sentence_splitter)
        self.projection_dim = int(projection_dim)
        self.max_sentences = int(max_sentences)
        self.max_length = int(max_length)
        self.tokenizer_min_frequency = int(tokenizer_min_frequency)
        self.temperature = float(temperature)
        self.image_report_weight = float(image_report_weight)
        self.gaze_weight = float(gaze_weight)
        self.weight_text_to_image = float(weight_text_to_image)
        self.weight_image_to_text = float(weight_image_to_text)
        self.gaze_temperature = float(gaze_temperature)
        self.topk_ratio = float(topk_ratio)
        self.disease_weight = float(disease_weight)
        self.num_labels = None if num_labels is None else int(num_labels)
        self.gather_distributed = bool(gather_distributed)
        self.augment_images = bool(augment_images)
        self._make_view: Callable[[], Any] | None = None  # the adapter's view_transform (setup_data)
        self.text_head = nn.Linear(text_dim, self.projection_dim)
        self.image_head: nn.Module | None = None
        self.patch_head: nn.Module | None = None
        self.classifier: nn.Module | None = None
        self.input_key = "image"  # the image's key in batches (set by item_transform)

    # ----------------------------------------------------------------------------------------------
    def bind(self, embedding_dim: int) -> None:
        """Build the image, patch (and classifier) heads for an image encoder of ``embedding_dim``
        (patch tokens are assumed to have the same size, as ``patch_dim`` of the X-ray encoders)."""
        self.image_head = nn.Linear(embedding_dim, self.projection_dim)
        self.patch_head = nn.Linear(embedding_dim, self.projection_dim)
        if self.num_labels:
            self.classifier = nn.Linear(self.projection_dim, self.num_labels)

    def project(self, pooled: Tensor) -> Tensor:
        """Image embedding ``(B, D) → (B, projection_dim)``."""
        if self.image_head is None:
            raise ConfigError("GazeAlignment.bind(embedding_dim) must be called before use")
        return self.image_head(pooled)

    # -- tokenizer ---------------------------------------------------------------------------------
    @property
    def tokenizer_fitted(self) -> bool:
        return self._fitted

    def fit_tokenizer(self, reports: Sequence[str]) -> None:
        """Fit the tokenizer on the sentences of ``reports`` (the training split's)."""
        if self._tokenizer_class is None:
            raise ConfigError("the text encoder's own tokenizer is pretrained: there is nothing to fit")
        sentences = [s for r in reports if isinstance(r, str) for s in self._split(r) if s.strip()]
        if not sentences:
            raise ConfigError("GazeAlignment: the training split has no report text to fit the tokenizer on")
        limit = int(getattr(self.text_encoder, "vocab_size", 0) or 0)
        if limit < 6:
            raise ConfigError("GazeAlignment: the text encoder needs a vocab_size attribute (> 5)")
        self.tokenizer.fit(sentences, limit, self.tokenizer_min_frequency)
        self._fitted = True

    def _set_tokenizer(self, tokenizer: Any) -> None:
        size = int(getattr(tokenizer, "vocab_size", 0))
        limit = int(getattr(self.text_encoder, "vocab_size", size))
        if size > limit:
            raise ConfigError(f"the tokenizer has {size} tokens but the text encoder's vocab_size is {limit}")
        self.tokenizer = tokenizer
        self._fitted = True

    def setup_data(self, datamodule: Any) -> None:
        """Fit the tokenizer on the reports of the data module's *training* samples (kept if fitted),
        and take the adapter's random views when ``augment_images`` is on."""
        adapter = getattr(datamodule, "adapter", None)
        if self.augment_images:
            if not callable(getattr(adapter, "view_transform", None)):
                raise ConfigError("augment_images needs a data module whose adapter has view_transform()")
            self._make_view = adapter.view_transform
        if self._fitted:
            return
        samples = getattr(datamodule, "samples", {}).get("train")
        if samples is None or adapter is None:
            raise ConfigError("GazeAlignment.setup_data needs a set-up data module with an adapter")
        reports: list[str] = []
        for _, row in samples.iterrows():
            try:
                report = adapter.load_sample(row).get("report")
            except DataError:
                continue  # unreadable samples are the data module's business (on_error)
            if isinstance(report, str):
                reports.append(report)
        self.fit_tokenizer(reports)

    def get_extra_state(self) -> dict[str, Any]:
        """The fitted tokenizer as plain data (``to_dict()``; None before fitting, and for the text
        encoder's own tokenizer, which its model folder holds)."""
        fitted_here = self._fitted and self._tokenizer_class is not None
        return {"tokenizer": self.tokenizer.to_dict() if fitted_here else None}

    def set_extra_state(self, state: Any) -> None:
        data = state.get("tokenizer") if isinstance(state, dict) else None
        if data is not None:
            if self._tokenizer_class is None:
                raise ConfigError(
                    "the checkpoint holds a fitted tokenizer but this objective uses its text encoder's own"
                )
            self._set_tokenizer(self._tokenizer_class.from_dict(data))

    def item_transform(self, input_key: str) -> GazeAlignmentInputs:
        """Tokenised sentences, the heatmap and, with ``augment_images``, the adapter's random view of
        the image (and heatmap) of every training sample."""
        return self._inputs(input_key, augment=self.augment_images)

    def eval_item_transform(self, input_key: str) -> GazeAlignmentInputs | None:
        """Validation and test samples: the same inputs without the random view (None when training
        samples are not augmented either), so the validation loss that selects checkpoints is not
        moved by the augmentation drawn at each epoch."""
        return self._inputs(input_key, augment=False) if self.augment_images else None

    def _inputs(self, input_key: str, augment: bool) -> GazeAlignmentInputs:
        if not self._fitted:
            raise ConfigError(
                "GazeAlignment: the tokenizer is not fitted; PretrainModule.setup calls "
                "setup_data(datamodule) first (or call fit_tokenizer on the training reports)"
            )
        if self.augment_images and self._make_view is None:
            raise ConfigError(
                "augment_images: the adapter's views are not known yet; PretrainModule.setup calls "
                "setup_data(datamodule) first"
            )
        self.input_key = str(input_key)
        view = self._make_view() if augment and self._make_view is not None else None
        return GazeAlignmentInputs(
            input_key, self.tokenizer, self._split, self.max_sentences, self.max_length, view=view
        )

    # -- the loss ----------------------------------------------------------------------------------
    def embed_sentences(self, ids: Tensor, mask: Tensor, n_sentences: Tensor) -> tuple[Tensor, Tensor]:
        """Projected embeddings of the real sentences ``(S, projection_dim)`` and their sample ``(S,)``,
        from ``ids`` / ``mask`` ``(B, max_sentences, L)`` and ``n_sentences`` ``(B,)``."""
        batch, slots, _ = ids.shape
        real = torch.arange(slots, device=ids.device)[None, :] < n_sentences.to(ids.device)[:, None]
        report_index = torch.arange(batch, device=ids.device)[:, None].expand(batch, slots)[real]
        if int(real.sum()) == 0:
            zero = sum(p.sum() for p in self.text_head.parameters()) * 0.0
            return ids.new_zeros(0, self.projection_dim, dtype=torch.float32) + zero, report_index
        features = self.text_encoder(ids[real], mask[real])
        return self.text_head(features), report_index

    def report_embeddings(
        self, ids: Tensor, mask: Tensor, n_sentences: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Report embeddings ``(B, projection_dim)``: the mean of each report's projected sentence
        embeddings (zeros for a report without sentences), from ``ids`` / ``mask`` ``(B, max_sentences,
        L)`` and ``n_sentences`` ``(B,)``; also the sentences ``(S, projection_dim)`` and their report
        ``(S,)`` (:meth:`embed_sentences`)."""
        sentences, report_index = self.embed_sentences(ids, mask, n_sentences)
        counts = n_sentences.to(sentences.device).clamp(min=1).to(sentences.dtype)
        reports = sentences.new_zeros(ids.shape[0], self.projection_dim).index_add(0, report_index, sentences)
        return reports / counts[:, None], sentences, report_index

    def tokenize_reports(self, reports: Sequence[str | None]) -> tuple[Tensor, Tensor, Tensor]:
        """Token ids and attention masks ``(B, max_sentences, max_length)`` and sentence counts ``(B,)`` of
        report texts, exactly as the item transform makes them in training (None or blank: no sentence).
        """
        if not self._fitted:
            raise ConfigError("GazeAlignment: the tokenizer is not fitted (load a trained checkpoint)")
        inputs = GazeAlignmentInputs(
            self.input_key, self.tokenizer, self._split, self.max_sentences, self.max_length
        )
        encoded = [inputs.encode_report({"report": text}) for text in reports]
        if not encoded:
            empty = torch.zeros(0, self.max_sentences, self.max_length, dtype=torch.int64)
            return empty, empty.clone(), torch.zeros(0, dtype=torch.int64)
        return (
            torch.from_numpy(np.stack([e[0] for e in encoded])),
            torch.from_numpy(np.stack([e[1] for e in encoded])),
            torch.tensor([e[2] for e in encoded], dtype=torch.int64),
        )

    def forward_batch(self, encoder: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Loss terms of one batch: the image ``(B, C, H, W)`` under :attr:`input_key` (the key the item
        transform was made for, ``"image"`` by default), ``text_ids`` / ``text_mask``
        ``(B, max_sentences, L)``, ``n_sentences`` ``(B,)``, ``heatmap`` ``(B, H, W)``,
        ``has_gaze`` ``(B,)``, ``patient`` ``(B,)`` and, for the BCE, ``label`` ``(B, K)``
        with ``has_label`` ``(B,)``."""
        if self.image_head is None or self.patch_head is None:
            raise ConfigError("GazeAlignment.bind(embedding_dim) must be called before use")
        keys = (self.input_key, TEXT_IDS, TEXT_MASK, N_SENTENCES, HEATMAP, HAS_GAZE, contract.PATIENT)
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ConfigError(
                f"GazeAlignment: the batch lacks {missing}; its data module must apply this objective's "
                "item_transform"
            )
        x = batch[self.input_key].float()
        patient = batch[contract.PATIENT].long()
        n_sentences = batch[N_SENTENCES].long()
        has_gaze = batch[HAS_GAZE].bool() & (n_sentences > 0)
        image_emb = self.image_head(encoder(x))  # (B, P)
        report_emb, sentences, report_index = self.report_embeddings(
            batch[TEXT_IDS], batch[TEXT_MASK], n_sentences
        )
        zero = image_emb.sum() * 0.0 + sentences.sum() * 0.0

        # (1) image-report InfoNCE over the samples with a report
        with_report = n_sentences > 0
        if int(with_report.sum()) > 0:
            image_report = cross_modal_multi_positive_info_nce(
                image_emb[with_report],
                report_emb[with_report],
                patient[with_report],
                self.temperature,
                self.gather_distributed,
            )
        else:
            image_report = zero

        # (2) the gaze term, on the samples with a heatmap and a report
        t2i = i2t = zero
        if self.gaze_weight > 0 and bool(has_gaze.any()):
            patches = self.patch_head(encoder.forward_patches(x))  # (B, P, projection_dim)
            grid = tuple(encoder.patch_grid(tuple(x.shape[-2:])))
            if grid[0] * grid[1] != patches.shape[1]:
                raise ConfigError(
                    f"the encoder's patch_grid {grid} does not match its {patches.shape[1]} patches"
                )
            heatmaps = pool_heatmaps_to_patches(batch[HEATMAP].float(), grid)  # (B, P)
            t2i, i2t = gaze_alignment_loss_terms(
                sentences,
                report_index,
                patches,
                heatmaps,
                has_gaze,
                heatmap_level="image",
                temperature=self.gaze_temperature,
                topk_ratio=self.topk_ratio,
            )
        else:
            zero = zero + sum(p.sum() for p in self.patch_head.parameters()) * 0.0  # every parameter used
        gaze = self.weight_text_to_image * t2i + self.weight_image_to_text * i2t

        # (3) disease-aware BCE on the labelled samples
        disease = zero
        if self.classifier is not None:
            logits = self.classifier(image_emb)
            labelled = batch.get(contract.HAS_LABEL)
            if (
                self.disease_weight > 0
                and contract.LABEL in batch
                and labelled is not None
                and bool(labelled.any())
            ):
                rows = labelled.bool()
                disease = F.binary_cross_entropy_with_logits(
                    logits[rows], batch[contract.LABEL][rows].float()
                )
            else:
                disease = zero + logits.sum() * 0.0

        loss = (
            self.image_report_weight * image_report
            + self.gaze_weight * gaze
            + self.disease_weight * disease
            + zero
        )
        return {
            "loss": loss,
            "image_report": image_report.detach(),
            "gaze": gaze.detach(),
            "gaze_text_to_image": t2i.detach(),
            "gaze_image_to_text": i2t.detach(),
            "disease": disease.detach(),
            "with_report": torch.tensor(float(with_report.sum())),
            "with_gaze": torch.tensor(float(has_gaze.sum())),
        }
