"""Text encoders: the from-scratch transformer against a hand-written reference forward, padding
invariance, pooling, gradients, rebuilding from a checkpoint; the Hugging Face hook's offline contract."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medcl.configurable import instantiate_spec, module_spec
from medcl.errors import ConfigError
from modalities.xray import text_encoder
from modalities.xray.text import BPETokenizer, clean_report, split_sentences
from modalities.xray.text_encoder import (
    HuggingFaceTextEncoder,
    HuggingFaceTokenizer,
    TransformerTextEncoder,
    encode_sentences,
    masked_mean,
)

REPORTS = [
    "FINDINGS: The lungs are clear. No pleural effusion or pneumothorax.\nIMPRESSION: No acute process.",
    "FINDINGS: Patchy bilateral opacities, worse at the right base. Heart size is normal.",
    "Bilateral peripheral ground glass opacities. PCR positive.",
]
TINY = {"embedding_dim": 16, "depth": 2, "num_heads": 2, "max_length": 32}


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return BPETokenizer().fit([clean_report(r) for r in REPORTS], vocab_size=120, min_frequency=1)


@pytest.fixture(scope="module")
def sentences() -> list[list[str]]:
    return [split_sentences(clean_report(r)) for r in REPORTS]


def make_encoder(vocab_size: int, seed: int = 0, **kwargs: Any) -> TransformerTextEncoder:
    torch.manual_seed(seed)
    return TransformerTextEncoder(vocab_size, **{**TINY, "dropout": 0.0, **kwargs}).eval()


def reference_tokens(encoder: TransformerTextEncoder, ids: Tensor) -> Tensor:
    """Slow forward of ONE unpadded sequence ``ids`` (L,) from the encoder's weights: token + position
    embedding, per layer x += MHA(LN1(x)), x += W2·GELU(W1·LN2(x)), then the final LN. Returns (L, D)."""
    x = encoder.token_embedding.weight[ids] + encoder.position_embedding[: len(ids)]
    for layer in encoder.encoder.layers:
        attn = layer.self_attn
        heads, dim = attn.num_heads, attn.embed_dim
        h = F.layer_norm(x, (dim,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
        q, k, v = (h @ attn.in_proj_weight.T + attn.in_proj_bias).split(dim, dim=-1)
        head_dim = dim // heads
        outs = []
        for i in range(heads):
            cols = slice(i * head_dim, (i + 1) * head_dim)
            weights = torch.softmax(q[:, cols] @ k[:, cols].T / math.sqrt(head_dim), dim=-1)
            outs.append(weights @ v[:, cols])
        x = x + torch.cat(outs, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias
        h = F.layer_norm(x, (dim,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
        x = x + layer.linear2(F.gelu(layer.linear1(h)))
    return F.layer_norm(x, (x.shape[-1],), encoder.norm.weight, encoder.norm.bias, encoder.norm.eps)


# --- the from-scratch encoder -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "batch", "length"),
    [({}, 3, 10), ({"pooling": "cls"}, 2, 32), ({"embedding_dim": 24, "num_heads": 3, "depth": 1}, 1, 5)],
)
def test_shapes(kwargs: dict[str, Any], batch: int, length: int) -> None:
    encoder = make_encoder(50, **kwargs)
    ids = torch.randint(1, 50, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.int64)
    dim = kwargs.get("embedding_dim", 16)
    assert encoder.embedding_dim == dim
    assert encoder(ids, mask).shape == (batch, dim)
    assert encoder.forward_tokens(ids, mask).shape == (batch, length, dim)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_forward_equals_reference_and_pooling_by_hand(
    tokenizer: BPETokenizer, sentences, pooling: str
) -> None:
    encoder = make_encoder(tokenizer.vocab_size, seed=1, pooling=pooling)
    ids, mask, _ = encode_sentences(tokenizer, sentences, max_length=24)
    with torch.no_grad():
        tokens = encoder.forward_tokens(ids, mask)
        pooled = encoder(ids, mask)
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        with torch.no_grad():
            expected = reference_tokens(encoder, ids[row, :n])
        torch.testing.assert_close(tokens[row, :n], expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(tokens[row, n:], torch.zeros_like(tokens[row, n:]))
        by_hand = expected[0] if pooling == "cls" else expected.mean(dim=0)
        torch.testing.assert_close(pooled[row], by_hand, atol=1e-5, rtol=1e-5)


def test_padding_invariance(tokenizer: BPETokenizer, sentences) -> None:
    encoder = make_encoder(tokenizer.vocab_size, seed=2)
    flat = [s for report in sentences for s in report]
    short, short_mask = (torch.from_numpy(a) for a in tokenizer.encode_batch(flat, 32, pad_to_longest=True))
    long, long_mask = (torch.from_numpy(a) for a in tokenizer.encode_batch(flat, 32))
    assert long.shape[1] > short.shape[1]
    garbage = long.clone()
    pad = long_mask == 0
    garbage[pad] = torch.randint(1, tokenizer.vocab_size, (int(pad.sum()),))  # ids under the mask
    with torch.no_grad():
        reference = encoder(short, short_mask)
        for ids, mask in ((long, long_mask), (garbage, long_mask), (long, long_mask.bool())):
            torch.testing.assert_close(encoder(ids, mask), reference, atol=1e-6, rtol=0)
        # one sequence alone, unpadded, equals its row of the padded batch
        n = int(long_mask[0].sum())
        alone = encoder(long[:1, :n], long_mask[:1, :n])
        torch.testing.assert_close(alone[0], reference[0], atol=1e-6, rtol=0)
        tokens = encoder.forward_tokens(garbage, long_mask)
        torch.testing.assert_close(
            tokens[:, : short.shape[1]], encoder.forward_tokens(short, short_mask), atol=1e-6, rtol=0
        )


def test_masked_mean_by_hand() -> None:
    features = torch.arange(12.0).reshape(1, 4, 3)
    mask = torch.tensor([[1, 0, 1, 0]])
    assert masked_mean(features, mask).tolist() == [[3.0, 4.0, 5.0]]


def test_gradients_flow(tokenizer: BPETokenizer, sentences) -> None:
    encoder = make_encoder(tokenizer.vocab_size, seed=3).train()
    ids, mask, _ = encode_sentences(tokenizer, sentences, max_length=24)
    encoder(ids, mask).pow(2).sum().backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    grad = encoder.token_embedding.weight.grad
    used = torch.unique(ids[mask.bool()])
    assert (grad[used].abs().sum(dim=1) > 0).all()
    assert grad[tokenizer.pad_id].abs().sum() == 0  # padding never gets gradient
    unused = torch.ones(tokenizer.vocab_size, dtype=torch.bool)
    unused[torch.unique(ids)] = False
    assert grad[unused].abs().sum() == 0
    position_grad = encoder.position_embedding.grad
    assert position_grad[: ids.shape[1]].abs().sum() > 0 and position_grad[ids.shape[1] :].abs().sum() == 0


def test_deterministic_under_a_seed(tokenizer: BPETokenizer, sentences) -> None:
    ids, mask, _ = encode_sentences(tokenizer, sentences, max_length=24)
    a, b = (
        make_encoder(tokenizer.vocab_size, seed=7, dropout=0.2),
        make_encoder(tokenizer.vocab_size, seed=7, dropout=0.2),
    )
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(
        a.token_embedding.weight, make_encoder(tokenizer.vocab_size, seed=8).token_embedding.weight
    )
    a.train(), b.train()
    torch.manual_seed(0)
    out_a = a(ids, mask)
    torch.manual_seed(0)
    assert torch.equal(out_a, b(ids, mask))  # dropout draws follow the seed too


def test_rebuild_from_checkpoint_with_tokenizer_metadata(
    tmp_path: Path, tokenizer: BPETokenizer, sentences
) -> None:
    encoder = make_encoder(tokenizer.vocab_size, seed=4, pooling="cls")
    spec = module_spec(encoder)
    assert spec == {
        "class_path": "modalities.xray.text_encoder.TransformerTextEncoder",
        "init_args": {
            "vocab_size": tokenizer.vocab_size, "embedding_dim": 16, "depth": 2, "num_heads": 2,
            "mlp_ratio": 4.0, "max_length": 32, "dropout": 0.0, "pooling": "cls", "pad_id": 0,
        },
    }  # fmt: skip
    path = tmp_path / "text.ckpt"
    torch.save({"spec": spec, "state_dict": encoder.state_dict(), "tokenizer": tokenizer.to_dict()}, path)
    checkpoint = torch.load(path, weights_only=True)
    json.dumps(checkpoint["tokenizer"])  # plain data
    rebuilt = instantiate_spec(checkpoint["spec"]).eval()
    rebuilt.load_state_dict(checkpoint["state_dict"])
    restored = BPETokenizer.from_dict(checkpoint["tokenizer"])
    ids, mask, _ = encode_sentences(restored, sentences, max_length=24)
    with torch.no_grad():
        assert torch.equal(rebuilt(ids, mask), encoder(ids, mask))


def test_encode_sentences_layout(tokenizer: BPETokenizer) -> None:
    reports = [["Lungs are clear.", "No effusion."], [], ["Heart size is normal."]]
    ids, mask, index = encode_sentences(tokenizer, reports, max_length=12)
    assert ids.dtype == mask.dtype == index.dtype == torch.int64
    assert ids.shape == mask.shape == (3, 12) and index.tolist() == [0, 0, 2]
    for row, sentence in enumerate(["Lungs are clear.", "No effusion.", "Heart size is normal."]):
        assert (ids[row].tolist(), mask[row].tolist()) == tokenizer.encode(sentence, 12)
    empty_ids, empty_mask, empty_index = encode_sentences(tokenizer, [[], []], max_length=12)
    assert empty_ids.shape == (0, 12) and empty_mask.shape == (0, 12) and empty_index.shape == (0,)
    with pytest.raises(ConfigError, match="list of sentences"):
        encode_sentences(tokenizer, ["Lungs are clear."], max_length=12)  # type: ignore[list-item]


def test_bad_inputs_and_settings() -> None:
    encoder = make_encoder(20)
    ids, mask = torch.ones(2, 5, dtype=torch.int64), torch.ones(2, 5)
    with pytest.raises(ValueError, match="max_length=32"):
        encoder(torch.ones(1, 33, dtype=torch.int64), torch.ones(1, 33))
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        encoder(ids * 20, mask)
    with pytest.raises(ValueError, match="shape of ids"):
        encoder(ids, mask[:, :4])
    with pytest.raises(ValueError, match="at least one real token"):
        encoder(ids, torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="integer token ids"):
        encoder(ids.float(), mask)
    for bad in ({"embedding_dim": 10, "num_heads": 4}, {"pooling": "max"}, {"pad_id": 20}, {"dropout": 1.0}):
        with pytest.raises(ConfigError):
            TransformerTextEncoder(20, **{**TINY, **bad})


# --- the Hugging Face hook --------------------------------------------------------------------------


@pytest.fixture()
def offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restore the Hub switches after the test (the hook sets them for the whole process)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture()
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "bert-local"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8}))
    return folder


@pytest.mark.usefixtures("offline_env", "no_network")
@pytest.mark.parametrize(
    "name", ["microsoft/BiomedVLP-CXR-BERT-general", "bert-base-uncased", "/no/such/folder"]
)
def test_hub_names_and_missing_folders_are_refused(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_import() -> None:
        raise AssertionError("transformers imported before the path was checked")

    monkeypatch.setattr(text_encoder, "_import_transformers", must_not_import)
    for build in (HuggingFaceTextEncoder, HuggingFaceTokenizer):
        with pytest.raises(ConfigError, match="not an existing local folder") as error:
            build(name)
        assert "never downloads" in str(error.value) and "--local-dir" in str(error.value)


@pytest.mark.usefixtures("offline_env", "no_network")
def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no config\.json"):
        HuggingFaceTextEncoder(str(tmp_path))


@pytest.mark.usefixtures("offline_env", "no_network")
def test_missing_transformers_package_is_a_clear_error(
    model_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    for build in (HuggingFaceTextEncoder, HuggingFaceTokenizer):
        with pytest.raises(ConfigError, match="pip install transformers"):
            build(str(model_folder))
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


class _Output:
    def __init__(self, hidden: Tensor) -> None:
        self.last_hidden_state = hidden


class _TinyModel(nn.Module):
    """Stands in for a transformers model (the package is not installed here): a real torch module
    whose hidden states depend on the token and on the number of real tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(hidden_size=8)
        self.embedding = nn.Embedding(30, 8)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> _Output:
        counts = attention_mask.sum(dim=1, keepdim=True).unsqueeze(-1).float()
        return _Output(self.embedding(input_ids) * counts)


