"""The Hugging Face hook inside the alignment objective, with a REAL transformers model: a tiny BERT
(random weights, its own WordPiece vocabulary) written to a local folder by transformers itself, loaded
offline by modalities.xray.text_encoder.HuggingFaceTextEncoder, trained and rebuilt through
GazeAlignment with the model's own tokenizer (tokenizer=None)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from medcl.configurable import instantiate_spec, module_spec
from medcl.errors import ConfigError
from medcl.objectives import GazeAlignment
from modalities.xray.encoders import XrayResNet
from modalities.xray.text import split_sentences
from tasks.image_text import ImageTextModel

transformers = pytest.importorskip(
    "transformers", reason="transformers is a dev dependency (pip install -e .[dev])"
)

WORDS = [
    *("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","),
    *("lungs", "are", "clear", "no", "pleural", "effusion", "bilateral", "patchy", "opacities", "in"),
    *("the", "lower", "lobes", "heart", "size", "is", "normal", "right", "left", "lobe"),
    *("consolidation", "small"),
]
REPORTS = [
    "Bilateral patchy opacities in the lower lobes. No pleural effusion.",
    "The heart size is normal. Lungs are clear.",
    "Right lower lobe consolidation. Small left pleural effusion.",
    "Lungs are clear.",
]


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network for the test, and the hub switches that the hook sets restored afterwards."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)})
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def make_objective(folder: Path) -> GazeAlignment:
    objective = GazeAlignment(
        text_encoder={
            "class_path": "modalities.xray.text_encoder.HuggingFaceTextEncoder",
            "init_args": {"local_path": str(folder), "pooling": "cls"},
        },
        tokenizer=None,  # the model folder's own WordPiece tokenizer
        sentence_splitter="modalities.xray.text.split_sentences",
        projection_dim=8,
        max_sentences=3,
        max_length=12,
        gather_distributed=False,
    )
    objective.bind(16)
    return objective


def batch_of(objective: GazeAlignment) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    transform = objective.item_transform("image")
    items = []
    for k, report in enumerate(REPORTS):
        made = transform({"image": rng.random((1, 32, 32)).astype(np.float32), "report": report})
        item = {key: torch.as_tensor(made[key]) for key in transform.output_keys}
        item["patient"] = k // 2
        items.append(item)
    return default_collate(items)


@pytest.mark.usefixtures("offline")
def test_the_model_tokenizer_is_used_as_is_and_the_text_model_trains(bert_folder: Path) -> None:
    objective = make_objective(bert_folder)
    assert objective.tokenizer_fitted  # nothing to fit
    objective.setup_data(object())  # a no-op: it does not even look at the data
    with pytest.raises(ConfigError, match="nothing to fit"):
        objective.fit_tokenizer(REPORTS)
    batch = batch_of(objective)
    # the WordPiece ids of the model's own tokenizer, sentence by sentence
    first = [s for s in split_sentences(REPORTS[0]) if s.strip()]
    expected = objective.text_encoder.tokenizer.encode_batch(first, 12)[0]
    np.testing.assert_array_equal(batch["text_ids"][0, : len(first)].numpy(), expected)
    assert int(batch["text_ids"][0, 0, 0]) == WORDS.index("[CLS]")
    assert WORDS.index("[UNK]") not in set(batch["text_ids"][0, 0].tolist())  # every word is in the vocab

    torch.manual_seed(0)
    encoder = XrayResNet(layers=(1, 1, 1, 1), block_inplanes=(4, 8, 8, 16))
    terms = objective.forward_batch(encoder, batch)
    assert torch.isfinite(terms["loss"]) and float(terms["image_report"]) > 0
    terms["loss"].backward()
    bert_grads = [p.grad for p in objective.text_encoder.model.parameters() if p.grad is not None]
    assert bert_grads and any(float(g.abs().sum()) > 0 for g in bert_grads)
    assert objective.get_extra_state() == {"tokenizer": None}  # the folder holds the tokenizer


@pytest.mark.usefixtures("offline")
def test_spec_and_weights_rebuild_the_same_objective_and_towers(bert_folder: Path, tmp_path: Path) -> None:
    objective = make_objective(bert_folder).eval()
    torch.manual_seed(0)
    encoder = XrayResNet(layers=(1, 1, 1, 1), block_inplanes=(4, 8, 8, 16)).eval()
    spec = module_spec(objective)
    assert spec is not None and spec["init_args"]["tokenizer"] is None
    rebuilt = instantiate_spec(spec)
    rebuilt.bind(16)
    rebuilt.load_state_dict(objective.state_dict())
    rebuilt.eval()
    batch = batch_of(objective)
    with torch.no_grad():
        assert float(rebuilt.forward_batch(encoder, batch)["loss"]) == pytest.approx(
            float(objective.forward_batch(encoder, batch)["loss"]), rel=1e-6
        )
    # the evaluation towers from a checkpoint of this objective
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"objective.{k}": v for k, v in objective.state_dict().items()})
    path = tmp_path / "hf.ckpt"
    torch.save({"state_dict": state, "medcl": {"encoder": module_spec(encoder), "objective": spec}}, path)
    towers = ImageTextModel.from_checkpoint(path)
    direct = ImageTextModel(encoder, objective)
    np.testing.assert_allclose(towers.embed_texts(REPORTS), direct.embed_texts(REPORTS), atol=1e-6)


def test_an_encoder_without_its_own_tokenizer_needs_a_spec() -> None:
    with pytest.raises(ConfigError, match="has no tokenizer of its own"):
        GazeAlignment(
            text_encoder={
                "class_path": "modalities.xray.text_encoder.TransformerTextEncoder",
                "init_args": {
                    "vocab_size": 50,
                    "embedding_dim": 8,
                    "depth": 1,
                    "num_heads": 2,
                    "max_length": 32,
                },
            },
            tokenizer=None,
            sentence_splitter="modalities.xray.text.split_sentences",
        )
