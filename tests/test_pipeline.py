"""pipeline("generative-retrieval"): a saved GenerativeRetriever behind transformers' pipeline API."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import genretrieval
from genretrieval.ids import AtomicIdScheme, UnknownItemError
from genretrieval.ids.semantic import SemanticIdScheme
from genretrieval.modeling.retriever import GenerativeRetriever, ModelConfig, build_model
from genretrieval.tokenization import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
TASK = "generative-retrieval"
ITEMS = [f"sku-{i}" for i in range(12)]
TEXTS = ["red running shoes", "blue denim jacket", "green tea mug", "wireless mouse black", "leather wallet brown",
         "cotton socks white", "yoga mat purple", "steel water bottle", "paper notebook lined", "usb cable long"]
TITLES = {i: f"title {i}" for i in ITEMS[:8]}  # the last four have none: their title falls back to the id
QUERIES = ["red shoes", "tea mug", "usb cable"]
HISTORIES = [ITEMS[:3], ITEMS[5:9], ["sku-11"]]
TINY = ModelConfig(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16)


def _retriever(scheme, seed=0):
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(TEXTS * 3, scheme.new_tokens())
    model = build_model(TINY, tokenizer).eval()
    return GenerativeRetriever(model, tokenizer, scheme, max_history=4, titles=TITLES)


@pytest.fixture(scope="module")
def retriever():
    return _retriever(AtomicIdScheme(ITEMS))


@pytest.fixture(scope="module")
def saved(retriever, tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "retriever"
    retriever.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipe(saved):
    from transformers import pipeline

    return pipeline(TASK, model=str(saved), device="cpu")


def _expected(output, row):
    return [(item, score) for item, score in zip(output.item_ids[row], output.scores[row])]


def _assert_same(results, expected):
    assert [r["item_id"] for r in results] == [item for item, _ in expected]
    assert [r["score"] for r in results] == pytest.approx([score for _, score in expected], abs=1e-5)
    assert [r["rank"] for r in results] == list(range(1, len(expected) + 1))


def test_task_is_registered_with_transformers():
    from transformers import AutoModelForSeq2SeqLM
    from transformers.pipelines import PIPELINE_REGISTRY

    from genretrieval.pipelines import GenerativeRetrievalPipeline

    assert TASK in PIPELINE_REGISTRY.get_supported_tasks()
    entry = PIPELINE_REGISTRY.supported_tasks[TASK]
    assert entry["impl"] is GenerativeRetrievalPipeline and entry["pt"] == (AutoModelForSeq2SeqLM,)


def test_saved_retriever_is_a_plain_t5_for_auto_classes(retriever, saved):
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, T5ForConditionalGeneration

    config = AutoConfig.from_pretrained(saved)
    assert config.model_type == "t5" and config.vocab_size == len(retriever.tokenizer)
    assert not hasattr(config, "custom_pipelines") and not getattr(config, "auto_map", None)  # no remote code
    model = AutoModelForSeq2SeqLM.from_pretrained(saved).eval()
    assert type(model) is T5ForConditionalGeneration
    enc = retriever.tokenizer(["search: red shoes"], return_tensors="pt")
    start = torch.zeros((1, 1), dtype=torch.long)
    with torch.no_grad():
        assert torch.allclose(model(**enc, decoder_input_ids=start).logits,
                              retriever.model(**enc, decoder_input_ids=start).logits, atol=1e-6)


def test_search_equals_retriever_search(pipe, retriever):
    for query in QUERIES:
        results = pipe(query, top_k=5)
        _assert_same(results, _expected(retriever.search([query], k=5), 0))
        assert all(set(r) == {"item_id", "score", "rank", "title"} for r in results)
        assert all(r["title"] == TITLES.get(r["item_id"], r["item_id"]) for r in results)
    assert len(pipe("red shoes")) == 10  # default top_k, as GenerativeRetriever.search


def test_recommend_equals_retriever_recommend(pipe, retriever):
    for exclude in (False, True):
        for history in HISTORIES:
            results = pipe(history=history, top_k=4, exclude_history=exclude)
            _assert_same(results, _expected(retriever.recommend([history], k=4, exclude_history=exclude), 0))
            if exclude:
                assert not {r["item_id"] for r in results} & set(history)
    # Without exclusion, a history's own items can be returned: the flag really changed something.
    seen = pipe(history=ITEMS[:10], top_k=5)
    assert {r["item_id"] for r in seen} & set(ITEMS[:10])
    assert not {r["item_id"] for r in pipe(history=ITEMS[:10], top_k=2, exclude_history=True)} & set(ITEMS[:10])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_batched_inputs_give_one_result_list_per_input(pipe, retriever, batch_size):
    searched = pipe(QUERIES, top_k=3, batch_size=batch_size)
    expected = retriever.search(QUERIES, k=3)
    assert len(searched) == len(QUERIES)
    for row, results in enumerate(searched):
        _assert_same(results, _expected(expected, row))

    recommended = pipe(history=HISTORIES, top_k=3, batch_size=batch_size, exclude_history=True)
    expected = retriever.recommend(HISTORIES, k=3, exclude_history=True)
    assert len(recommended) == len(HISTORIES)
    for row, results in enumerate(recommended):
        _assert_same(results, _expected(expected, row))


def test_batch_size_set_at_construction(saved, retriever):
    from transformers import pipeline

    batched = pipeline(TASK, model=str(saved), device="cpu", batch_size=2, top_k=2)
    out = batched(QUERIES)
    assert len(out) == 3 and all(len(results) == 2 for results in out)
    _assert_same(out[2], _expected(retriever.search(QUERIES[2:], k=2), 0))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p: p(history=["sku-1", "nope"]), UnknownItemError, "unknown item 'nope'"),
        (lambda p: p(history=[["sku-1"], ["sku-2", "missing-7"]], batch_size=2), UnknownItemError, "missing-7"),
        (lambda p: p(""), ValueError, "non-empty string"),
        (lambda p: p(["red shoes", "   "]), ValueError, "non-empty string"),
        (lambda p: p(history=[]), ValueError, "non-empty list of item ids"),
        (lambda p: p(history=[["sku-1"], []]), ValueError, "history 1 of the batch is empty"),
        (lambda p: p(history="sku-1"), TypeError, "not a string"),
        (lambda p: p(history=["sku-1", ["sku-2"]]), TypeError, "not a mix"),
        (lambda p: p(), ValueError, "nothing to retrieve for"),
        (lambda p: p("red shoes", history=["sku-1"]), ValueError, "not both"),
        (lambda p: p([]), ValueError, "list of queries is empty"),
        (lambda p: p([["sku-1"]]), TypeError, "history="),
        (lambda p: p("red shoes", top_k=0), ValueError, "top_k must be an integer between 1 and the number of items"),
        (lambda p: p("red shoes", top_k=-3), ValueError, "got -3"),
        (lambda p: p("red shoes", top_k=13), ValueError, r"number of items \(12\), got 13"),
        (lambda p: p("red shoes", top_k=2.5), ValueError, "top_k"),
        (lambda p: p("red shoes", num_beams=0), ValueError, "num_beams"),
        (lambda p: p(history=["sku-1"], exclude_history="yes"), ValueError, "exclude_history"),
    ],
)
def test_bad_requests_fail_with_a_clear_error(pipe, call, error, match):
    with pytest.raises(error, match=match):
        call(pipe)


def test_top_k_is_also_checked_at_construction(saved):
    from transformers import pipeline

    with pytest.raises(ValueError, match="top_k must be"):
        pipeline(TASK, model=str(saved), device="cpu", top_k=0)


def test_accepts_a_loaded_retriever(retriever, pipe):
    from transformers import pipeline

    from genretrieval.pipelines import GenerativeRetrievalPipeline

    direct = pipeline(TASK, model=retriever, device="cpu")
    assert isinstance(direct, GenerativeRetrievalPipeline) and direct.retriever is retriever
    _assert_same(direct("tea mug", top_k=4), [(r["item_id"], r["score"]) for r in pipe("tea mug", top_k=4)])
    with pytest.raises(ValueError, match="not a GenerativeRetriever and another tokenizer"):
        GenerativeRetrievalPipeline(model=retriever, tokenizer=pipe.tokenizer, device="cpu")


def test_a_model_directory_without_the_retriever_files_is_rejected(retriever, tmp_path):
    from transformers import pipeline

    retriever.model.save_pretrained(tmp_path / "bare")
    retriever.tokenizer.save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match="directory written by GenerativeRetriever.save_pretrained"):
        pipeline(TASK, model=str(tmp_path / "bare"), device="cpu")


def test_pipeline_save_pretrained_writes_a_whole_retriever(pipe, tmp_path):
    from transformers import pipeline

    pipe.save_pretrained(tmp_path / "copy")
    files = {p.name for p in (tmp_path / "copy").iterdir()}
    assert {"model.safetensors", "id_scheme.json", "genretrieval.json", "catalog_titles.json"} <= files
    assert not any(f.endswith(".py") for f in files), "no pipeline code may be saved as remote code"
    assert "custom_pipelines" not in json.loads((tmp_path / "copy" / "config.json").read_text())
    again = pipeline(TASK, model=str(tmp_path / "copy"), device="cpu")
    _assert_same(again("usb cable", top_k=3), [(r["item_id"], r["score"]) for r in pipe("usb cable", top_k=3)])


def test_multi_token_ids_go_through_beam_search(tmp_path):
    from transformers import pipeline

    codes = np.array([[i // 4, i % 4] for i in range(len(ITEMS))])  # 3 x 4 two-token IDs
    retriever = _retriever(SemanticIdScheme(ITEMS, codes, [3, 4]), seed=1)
    retriever.save_pretrained(tmp_path / "semantic")
    pipe = pipeline(TASK, model=str(tmp_path / "semantic"), device="cpu")
    for query in QUERIES[:2]:
        _assert_same(pipe(query, top_k=4, num_beams=6), _expected(retriever.search([query], k=4, num_beams=6), 0))
    batched = pipe(history=HISTORIES, top_k=3, batch_size=2, exclude_history=True)
    assert len(batched) == 3
    for history, results in zip(HISTORIES, batched):
        _assert_same(results, _expected(retriever.recommend([history], k=3, exclude_history=True), 0))


def test_registration_when_transformers_pipelines_is_already_loaded():
    from transformers.pipelines import PIPELINE_REGISTRY

    entry = PIPELINE_REGISTRY.supported_tasks.pop(TASK)
    try:
        assert TASK not in PIPELINE_REGISTRY.get_supported_tasks()
        genretrieval._install_pipeline_registration()  # what `import genretrieval` does in that case
        assert PIPELINE_REGISTRY.supported_tasks[TASK]["impl"] is entry["impl"]
        assert not any(getattr(f, "_genretrieval_pipeline_hook", False) for f in sys.meta_path)
    finally:
        PIPELINE_REGISTRY.supported_tasks[TASK] = entry


def _run(code, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_import_genretrieval_stays_light():
    out = _run(
        """
        import sys
        import genretrieval
        print(sorted(m for m in ("torch", "transformers", "numpy") if m in sys.modules),
              any(getattr(f, "_genretrieval_pipeline_hook", False) for f in sys.meta_path))
        """
    )
    assert out.strip() == "[] True"  # nothing heavy imported; the registration waits for transformers.pipelines


@pytest.mark.slow  # a fresh interpreter pays the ~6 s (CPU) import of transformers' pipelines
def test_fresh_process_import_is_light_and_pipeline_works(saved, pipe):
    # The README snippet, in a process where nothing is imported yet: `import genretrieval` must not pull in
    # torch or transformers, and `from transformers import pipeline` afterwards must find the task.
    out = _run(
        """
        import json, sys
        import genretrieval
        heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        from transformers import pipeline

        pipe = pipeline("generative-retrieval", model=sys.argv[1])
        hits = pipe("tea mug", top_k=3)
        recs = pipe(history=["sku-0", "sku-1"], top_k=2, exclude_history=True)
        hook_left = any(getattr(f, "_genretrieval_pipeline_hook", False) for f in sys.meta_path)
        print(json.dumps({"heavy": heavy, "hits": hits, "recs": recs, "hook_left": hook_left}))
        """,
        saved,
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["heavy"] == [] and result["hook_left"] is False
    for got, want in ((result["hits"], pipe("tea mug", top_k=3)),
                      (result["recs"], pipe(history=["sku-0", "sku-1"], top_k=2, exclude_history=True))):
        assert [{**r, "score": None} for r in got] == [{**r, "score": None} for r in want]
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-5)


@pytest.mark.slow  # same cost as above
def test_importing_the_pipelines_module_first_registers_once():
    # genretrieval.pipelines itself imports transformers.pipelines: the hook must not re-enter the half-built module.
    out = _run(
        """
        import sys
        from genretrieval.pipelines import GenerativeRetrievalPipeline
        from transformers.pipelines import PIPELINE_REGISTRY
        print(PIPELINE_REGISTRY.supported_tasks["generative-retrieval"]["impl"] is GenerativeRetrievalPipeline,
              any(getattr(f, "_genretrieval_pipeline_hook", False) for f in sys.meta_path))
        """
    )
    assert out.split() == ["True", "False"]