class _TinyTokenizer:
    pad_token_id = 0

    def __len__(self) -> int:
        return 30

    def __call__(
        self, texts: list[str], padding: str, truncation: bool, max_length: int, return_tensors: str
    ):
        assert padding == "max_length" and truncation and return_tensors == "np"
        ids = np.zeros((len(texts), max_length), dtype=np.int32)
        for i, text in enumerate(texts):
            row = [1, *[2 + len(w) % 28 for w in text.split()][: max_length - 2], 29]
            ids[i, : len(row)] = row
        return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int32)}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids if not skip_special_tokens or i not in (0, 1, 29))


@pytest.fixture()
def fake_transformers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, Any], str | None]]:
    """A stand-in ``transformers`` module recording every from_pretrained call and the offline switch."""
    calls: list[tuple[str, str, dict[str, Any], str | None]] = []

    def factory(kind: str, make: Any) -> type:
        class Auto:
            @staticmethod
            def from_pretrained(path: str, **kwargs: Any) -> Any:
                calls.append((kind, path, kwargs, os.environ.get("HF_HUB_OFFLINE")))
                torch.manual_seed(0)
                return make()

        return Auto

    module = types.ModuleType("transformers")
    module.AutoModel = factory("model", _TinyModel)  # type: ignore[attr-defined]
    module.AutoTokenizer = factory("tokenizer", _TinyTokenizer)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "transformers", module)
    return calls


