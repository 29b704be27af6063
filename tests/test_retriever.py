"""The retriever (model + tokenizer + ID scheme) as one saved directory."""

import json

import pytest
import torch

from genretrieval.ids import AtomicIdScheme, UnknownItemError
from genretrieval.modeling.retriever import GenerativeRetriever, ModelConfig, build_model
from genretrieval.tokenization import build_tokenizer

ITEMS = [f"sku-{i}" for i in range(12)]
TEXTS = ["red running shoes", "blue denim jacket", "green tea mug", "wireless mouse black", "leather wallet brown",
         "cotton socks white", "yoga mat purple", "steel water bottle", "paper notebook lined", "usb cable long"]


@pytest.fixture(scope="module")
def retriever():
    torch.manual_seed(0)
    scheme = AtomicIdScheme(ITEMS)
    tokenizer = build_tokenizer(TEXTS * 3, scheme.new_tokens())
    config = ModelConfig(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16)
    model = build_model(config, tokenizer).eval()
    return GenerativeRetriever(model, tokenizer, scheme, max_history=4, titles={i: f"title {i}" for i in ITEMS})


def test_formatting(retriever):
    assert retriever.format_search("  Red   shoes ") == "search: Red shoes"
    assert retriever.format_recommend(ITEMS[:6]) == "recommend: <item_2><item_3><item_4><item_5>"  # last max_history
    with pytest.raises(ValueError, match="non-empty"):
        retriever.format_search("   ")
    with pytest.raises(ValueError, match="at least one item"):
        retriever.format_recommend([])
    with pytest.raises(UnknownItemError, match="unknown item 'nope'"):
        retriever.format_recommend(["nope"])


def test_save_load_round_trip_gives_identical_rankings(retriever, tmp_path):
    queries = ["red shoes", "tea mug", "usb cable"]
    histories = [ITEMS[:3], ITEMS[5:9]]
    before_s = retriever.search(queries, k=5)
    before_r = retriever.recommend(histories, k=5)
    retriever.save_pretrained(tmp_path / "r")
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert "model.safetensors" in files and "id_scheme.json" in files and "genretrieval.json" in files
    assert not any(f.endswith(".bin") for f in files), "weights must be safetensors only"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directories left behind"
    loaded = GenerativeRetriever.from_pretrained(tmp_path / "r")
    after_s = loaded.search(queries, k=5)
    after_r = loaded.recommend(histories, k=5)
    assert after_s.item_ids == before_s.item_ids and after_r.item_ids == before_r.item_ids
    assert torch.allclose(torch.tensor(after_s.scores), torch.tensor(before_s.scores), atol=1e-5)
    assert loaded.title("sku-3") == "title sku-3" and loaded.max_history == 4
    # Saving over an existing directory replaces it whole.
    loaded.save_pretrained(tmp_path / "r")
    assert json.loads((tmp_path / "r" / "genretrieval.json").read_text())["max_history"] == 4


def test_exclude_history_never_returns_seen_items(retriever):
    histories = [ITEMS[:5], ITEMS[3:10]]
    out = retriever.recommend(histories, k=5, exclude_history=True)
    for hist, items in zip(histories, out.item_ids):
        assert not set(hist) & set(items) and len(set(items)) == 5


def test_from_pretrained_rejects_non_retriever_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved GenerativeRetriever"):
        GenerativeRetriever.from_pretrained(tmp_path)


def test_model_config_validation_names_the_field():
    with pytest.raises(ValueError, match="ModelConfig.d_model must be a positive integer, got 0"):
        ModelConfig(d_model=0)
    with pytest.raises(ValueError, match="dropout_rate"):
        ModelConfig(dropout_rate=1.5)


def test_score_matches_retrieve_for_atomic_ids(retriever):
    from genretrieval.evaluation.evaluator import Request

    sources = [retriever.format_search("red shoes"), retriever.format_recommend(ITEMS[:3])]
    requests = [Request("search", "ignored", {"sku-1"}, query="red shoes"),
                Request("recommend", "ignored", {"sku-2"}, history=ITEMS[:3])]
    scores = retriever.score(requests)
    assert scores.shape == (2, len(ITEMS))
    assert torch.allclose(scores.exp().sum(-1), torch.ones(2), atol=1e-5)  # a distribution over the catalog
    out = retriever.retrieve(sources, k=4)
    for row, (items, vals) in enumerate(zip(out.item_ids, out.scores)):
        top = torch.topk(scores[row], 4)
        assert items == [retriever.item_ids[i] for i in top.indices.tolist()]
        assert torch.allclose(top.values, torch.tensor(vals), atol=1e-5)
