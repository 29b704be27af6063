"""PEFT adapters (LoRA & co.) on a generative retriever: what trains, save/load/merge fidelity, the recipe path."""

import copy
import json
from pathlib import Path

import pytest
from recipes_util import load_recipe
import torch

from genretrieval.config import ConfigError, parse_config
from genretrieval.ids import AtomicIdScheme
from genretrieval.modeling.adapters import (
    adaptable_layer_names,
    apply_adapter,
    count_parameters,
    is_adapted,
    load_adapter,
    merge_adapter,
    new_token_ids,
    save_adapter,
)
from genretrieval.modeling.retriever import GenerativeRetriever, ModelConfig, build_model
from genretrieval.tokenization import build_tokenizer
from genretrieval.training.arguments import PeftSettings, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "configs" / "smoke.yaml")
ITEMS = [f"sku-{i}" for i in range(12)]
TEXTS = ["red running shoes", "blue denim jacket", "green tea mug", "wireless mouse black", "leather wallet brown",
         "cotton socks white", "yoga mat purple", "steel water bottle", "paper notebook lined", "usb cable long"]
TINY = dict(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16, dropout_rate=0.0)
LORA = PeftSettings(method="lora", r=4, alpha=8, dropout=0.0, target_modules=["q", "v"], train_new_tokens=True)


def tiny_retriever(seed: int = 0) -> GenerativeRetriever:
    torch.manual_seed(seed)
    scheme = AtomicIdScheme(ITEMS)
    tokenizer = build_tokenizer(TEXTS * 3, scheme.new_tokens())
    model = build_model(ModelConfig(**TINY), tokenizer)
    return GenerativeRetriever(model, tokenizer, scheme, max_history=4, titles={i: f"title {i}" for i in ITEMS})


def batch(retriever: GenerativeRetriever) -> dict[str, torch.Tensor]:
    tok = retriever.tokenizer
    sources = [retriever.format_search("red shoes"), retriever.format_recommend(ITEMS[:3]),
               retriever.format_recommend(ITEMS[4:8]), retriever.format_search("tea mug usb")]
    enc = tok(sources, padding=True, return_tensors="pt")
    labels = tok(text_target=[retriever.format_target(i) for i in ("sku-1", "sku-3", "sku-8", "sku-2")],
                 padding=True, return_tensors="pt")["input_ids"]
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def logits(retriever: GenerativeRetriever, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    retriever.model.eval()
    with torch.no_grad():
        return retriever.model(**inputs).logits


def train_steps(retriever: GenerativeRetriever, inputs: dict[str, torch.Tensor], steps: int = 3) -> None:
    params = [p for p in retriever.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-2)
    retriever.model.train()
    for _ in range(steps):
        retriever.model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    retriever.model.eval()


@pytest.fixture(scope="module")
def trained():
    """(plain base retriever, a copy adapted with LoRA + ID rows and trained a few steps, the batch)."""
    base = tiny_retriever()
    adapted = apply_adapter(GenerativeRetriever(copy.deepcopy(base.model), base.tokenizer, base.id_scheme,
                                                max_history=4, titles=base.titles), LORA)
    inputs = batch(base)
    train_steps(adapted, inputs)
    return base, adapted, inputs


# ---- settings ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "lora", "r": 0}, "peft.r must be an integer >= 1, got 0"),
        ({"method": "lora", "alpha": 0}, "peft.alpha"),
        ({"method": "lora", "dropout": 1.0}, "peft.dropout"),
        ({"method": "prefix"}, "peft.method must be one of"),
        ({"method": "lora", "target_modules": []}, "peft.target_modules must be a non-empty list"),
        ({"method": "lora", "target_modules": ["q", "q"]}, "duplicates"),
        ({"method": "ia3", "train_new_tokens": True}, "peft.train_new_tokens needs peft.method in"),
    ],
)
def test_bad_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PeftSettings(**kwargs)