@pytest.mark.usefixtures("offline_env", "no_network")
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_local_model_contract_and_pooling(model_folder: Path, fake_transformers, pooling: str) -> None:
    encoder = HuggingFaceTextEncoder(str(model_folder), pooling=pooling)
    assert encoder.embedding_dim == 8
    assert module_spec(encoder) == {
        "class_path": "modalities.xray.text_encoder.HuggingFaceTextEncoder",
        "init_args": {"local_path": str(model_folder), "pooling": pooling},
    }
    ids, mask, index = encode_sentences(
        encoder.tokenizer, [["lungs are clear", "no effusion"], ["normal"]], 6
    )
    assert ids.dtype == torch.int64 and ids.shape == (3, 6) and index.tolist() == [0, 0, 1]
    assert ids[0].tolist() == [1, 7, 5, 7, 29, 0] and mask[0].tolist() == [1, 1, 1, 1, 1, 0]
    with torch.no_grad():
        tokens = encoder.forward_tokens(ids, mask)
        pooled = encoder(ids, mask)
        hidden = encoder.model.embedding(ids) * mask.sum(dim=1).view(-1, 1, 1).float()
    assert torch.equal(tokens, hidden * mask.unsqueeze(-1))
    for row in range(3):
        n = int(mask[row].sum())
        expected = hidden[row, 0] if pooling == "cls" else hidden[row, :n].mean(dim=0)
        torch.testing.assert_close(pooled[row], expected)
    assert encoder.tokenizer.decode(ids[0].tolist()) == "7 5 7"
    assert [(kind, path) for kind, path, _, _ in fake_transformers] == [
        ("model", str(model_folder.resolve())),
        ("tokenizer", str(model_folder.resolve())),
    ]
    for _, _, kwargs, offline in fake_transformers:
        assert kwargs == {"local_files_only": True, "trust_remote_code": False} and offline == "1"


@pytest.mark.usefixtures("offline_env", "no_network")
def test_local_model_load_failure_is_a_config_error(
    model_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        @staticmethod
        def from_pretrained(path: str, **kwargs: Any) -> Any:
            raise OSError("no file named pytorch_model.bin")

    module = types.ModuleType("transformers")
    module.AutoModel = Broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "transformers", module)
    with pytest.raises(
        ConfigError, match=r"cannot load the model from this folder offline.*pytorch_model\.bin"
    ):
        HuggingFaceTextEncoder(str(model_folder))
