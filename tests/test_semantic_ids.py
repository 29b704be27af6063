"""Semantic IDs as an item-ID scheme: tokens, save/load, exact scoring, decoding, training end to end."""

import numpy as np
import pytest
import torch

from genretrieval.evaluation.evaluator import Request
from genretrieval.ids import load_id_scheme
from genretrieval.ids.semantic import SemanticIdConfig, SemanticIdScheme, build_semantic_ids, training_sequences
from genretrieval.modeling.retriever import GenerativeRetriever, ModelConfig, build_model
from genretrieval.tokenization import build_tokenizer

ITEMS = [f"sku-{i}" for i in range(12)]
# Shared prefixes on purpose: items 0-2 share <a_0><b_0>, the collision digit tells them apart.
CODES = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [1, 0, 0], [1, 1, 0], [1, 2, 0], [2, 0, 0],
                  [2, 0, 1], [2, 1, 0], [3, 0, 0], [3, 2, 0]])
TEXTS = ["red running shoes", "blue denim jacket", "green tea mug", "wireless mouse black", "leather wallet brown",
         "cotton socks white", "yoga mat purple", "steel water bottle", "paper notebook lined", "usb cable long"]


def test_tokens_one_range_per_level():
    scheme = SemanticIdScheme(ITEMS, CODES, [4, 3, 3])
    assert scheme.id_length == 3
    assert scheme.encode("sku-8") == ("<a_2>", "<b_0>", "<c_1>")
    assert scheme.new_tokens()[:5] == ["<a_0>", "<a_1>", "<a_2>", "<a_3>", "<b_0>"]
    assert len(scheme.new_tokens()) == 4 + 3 + 3
    assert scheme.decode(("<a_2>", "<b_0>", "<c_1>")) == "sku-8"
    assert scheme.decode(("<a_2>", "<b_2>", "<c_0>")) is None


def test_round_trip_and_validation(tmp_path):
    scheme = SemanticIdScheme(ITEMS, CODES, [4, 3, 3], info={"diagnostics": {"collision_rate": 0.25}})
    scheme.save(tmp_path)
    loaded = load_id_scheme(tmp_path)
    assert loaded == scheme and loaded.info == scheme.info
    assert loaded.valid_sequences() == scheme.valid_sequences()
    dup = CODES.copy()
    dup[1] = dup[0]
    with pytest.raises(ValueError, match="share the ID"):
        SemanticIdScheme(ITEMS, dup)
    with pytest.raises(ValueError, match="codebook_sizes"):
        SemanticIdScheme(ITEMS, CODES, [2, 3, 3])
    with pytest.raises(ValueError, match="negative code in row 3"):
        SemanticIdScheme(ITEMS, np.where(np.arange(12)[:, None] == 3, -1, CODES))
    with pytest.raises(ValueError, match="codebook_size must be >= 2"):
        SemanticIdConfig(codebook_size=1)
    with pytest.raises(ValueError, match="quantizer"):
        SemanticIdConfig(quantizer="pq")


@pytest.fixture(scope="module")
def retriever():
    torch.manual_seed(0)
    scheme = SemanticIdScheme(ITEMS, CODES, [4, 3, 3])
    tokenizer = build_tokenizer(TEXTS * 3, scheme.new_tokens())
    config = ModelConfig(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16)
    model = build_model(config, tokenizer).eval()
    with torch.no_grad():  # random T5 logits are nearly flat; sharper ones make the orderings non-trivial
        model.shared.weight.mul_(8.0)
    return GenerativeRetriever(model, tokenizer, scheme, max_history=4)


def test_exact_scores_equal_beam_search_scores(retriever):
    requests = [Request("search", "", {"sku-1"}, query="red shoes"),
                Request("recommend", "", {"sku-2"}, history=ITEMS[:3]),
                Request("search", "", {"sku-5"}, query="yoga mat")]
    scores = retriever.score(requests, batch_size=2)
    assert scores.shape == (3, len(ITEMS))
    # The constrained distribution sums to one over the catalog.
    assert torch.allclose(scores.exp().sum(-1), torch.ones(3), atol=1e-4)
    sources = [retriever._format_request(r) for r in requests]
    out = retriever.retrieve(sources, k=len(ITEMS), num_beams=len(ITEMS))  # as many beams as items: exhaustive
    for row, (items, values) in enumerate(zip(out.item_ids, out.scores)):
        assert sorted(items) == sorted(ITEMS)
        expected = torch.tensor([scores[row, ITEMS.index(i)].item() for i in items])
        assert torch.allclose(expected, torch.tensor(values), atol=1e-4)


def test_exact_scores_take_the_same_values_on_every_code_path(retriever):
    """Broadcast encoder states vs states expanded per prefix; sliced vs full output layer; the model is left as it was."""
    requests = [Request("search", "", {"sku-1"}, query="red shoes"), Request("recommend", "", {"sku-2"}, history=ITEMS[:3])]
    head, keys = retriever.model.get_output_embeddings(), set(retriever.model.state_dict())
    fast = retriever.score(requests)
    assert retriever.model.get_output_embeddings() is head and set(retriever.model.state_dict()) == keys
    retriever._broadcast_encoder = False
    try:
        expanded = retriever.score(requests)
    finally:
        retriever._broadcast_encoder = True
    torch.testing.assert_close(fast, expanded, atol=1e-5, rtol=1e-5)

    class WrappedHead(torch.nn.Linear):
        """Not a plain Linear (as when an adapter wraps the output layer): scored over the whole vocabulary."""

    wrapped = WrappedHead(head.in_features, head.out_features, bias=head.bias is not None)
    wrapped.weight = head.weight
    retriever.model.set_output_embeddings(wrapped)
    try:
        torch.testing.assert_close(retriever.score(requests), fast, atol=1e-5, rtol=1e-5)
    finally:
        retriever.model.set_output_embeddings(head)
    # The plan skips prefixes with one valid continuation; their log-probability is exactly 0, so every item's
    # score is the sum over the branching positions only, and the distribution still sums to one.
    plan = retriever._score_plan()
    assert any((lv["item_row"] < 0).any() for lv in plan), "no non-branching prefix: the test would not cover the skip"
    assert torch.allclose(fast.exp().sum(-1), torch.ones(2), atol=1e-4)