def test_settings_from_yaml_and_overrides(tmp_path):
    config = parse_config(TrainConfig, str(ROOT / "recipes" / "configs" / "lora_finetune.yaml"), ["--peft.r", "4"])
    assert config.peft.method == "lora" and config.peft.r == 4 and config.peft.target_modules == ["q", "v"]
    assert config.mixture.tasks == ["recommend"] and config.model.model_name_or_path
    assert TrainConfig().peft.method == "none" and not TrainConfig().peft.enabled
    with pytest.raises(ConfigError, match="'peft.method': 'prefix' is not one of"):
        parse_config(TrainConfig, None, ["--peft.method", "prefix", "--model.model_name_or_path", "x"])
    with pytest.raises(ConfigError, match="fine-tunes an existing model: set model.model_name_or_path"):
        parse_config(TrainConfig, None, ["--peft.method", "lora"])


def test_unknown_target_module_fails_before_touching_the_model():
    retriever = tiny_retriever()
    assert {"q", "k", "v", "o", "wi", "wo", "lm_head"} <= set(adaptable_layer_names(retriever.model))
    with pytest.raises(ConfigError, match=r"peft.target_modules: \['query'\] match no linear layer .*'q'"):
        apply_adapter(retriever, PeftSettings(method="lora", target_modules=["q", "query"]))
    assert not is_adapted(retriever.model)
    assert apply_adapter(retriever, PeftSettings()) is retriever and not is_adapted(retriever.model)  # method none


# ---- what trains ---------------------------------------------------------------------------------------------
def test_only_lora_weights_and_new_token_rows_are_trainable(trained):
    base, adapted, _ = trained
    ids = new_token_ids(base)
    assert len(ids) == len(ITEMS) + 2  # item tokens + "search:" + "recommend:"
    d = TINY["d_model"]
    inner = TINY["num_heads"] * TINY["d_kv"]
    # q and v in 2 encoder self-attentions, 2 decoder self- and 2 cross-attentions; each LoRA is r×(in + out).
    lora = 12 * LORA.r * (d + inner)
    trainable, total = count_parameters(adapted.model)
    assert trainable == lora + len(ids) * d
    assert total == sum(p.numel() for p in base.model.parameters()) + trainable
    names = [n for n, p in adapted.model.named_parameters() if p.requires_grad]
    assert all("lora_A" in n or "lora_B" in n or "trainable_tokens_delta" in n for n in names), names
    assert sum("trainable_tokens_delta" in n for n in names) == 1  # one copy of the rows, shared by the tied uses


def test_training_changes_adapter_and_id_rows_only(trained):
    base, adapted, inputs = trained
    ids = torch.tensor(new_token_ids(base))
    others = torch.tensor([i for i in range(len(base.tokenizer)) if i not in set(ids.tolist())])
    with torch.no_grad():
        before = base.model.get_input_embeddings().weight
        after = adapted.model.get_input_embeddings()(torch.arange(len(base.tokenizer)))
    assert not torch.equal(after[ids], before[ids]) and (after[ids] - before[ids]).abs().sum(1).gt(0).all()
    assert torch.equal(after[others], before[others])
    lora_b = [p for n, p in adapted.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero
    # The frozen weights the PEFT model wraps are the base's, untouched.
    base_params = dict(base.model.named_parameters())
    for name, param in adapted.model.get_base_model().named_parameters():
        if not param.requires_grad:
            plain = name.replace(".base_layer", "").replace(".token_adapter", "").replace(".original_module", "")
            if plain in base_params:
                assert torch.equal(param, base_params[plain]), name
    # ... and the trained model answers differently from the base.
    assert not torch.allclose(logits(adapted, inputs), logits(base, inputs), atol=1e-4)


# ---- save / load / merge -------------------------------------------------------------------------------------
def test_saved_adapter_loads_onto_a_fresh_base_with_identical_outputs(trained, tmp_path):
    base, adapted, inputs = trained
    save_adapter(adapted, tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "id_scheme.json",
            "genretrieval_adapter.json"} <= files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directories left behind"
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] and sorted(config["target_modules"]) == ["q", "v"]
    assert config["trainable_token_indices"] == new_token_ids(base)
    # No full embedding matrix in the adapter: only the trainable rows.
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert all(t.shape[0] < len(base.tokenizer) for t in weights.values())

    reloaded = load_adapter(tiny_retriever(), tmp_path / "adapter")  # same seed: the same base, built anew
    assert is_adapted(reloaded.model) and reloaded.titles == base.titles and reloaded.max_history == 4
    assert torch.equal(logits(reloaded, inputs), logits(adapted, inputs))
    assert reloaded.search(["red shoes"], k=3).item_ids == adapted.search(["red shoes"], k=3).item_ids
    # A saved retriever directory works as the base too.
    base.save_pretrained(tmp_path / "base")
    from_dir = load_adapter(tmp_path / "base", tmp_path / "adapter")
    assert torch.equal(logits(from_dir, inputs), logits(adapted, inputs))


