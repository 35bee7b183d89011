"""Text encoders for reports: a small transformer trained from scratch, and a hook for a local HF model.

Both encoders have the same interface:

* ``embedding_dim``: the size ``D`` of the embeddings;
* ``forward(ids, attention_mask) → (B, D)``: one embedding per text;
* ``forward_tokens(ids, attention_mask) → (B, L, D)``: one feature per token (zero at padding), for
  token- or sentence-level objectives;
* inputs: ``ids`` int64 ``(B, L)`` starting with the tokenizer's ``[CLS]`` and ``attention_mask``
  ``(B, L)`` (1 = real token, 0 = padding; bool or integer), as the tokenizers' ``encode_batch`` make
  them (:class:`~modalities.xray.text.BPETokenizer`, :class:`HuggingFaceTokenizer`).

:func:`encode_sentences` flattens the sentences of several reports into one batch and says which
report each sentence came from, so an objective can embed every sentence ``(S, D)`` and pool or match
them per report.

**From scratch** — :class:`TransformerTextEncoder`: token + learned position embeddings, a
pre-norm ``nn.TransformerEncoder`` (GELU) and a final LayerNorm. Its constructor takes plain data only
(``vocab_size`` included), so it rebuilds from a checkpoint's spec (:mod:`medcl.configurable`); the
tokenizer is saved next to the run as JSON (``BPETokenizer.save``) or put into the checkpoint's
metadata as plain data (``BPETokenizer.to_dict``).

**A locally installed Hugging Face model** — :class:`HuggingFaceTextEncoder` wraps a model folder
already on disk (e.g. CXR-BERT or BioClinicalBERT), through ``transformers`` (an optional
dependency, imported only when the class is used). Nothing is ever downloaded at run time: the
path must be an existing local folder with a ``config.json`` (a hub name such as
``"microsoft/BiomedVLP-CXR-BERT-general"`` is refused with a :class:`~medcl.errors.ConfigError`),
``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` are set in this process before ``transformers``
is imported, every load passes ``local_files_only=True``, and ``trust_remote_code=False`` (a folder's
own Python code is never run, so models that need it are not supported). To use one::

    # once, on a machine with internet access (outside medcl):
    #   pip install transformers
    #   huggingface-cli download emilyalsentzer/Bio_ClinicalBERT --local-dir /models/bio_clinicalbert
    from modalities.xray.text_encoder import HuggingFaceTextEncoder, encode_sentences

    encoder = HuggingFaceTextEncoder("/models/bio_clinicalbert", pooling="cls")
    ids, mask, report_index = encode_sentences(encoder.tokenizer, sentences_per_report, max_length=64)
    sentence_embeddings = encoder(ids, mask)  # (S, encoder.embedding_dim)

In a config, ``class_path: modalities.xray.text_encoder.HuggingFaceTextEncoder`` with
``init_args: {local_path: /models/bio_clinicalbert, pooling: cls}``. The checkpoint then holds the
model's weights and the folder's path; rebuilding it needs the folder (for the config and tokenizer).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from medcl.configurable import Configurable
from medcl.errors import ConfigError

__all__ = [
    "POOLINGS",
    "HuggingFaceTextEncoder",
    "HuggingFaceTokenizer",
    "TextTokenizer",
    "TransformerTextEncoder",
    "encode_sentences",
    "masked_mean",
]

#: Pooling methods of the encoders: the first token's feature (``[CLS]``) or the mean over real tokens.
POOLINGS: tuple[str, ...] = ("cls", "mean")


class TextTokenizer(Protocol):
    """What :func:`encode_sentences` needs from a tokenizer (both tokenizers of medcl have it)."""

    @property
    def vocab_size(self) -> int: ...

    def encode_batch(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]: ...


def masked_mean(features: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of ``features`` over the real tokens.

    Args:
        features: ``(B, L, D)``.
        attention_mask: ``(B, L)``, 1 (or True) on real tokens; every row needs at least one.

    Returns:
        ``(B, D)``: ``Σ_l m_l f_l / Σ_l m_l``.
    """
    weights = attention_mask.to(features.dtype).unsqueeze(-1)
    return (features * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def _pool(features: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    if pooling == "cls":
        return features[:, 0]
    return masked_mean(features, attention_mask)


def _check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return pooling


def _check_batch(ids: Tensor, attention_mask: Tensor, who: str) -> Tensor:
    """Validate ``(B, L)`` ids and mask; returns the mask as bool."""
    if not isinstance(ids, Tensor) or ids.ndim != 2:
        raise ValueError(f"{who} expects ids of shape (B, L), got {getattr(ids, 'shape', type(ids))}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{who} expects integer token ids (int64), got {ids.dtype}")
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != ids.shape:
        raise ValueError(
            f"{who}: attention_mask must have the shape of ids {tuple(ids.shape)}, "
            f"got {tuple(getattr(attention_mask, 'shape', ()))}"
        )
    mask = attention_mask.bool()
    if ids.shape[0] and not bool(mask.any(dim=1).all()):
        raise ValueError(f"{who}: every sequence needs at least one real token (a row of the mask is all 0)")
    return mask


class TransformerTextEncoder(Configurable, nn.Module):
    """A small pre-norm transformer encoder for report text, trained from scratch.

    ``x = token_embedding(ids) + position_embedding[:L]`` → dropout → ``depth`` pre-norm
    ``nn.TransformerEncoderLayer`` (GELU, padding keys masked out of attention) → LayerNorm. Padding
    never influences real tokens (it is masked from every attention), so a text gives the same features
    whatever it is padded to and whatever ids the padded positions hold.

    Pooling (``pooling``): ``"mean"`` (default) averages the final features of the real tokens
    (``[CLS]`` and ``[SEP]`` included) — robust for sentence embeddings learned from scratch, with every
    token receiving gradient; ``"cls"`` takes the first position's feature (the tokenizer's ``[CLS]``).

    Args:
        vocab_size: the tokenizer's vocabulary size (ids must be in ``[0, vocab_size)``).
        embedding_dim: model width ``D`` (divisible by ``num_heads``).
        depth: number of transformer layers.
        num_heads: attention heads.
        mlp_ratio: feed-forward width as a multiple of ``D``.
        max_length: the longest sequence ``L`` (size of the position table).
        dropout: dropout in the embeddings, attention and feed-forward blocks.
        pooling: ``"mean"`` or ``"cls"``.
        pad_id: the padding id (its embedding row is zero and receives no gradient).

    Shapes: ``ids`` int64 ``(B, L)``, ``attention_mask`` ``(B, L)`` → ``(B, D)`` / ``(B, L, D)``.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 256,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_length: int = 128,
        dropout: float = 0.1,
        pooling: str = "mean",
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if int(vocab_size) < 2:
            raise ConfigError(f"vocab_size must be at least 2, got {vocab_size}")
        if int(embedding_dim) < 1 or int(num_heads) < 1 or int(embedding_dim) % int(num_heads):
            raise ConfigError(
                f"embedding_dim ({embedding_dim}) must be a positive multiple of num_heads ({num_heads})"
            )
        if int(depth) < 1 or int(max_length) < 2 or float(mlp_ratio) <= 0:
            raise ConfigError(
                f"need depth ≥ 1, max_length ≥ 2 and mlp_ratio > 0, got {depth}, {max_length}, {mlp_ratio}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        if not 0 <= int(pad_id) < int(vocab_size):
            raise ConfigError(f"pad_id {pad_id} is outside the vocabulary [0, {vocab_size})")
        self.vocab_size = int(vocab_size)
        self.embedding_dim = int(embedding_dim)
        self.max_length = int(max_length)
        self.pooling = _check_pooling(pooling)
        self.pad_id = int(pad_id)
        self.token_embedding = nn.Embedding(self.vocab_size, self.embedding_dim, padding_idx=self.pad_id)
        self.position_embedding = nn.Parameter(torch.zeros(self.max_length, self.embedding_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        with torch.no_grad():
            self.token_embedding.weight[self.pad_id].zero_()
        nn.init.normal_(self.position_embedding, std=0.02)
        self.dropout = nn.Dropout(float(dropout))
        layer = nn.TransformerEncoderLayer(
            d_model=self.embedding_dim,
            nhead=int(num_heads),
            dim_feedforward=max(1, round(float(mlp_ratio) * self.embedding_dim)),
            dropout=float(dropout),
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=int(depth), enable_nested_tensor=False)
        self.norm = nn.LayerNorm(self.embedding_dim)

    def forward_tokens(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Per-token features.

        Args:
            ids: int64 ``(B, L)``, ``L ≤ max_length``, values in ``[0, vocab_size)``.
            attention_mask: ``(B, L)``, 1/True on real tokens (at least one per row).

        Returns:
            ``(B, L, D)``, zero at padded positions.
        """
        mask = _check_batch(ids, attention_mask, type(self).__name__)
        length = ids.shape[1]
        if length > self.max_length:
            raise ValueError(
                f"{type(self).__name__}: sequences of length {length} exceed max_length={self.max_length} "
                "(truncate when encoding, or build the encoder with a larger max_length)"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(
                f"{type(self).__name__}: token ids must lie in [0, {self.vocab_size}), got "
                f"[{int(ids.min())}, {int(ids.max())}] (a tokenizer with a different vocabulary?)"
            )
        x = self.token_embedding(ids.long()) + self.position_embedding[:length]
        x = self.encoder(self.dropout(x), src_key_padding_mask=~mask)
        x = self.norm(x)
        return x * mask.unsqueeze(-1).to(x.dtype)

    def forward(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled embeddings ``(B, D)`` of ``ids`` int64 ``(B, L)`` (see the class docstring)."""
        return _pool(self.forward_tokens(ids, attention_mask), attention_mask, self.pooling)


def encode_sentences(
    tokenizer: TextTokenizer, reports: Sequence[Sequence[str]], max_length: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Tokenize the sentences of several reports as one batch.

    Args:
        tokenizer: a fitted :class:`~modalities.xray.text.BPETokenizer` or a
            :class:`HuggingFaceTokenizer` (anything with ``encode_batch(texts, max_length)``).
        reports: per report, its sentences (:func:`~modalities.xray.text.split_sentences`); a report
            may have none.
        max_length: the sequence length ``L`` (longer sentences are truncated).

    Returns:
        ``ids`` int64 ``(S, L)``, ``attention_mask`` int64 ``(S, L)`` and ``report_index`` int64
        ``(S,)``, ``S`` the total number of sentences: sentence ``s`` belongs to report
        ``report_index[s]``; sentences keep their order, report by report.
    """
    if isinstance(reports, str) or any(isinstance(r, str) for r in reports):
        raise ConfigError("encode_sentences takes a list of reports, each a list of sentences (not strings)")
    sentences = [str(s) for report in reports for s in report]
    index = [i for i, report in enumerate(reports) for _ in report]
    if not sentences:
        empty = torch.zeros(0, int(max_length), dtype=torch.int64)
        return empty, empty.clone(), torch.zeros(0, dtype=torch.int64)
    ids, mask = tokenizer.encode_batch(sentences, max_length)
    return (
        torch.as_tensor(np.asarray(ids), dtype=torch.int64),
        torch.as_tensor(np.asarray(mask), dtype=torch.int64),
        torch.tensor(index, dtype=torch.int64),
    )


# --- a locally installed Hugging Face model ---------------------------------------------------------

_INSTALL_HINT = "pip install transformers (an optional dependency of medcl, only needed for local HF models)"


def _local_model_folder(local_path: str | Path) -> Path:
    """The model folder, or a :class:`ConfigError` saying what to provide (nothing is downloaded)."""
    path = Path(os.path.expanduser(str(local_path)))
    if not path.is_dir():
        raise ConfigError(
            f"{str(local_path)!r} is not an existing local folder: medcl loads Hugging Face models only from "
            "disk and never downloads them. Download the model once yourself (e.g. `huggingface-cli "
            "download <name> --local-dir /models/<name>` on a machine with internet access) and pass that "
            "folder as local_path"
        )
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{path}: not a Hugging Face model folder (no config.json); pass the folder that "
            "save_pretrained() or `huggingface-cli download --local-dir` wrote"
        )
    return path.resolve()


def _import_transformers() -> ModuleType:
    """``transformers``, imported with the Hub switched offline; :class:`ConfigError` if it is missing."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        return importlib.import_module("transformers")
    except ImportError as error:
        raise ConfigError(
            f"using a local Hugging Face text model needs the 'transformers' package, which is not "
            f"installed ({error}): {_INSTALL_HINT}; or use TransformerTextEncoder, which needs nothing extra"
        ) from error


def _from_pretrained(factory: Any, path: Path, what: str) -> Any:
    try:
        return factory.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, ImportError) as error:
        raise ConfigError(
            f"{path}: cannot load the {what} from this folder offline ({type(error).__name__}: {error}); "
            "check that the download is complete (weights, tokenizer files) and that it needs no custom code"
        ) from error


class HuggingFaceTokenizer:
    """A local Hugging Face tokenizer behind medcl's tokenizer interface.

    Args:
        local_path: the model folder (as for :class:`HuggingFaceTextEncoder`).

    Raises:
        ConfigError: not a local model folder, ``transformers`` missing, or the tokenizer cannot load.
    """

    def __init__(self, local_path: str | Path) -> None:
        path = _local_model_folder(local_path)
        transformers = _import_transformers()
        self.path = path
        self._tokenizer = _from_pretrained(transformers.AutoTokenizer, path, "tokenizer")
        pad = getattr(self._tokenizer, "pad_token_id", None)
        if pad is None:
            raise ConfigError(f"{path}: the tokenizer has no padding token, so batches cannot be padded")
        self.pad_id = int(pad)

    @property
    def vocab_size(self) -> int:
        """Number of tokens, added tokens included."""
        return len(self._tokenizer)

    def encode(self, text: str, max_length: int) -> tuple[list[int], list[int]]:
        """``(ids, attention_mask)`` of one text, truncated and padded to ``max_length``."""
        ids, mask = self.encode_batch([text], max_length)
        return ids[0].tolist(), mask[0].tolist()

    def encode_batch(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """int64 ``ids`` and ``attention_mask`` ``(N, max_length)``, with the model's special tokens."""
        if isinstance(texts, str):
            raise ConfigError("encode_batch takes a sequence of texts, got a single str (use encode)")
        out = self._tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=int(max_length),
            return_tensors="np",
        )
        return (
            np.asarray(out["input_ids"], dtype=np.int64),
            np.asarray(out["attention_mask"], dtype=np.int64),
        )

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids``."""
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))


class HuggingFaceTextEncoder(Configurable, nn.Module):
    """A locally installed Hugging Face encoder model with the interface of :class:`TransformerTextEncoder`.

    See the module docstring for how it stays offline. ``forward_tokens`` is the model's
    ``last_hidden_state`` (zeroed at padding); ``forward`` pools it: ``"cls"`` (the first token, what
    BERT-style models are trained to summarise into) or ``"mean"`` over real tokens.

    Args:
        local_path: an existing local folder holding the model (``config.json``, weights, tokenizer).
        pooling: ``"cls"`` or ``"mean"``.

    Attributes:
        embedding_dim: the model's ``hidden_size``.
        tokenizer: the model's own tokenizer (:class:`HuggingFaceTokenizer`).

    Raises:
        ConfigError: ``local_path`` is not a local model folder (hub names are refused), ``transformers``
            is not installed, or the model cannot be loaded offline.
    """

    def __init__(self, local_path: str, pooling: str = "cls") -> None:
        super().__init__()
        self.pooling = _check_pooling(pooling)
        path = _local_model_folder(local_path)
        transformers = _import_transformers()
        self.model = _from_pretrained(transformers.AutoModel, path, "model")
        hidden = getattr(getattr(self.model, "config", None), "hidden_size", None)
        if not isinstance(hidden, int):
            raise ConfigError(f"{path}: the model's config has no integer hidden_size; is it a text encoder?")
        self.embedding_dim = hidden
        self.local_path = str(path)
        self._tokenizer: HuggingFaceTokenizer | None = None

    @property
    def tokenizer(self) -> HuggingFaceTokenizer:
        """The model folder's tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = HuggingFaceTokenizer(self.local_path)
        return self._tokenizer

    def forward_tokens(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Per-token features ``(B, L, D)`` (zero at padding) of ``ids`` int64 ``(B, L)``."""
        mask = _check_batch(ids, attention_mask, type(self).__name__)
        out = self.model(input_ids=ids.long(), attention_mask=mask.long())
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)

    def forward(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled embeddings ``(B, D)``."""
        return _pool(self.forward_tokens(ids, attention_mask), attention_mask, self.pooling)