def test_retrieval_returns_only_catalog_items(retriever):
    out = retriever.retrieve(["search: red shoes", "search: mug"], k=5, num_beams=5)
    for items in out.item_ids:
        assert len(items) == len(set(items)) == 5 and set(items) <= set(ITEMS)


def _toy_tables():
    from genretrieval.data.synthetic import SyntheticConfig, generate_synthetic

    return generate_synthetic(SyntheticConfig(num_items=60, num_users=80, num_topics=4, seed=0))


@pytest.mark.parametrize("embedding", ["content", "collaborative", "joint"])
def test_build_semantic_ids_gives_every_item_one_unique_id(embedding):
    from genretrieval.data.builders import build_examples

    catalog, interactions = _toy_tables()
    examples = build_examples(catalog, interactions)
    config = SemanticIdConfig(embedding=embedding, embedding_dim=8, num_levels=2, codebook_size=4, seed=0)
    scheme = build_semantic_ids(catalog, examples, config)
    assert len(scheme) == len(catalog) and scheme.id_length == 3
    assert len(set(scheme.valid_sequences())) == len(catalog)
    assert all(scheme.decode(scheme.encode(i)) == i for i in catalog["item_id"])
    diag = scheme.info["diagnostics"]
    assert diag["collision_digit_size"] == int(scheme.codes[:, -1].max()) + 1
    again = build_semantic_ids(catalog, examples, config)
    assert np.array_equal(again.codes, scheme.codes)  # deterministic under the seed


def test_training_sequences_rebuild_histories_without_held_out_items():
    from datasets import Dataset

    rows = Dataset.from_dict({"user_id": ["u", "u", "v"], "history": [["a"], ["a", "b"], ["x"]],
                              "target_item": ["b", "c", "y"]})
    assert training_sequences(rows) == [["a", "b", "c"], ["x", "y"]]


def test_train_recipe_with_semantic_ids(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("train_recipe", root / "recipes" / "train.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = tmp_path / "run"
    result = recipe.main([str(root / "recipes" / "configs" / "smoke.yaml"), "--training.output_dir", str(out),
                          "--training.max_steps", "4", "--ids.name", "semantic", "--ids.semantic.embedding_dim", "8",
                          "--ids.semantic.num_levels", "2", "--ids.semantic.codebook_size", "4"])
    assert set(result["test"]) == {"search", "recommend"}
    assert "collision" in capsys.readouterr().out  # the code diagnostics are printed
    loaded = GenerativeRetriever.from_pretrained(out / "model")
    assert isinstance(loaded.id_scheme, SemanticIdScheme) and loaded.id_scheme.id_length == 3
    items = loaded.search("some words", k=3).item_ids[0]
    assert len(items) == 3 and set(items) <= set(loaded.item_ids)
    # A saved scheme is reused as is.
    again = recipe.main([str(root / "recipes" / "configs" / "smoke.yaml"), "--training.output_dir", str(tmp_path / "b"),
                         "--training.max_steps", "2", "--ids.name", "semantic", "--ids.path", str(out / "model")])
    assert again["test"]
    assert load_id_scheme(tmp_path / "b" / "model") == loaded.id_scheme


def test_default_spec_mirrors_config_defaults():
    from dataclasses import asdict
    from pathlib import Path

    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "tokenizers" / "semantic-ids-default.yaml").read_text())
    assert spec["ids"]["semantic"] == asdict(SemanticIdConfig())


def test_build_item_ids_recipe_writes_scheme_and_diagnostics(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("build_item_ids", root / "recipes" / "build_item_ids.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = tmp_path / "ids"
    args = [str(root / "recipes" / "configs" / "smoke.yaml"), "--output_dir", str(out), "--ids.semantic.embedding_dim",
            "8", "--ids.semantic.num_levels", "2", "--ids.semantic.codebook_size", "4"]
    diag = recipe.main(args)
    scheme = load_id_scheme(out)
    assert isinstance(scheme, SemanticIdScheme) and len(scheme) == 60
    assert json.loads((out / "diagnostics.json").read_text()) == diag
    with pytest.raises(SystemExit):  # K larger than the number of items: a clear error, nothing written
        recipe.main(args[:1] + ["--output_dir", str(tmp_path / "bad"), "--ids.semantic.codebook_size", "500"])
    assert not (tmp_path / "bad").exists()


def test_recommend_input_keeps_the_newest_items_that_fit(retriever):
    """Multi-token IDs of a long history would pass max_source_length; truncation must drop the oldest, not the newest."""
    import copy

    narrow = copy.copy(retriever)
    narrow.max_history, narrow.max_source_length = 20, 11
    assert narrow.history_items_kept == 3  # (11 - prefix 1 - eos 1) // 3 tokens per item
    history = ITEMS[:10]
    source = narrow.format_recommend(history)
    assert source == "recommend: " + "".join(retriever.id_scheme.encode_text(i) for i in history[-3:])
    ids = narrow.tokenizer(source, max_length=narrow.max_source_length, truncation=True)["input_ids"]
    assert len(ids) <= narrow.max_source_length and ids[-1] == narrow.tokenizer.eos_token_id  # nothing truncated
    assert retriever.history_items_kept == 4  # max_history when everything fits