def test_wrong_base_is_rejected(trained, tmp_path):
    _, adapted, _ = trained
    save_adapter(adapted, tmp_path / "adapter")
    with pytest.raises(ValueError, match="weights differ from those the adapter"):
        load_adapter(tiny_retriever(seed=1), tmp_path / "adapter")
    with pytest.raises(FileNotFoundError, match="not an adapter written by save_adapter"):
        load_adapter(tiny_retriever(), tmp_path)


def test_merged_model_matches_the_adapter_and_saves_as_a_plain_retriever(trained, tmp_path):
    base, adapted, inputs = trained
    expected = logits(adapted, inputs)
    merged = merge_adapter(GenerativeRetriever(copy.deepcopy(adapted.model), base.tokenizer, base.id_scheme,
                                               max_history=4))
    assert not is_adapted(merged.model) and type(merged.model).__name__ == "T5ForConditionalGeneration"
    assert merged.model.lm_head.weight is merged.model.shared.weight  # still tied
    assert (logits(merged, inputs) - expected).abs().max() < 1e-5
    merged.save_pretrained(tmp_path / "merged")
    loaded = GenerativeRetriever.from_pretrained(tmp_path / "merged")
    assert (logits(loaded, inputs) - expected).abs().max() < 1e-5
    with pytest.raises(ValueError, match="no adapter to merge"):
        merge_adapter(merged)


def test_pretrained_base_is_resized_before_loading(tmp_path):
    """A text-only pretrained T5 (no ID-token rows): the adapter's trainable rows fill the rows resizing adds."""
    from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    scheme = AtomicIdScheme(ITEMS)
    tokenizer = build_tokenizer(TEXTS * 3, scheme.new_tokens())
    text_rows = min(tokenizer.convert_tokens_to_ids(["search:"] + scheme.new_tokens()))
    t5 = T5Config(vocab_size=text_rows, d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
                  d_kv=16, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(t5).save_pretrained(tmp_path / "t5")
    results = {}
    for train_new_tokens in (True, False):
        model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "t5")
        model.resize_token_embeddings(len(tokenizer))
        retriever = apply_adapter(GenerativeRetriever(model, tokenizer, scheme),
                                  PeftSettings(method="lora", r=2, target_modules=["q", "v", "wo"],
                                               train_new_tokens=train_new_tokens))
        inputs = batch(retriever)
        train_steps(retriever, inputs, steps=2)
        save_adapter(retriever, tmp_path / f"adapter-{train_new_tokens}")
        results[train_new_tokens] = (retriever, inputs)
    retriever, inputs = results[True]
    loaded = load_adapter(tmp_path / "t5", tmp_path / "adapter-True")
    assert loaded.model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert torch.equal(logits(loaded, inputs), logits(retriever, inputs))
    # Without trainable rows the new rows were random and unsaved: the adapter cannot be reproduced from the base.
    with pytest.raises(ValueError, match="not stored in it"):
        load_adapter(tmp_path / "t5", tmp_path / "adapter-False")


@pytest.mark.parametrize("method, train_new_tokens", [("dora", True), ("loha", False), ("lokr", False),
                                                      ("ia3", False)])
def test_other_peft_methods_train_save_load_and_merge(method, train_new_tokens, tmp_path):
    base = tiny_retriever()
    adapted = apply_adapter(GenerativeRetriever(copy.deepcopy(base.model), base.tokenizer, base.id_scheme),
                            PeftSettings(method=method, r=2, alpha=4, dropout=0.0,
                                         target_modules=["q", "v", "wo"], train_new_tokens=train_new_tokens))
    inputs = batch(base)
    train_steps(adapted, inputs, steps=2)
    expected = logits(adapted, inputs)
    assert not torch.allclose(expected, logits(base, inputs), atol=1e-5)
    save_adapter(adapted, tmp_path / "adapter")
    reloaded = load_adapter(base, tmp_path / "adapter")
    assert not is_adapted(base.model)  # the base retriever is copied, not changed
    assert torch.allclose(logits(reloaded, inputs), expected, atol=1e-6)
    merged = merge_adapter(reloaded)
    assert (logits(merged, inputs) - expected).abs().max() < 1e-5


# ---- the recipe ----------------------------------------------------------------------------------------------
def _recipe():
    return load_recipe("train")


@pytest.fixture(scope="module")
def smoke_base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    _recipe().main([SMOKE, "--training.output_dir", str(out), "--training.max_steps", "4",
                    "--eval.num_examples_to_show", "0", "--eval.max_validation_requests", "20"])
    return out / "model"


def test_recipe_fine_tunes_a_trained_model_with_lora(smoke_base, tmp_path):
    out = tmp_path / "lora"
    result = _recipe().main([SMOKE, "--model.model_name_or_path", str(smoke_base), "--mixture.tasks", "[recommend]",
                             "--peft.method", "lora", "--peft.r", "4", "--training.max_steps", "4",
                             "--training.eval_every", "2", "--training.output_dir", str(out),
                             "--eval.num_examples_to_show", "0", "--eval.max_validation_requests", "20"])
    assert set(result["test"]) == {"recommend"}
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "best" / "adapter_model.safetensors").is_file()  # the best state of a PEFT run is its adapter
    assert json.loads((out / "config.json").read_text())["peft"]["method"] == "lora"
    merged = GenerativeRetriever.from_pretrained(out / "model")
    assert not is_adapted(merged.model)
    base = GenerativeRetriever.from_pretrained(smoke_base)
    assert merged.id_scheme == base.id_scheme  # the trained model's item IDs were reused
    adapter = load_adapter(smoke_base, out / "adapter")
    histories = [base.item_ids[:3], base.item_ids[10:14]]
    enc = base.tokenizer([base.format_recommend(h) for h in histories], padding=True, return_tensors="pt")
    inputs = {**enc, "decoder_input_ids": torch.zeros((2, 1), dtype=torch.long)}
    assert (logits(adapter, inputs) - logits(merged, inputs)).abs().max() < 1e-5
    assert not torch.allclose(logits(base, inputs), logits(merged, inputs), atol=1e-4)
    assert merged.recommend(histories, k=5).item_ids == adapter.recommend(histories, k=5).item_ids


@pytest.mark.parametrize("args, message", [
    (["--peft.r", "0"], "peft.r must be an integer >= 1"),
    (["--peft.target_modules", "[q, query]"], "peft.target_modules: ['query'] match no linear layer"),
])
def test_recipe_rejects_bad_peft_settings(smoke_base, args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _recipe().main([SMOKE, "--model.model_name_or_path", str(smoke_base), "--peft.method", "lora",
                        "--training.output_dir", str(tmp_path / "x")] + args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_recipe_lora_resume_equals_uninterrupted(smoke_base, tmp_path):
    """Checkpoints of a PEFT run hold the adapter state: interrupting and resuming changes nothing."""
    from safetensors.torch import load_file

    recipe = _recipe()
    common = [SMOKE, "--model.model_name_or_path", str(smoke_base), "--peft.method", "lora",
              "--training.max_steps", "6", "--training.eval_every", "3", "--training.save_every", "3",
              "--eval.num_examples_to_show", "0", "--eval.max_validation_requests", "20"]
    full, parts = tmp_path / "full", tmp_path / "parts"
    recipe.main(common + ["--training.output_dir", str(full)])
    assert recipe.main(common + ["--training.output_dir", str(parts), "--training.interrupt_after_steps", "3"]) == {
        "interrupted_at_step": 3}
    recipe.main(common + ["--training.output_dir", str(parts), "--resume_from_checkpoint", "latest"])
    for name in ("adapter/adapter_model.safetensors", "model/model.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(parts / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
