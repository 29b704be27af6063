"""Hub round trip (push_to_hub / from_pretrained(repo_id)) with a mocked HfApi, and the generated model card."""

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import torch
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, metadata_load

from genretrieval.hub import upload_saved_retriever
from genretrieval.ids import AtomicIdScheme
from genretrieval.modeling.retriever import GenerativeRetriever, ModelConfig, build_model
from genretrieval.tokenization import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
ITEMS = [f"sku-{i}" for i in range(12)]
TEXTS = ["red running shoes", "blue denim jacket", "green tea mug", "wireless mouse black", "leather wallet brown",
         "cotton socks white", "yoga mat purple", "steel water bottle", "paper notebook lined", "usb cable long"]
QUERIES = ["red shoes", "tea mug", "usb cable"]
HISTORIES = [ITEMS[:3], ITEMS[5:9]]
METRICS = {"search": {"recall@10": 0.4321, "ndcg@10": 0.2109, "mrr": 0.1875, "num_requests": 32.0},
           "recommend": {"recall@10": 0.1234, "ndcg@10": 0.0567, "mrr": 0.0444, "num_requests": 40.0}}
TRAINING_CONFIG = {"data": {"source": "synthetic"}, "mixture": {"tasks": ["search", "recommend"]},
                   "model": {"d_model": 32, "model_name_or_path": None},
                   "training": {"max_steps": 12, "batch_size": 16, "learning_rate": 0.001, "seed": 7},
                   "eval": {"exclude_history_items": False}}
SERVING_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "id_scheme.json", "genretrieval.json", "catalog_titles.json", "README.md", "training_config.json",
                 "eval_results.json", "trie.safetensors"}


def build_retriever(titles: bool = True) -> GenerativeRetriever:
    torch.manual_seed(0)
    scheme = AtomicIdScheme(ITEMS)
    tokenizer = build_tokenizer(TEXTS * 3, scheme.new_tokens())
    config = ModelConfig(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16)
    model = build_model(config, tokenizer).eval()
    return GenerativeRetriever(model, tokenizer, scheme, max_history=4,
                              titles={i: f"title {i}" for i in ITEMS} if titles else None)


@pytest.fixture(scope="module")
def retriever():
    return build_retriever()


@dataclass
class FakeCommit:
    oid: str
    commit_url: str


class FakeHub:
    """Stands in for the Hub behind HfApi: every repo is a local folder, every commit rewrites it."""

    def __init__(self, root: Path):
        self.root = root
        self.calls: list[tuple[str, dict]] = []
        self.commits: list[list] = []

    def folder(self, repo_id: str) -> Path:
        return self.root / repo_id.replace("/", "--")

    def create_repo(self, api, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        self.folder(repo_id).mkdir(parents=True, exist_ok=True)
        (self.folder(repo_id) / ".gitattributes").touch()
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, api, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def list_repo_files(self, api, repo_id, **kwargs):
        self.calls.append(("list_repo_files", {"repo_id": repo_id, **kwargs}))
        folder = self.folder(repo_id)
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def create_commit(self, api, repo_id, operations, **kwargs):
        operations = list(operations)
        self.calls.append(("create_commit", {"repo_id": repo_id, **kwargs}))
        self.commits.append(operations)
        folder = self.folder(repo_id)
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                target = folder / op.path_in_repo
                target.parent.mkdir(parents=True, exist_ok=True)
                with op.as_file() as src:
                    target.write_bytes(src.read())
            elif isinstance(op, CommitOperationDelete):
                (folder / op.path_in_repo).unlink()
            else:
                raise AssertionError(f"unexpected commit operation {op!r}")
        return FakeCommit(oid="f" * 40, commit_url=f"https://huggingface.co/{repo_id}/commit/{'f' * 40}")

    def called(self, name: str) -> list[dict]:
        return [kwargs for n, kwargs in self.calls if n == name]


@pytest.fixture
def hub(tmp_path):
    fake = FakeHub(tmp_path / "hub")
    names = ["create_repo", "create_branch", "list_repo_files", "create_commit"]
    patches = [mock.patch.object(HfApi, name, autospec=True, side_effect=getattr(fake, name)) for name in names]
    for p in patches:
        p.start()
    yield fake
    for p in patches:
        p.stop()


def assert_same_results(a: GenerativeRetriever, b: GenerativeRetriever) -> None:
    for method, inputs in (("search", QUERIES), ("recommend", HISTORIES)):
        before, after = getattr(a, method)(inputs, k=5), getattr(b, method)(inputs, k=5)
        assert after.item_ids == before.item_ids
        assert torch.allclose(torch.tensor(after.scores), torch.tensor(before.scores), atol=1e-5)


def test_push_uploads_exactly_the_serving_files_and_honours_options(retriever, hub):
    info = retriever.push_to_hub("me/tiny", private=True, token="hf_fake", commit_message="first model",
                                 revision="dev", metrics=METRICS, training_config=TRAINING_CONFIG)
    assert info.oid == "f" * 40
    (ops,) = hub.commits
    uploaded = {op.path_in_repo for op in ops if isinstance(op, CommitOperationAdd)}
    assert uploaded == SERVING_FILES
    assert not [f for f in uploaded if f.endswith((".bin", ".pkl", ".pt", ".pth", ".py"))]
    (repo_call,) = hub.called("create_repo")
    assert repo_call["private"] is True and repo_call["exist_ok"] is True and repo_call["token"] == "hf_fake"
    assert hub.called("create_branch")[0]["branch"] == "dev"
    (commit_call,) = hub.called("create_commit")
    assert commit_call["commit_message"] == "first model" and commit_call["revision"] == "dev"
    assert commit_call["token"] == "hf_fake"
    folder = hub.folder("me/tiny")
    assert json.loads((folder / "training_config.json").read_text()) == TRAINING_CONFIG
    assert json.loads((folder / "eval_results.json").read_text())["test"] == METRICS


def test_download_side_gives_identical_results(retriever, hub):
    retriever.push_to_hub("me/tiny", metrics=METRICS, training_config=TRAINING_CONFIG)
    loaded = GenerativeRetriever.from_pretrained(hub.folder("me/tiny"))
    assert_same_results(retriever, loaded)
    assert loaded.id_scheme == retriever.id_scheme and loaded.trie.codes.shape == (len(ITEMS), 1)
    assert loaded.title("sku-3") == "title sku-3" and loaded.max_history == 4
    assert loaded.hub_metadata["metrics"] == METRICS
    assert loaded.hub_metadata["training_config"] == TRAINING_CONFIG


def test_repo_id_loads_from_the_offline_cache(retriever, hub, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    retriever.push_to_hub("me/tiny")
    # The cache layout huggingface_hub writes: refs/main holds the commit, snapshots/<commit>/ the files.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_cache = tmp_path / "cache" / "models--me--tiny"
    (repo_cache / "refs").mkdir(parents=True)
    (repo_cache / "refs" / "main").write_text(commit)
    shutil.copytree(hub.folder("me/tiny"), repo_cache / "snapshots" / commit)
    loaded = GenerativeRetriever.from_pretrained("me/tiny", cache_dir=tmp_path / "cache")
    assert_same_results(retriever, loaded)


def test_uncached_repo_id_offline_fails_fast_naming_the_repo(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.time()
    with pytest.raises(FileNotFoundError, match=r"'someone/not-cached-model'.*not in the local Hugging Face cache.*"
                                                r"HF_HUB_OFFLINE=1"):
        GenerativeRetriever.from_pretrained("someone/not-cached-model", cache_dir=tmp_path / "empty-cache")
    assert time.time() - start < 5, "offline look-up must not wait for network retries"
    with pytest.raises(FileNotFoundError, match="'runs/x/model' is not a directory"):
        GenerativeRetriever.from_pretrained("runs/x/model")


def test_model_card_parses_and_carries_metrics_and_usage(retriever, hub):
    retriever.push_to_hub("me/tiny", metrics=METRICS, training_config=TRAINING_CONFIG,
                          card_data={"license": "apache-2.0", "tags": ["movies"]})
    readme = hub.folder("me/tiny") / "README.md"
    meta = metadata_load(readme)
    assert meta["library_name"] == "genretrieval" and meta["license"] == "apache-2.0"
    assert {"generative-retrieval", "recommendation", "search", "t5", "atomic-ids", "movies"} <= set(meta["tags"])
    card = ModelCard.load(readme)
    found = {(r.task_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    expected = {(task, name): value for task, m in METRICS.items() for name, value in m.items() if name != "num_requests"}
    assert found == expected
    assert all(r.dataset_split == "test" for r in card.data.eval_results)
    text = card.text
    assert "GenerativeRetriever.from_pretrained('me/tiny')" in text
    assert "pipeline('generative-retrieval', model='me/tiny')" in text
    assert "| search | 32 | 0.4321 | 0.2109 | 0.1875 |" in text  # the table: recall@10, ndcg@10, mrr
    assert "lr 0.001, seed 7" in text


def test_card_without_metrics_has_no_model_index(retriever, tmp_path):
    retriever.save_pretrained(tmp_path / "m")
    meta = metadata_load(tmp_path / "m" / "README.md")
    assert meta["library_name"] == "genretrieval" and "model-index" not in meta
    assert not (tmp_path / "m" / "training_config.json").exists()
    assert not (tmp_path / "m" / "eval_results.json").exists()


def test_repush_of_loaded_model_keeps_card_and_removes_stale_files(retriever, hub, tmp_path):
    retriever.push_to_hub("me/tiny", metrics=METRICS, training_config=TRAINING_CONFIG, card_data={"license": "mit"})
    (hub.folder("me/tiny") / "notes.md").write_text("added by the owner on the Hub")
    loaded = GenerativeRetriever.from_pretrained(hub.folder("me/tiny"))
    loaded.titles = {}  # the new version has no titles: the old catalog_titles.json must not survive
    loaded.push_to_hub("me/tiny")
    files = {p.name for p in hub.folder("me/tiny").iterdir()}
    assert files == (SERVING_FILES - {"catalog_titles.json"}) | {"notes.md", ".gitattributes"}
    deleted = [op.path_in_repo for op in hub.commits[-1] if isinstance(op, CommitOperationDelete)]
    assert deleted == ["catalog_titles.json"]
    meta = metadata_load(hub.folder("me/tiny") / "README.md")
    assert meta["license"] == "mit" and meta["tags"].count("t5") == 1
    assert json.loads((hub.folder("me/tiny") / "eval_results.json").read_text())["test"] == METRICS


def test_upload_refuses_pickles_and_bad_input_before_touching_the_hub(retriever, hub, tmp_path):
    retriever.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"not safe")
    with pytest.raises(ValueError, match="refusing to upload 'pytorch_model.bin'"):
        upload_saved_retriever(tmp_path / "m", "me/tiny")
    with pytest.raises(FileNotFoundError, match="not a saved GenerativeRetriever"):
        upload_saved_retriever(tmp_path, "me/tiny")
    with pytest.raises(ValueError, match="invalid Hub repo id 'not a repo'"):
        retriever.push_to_hub("not a repo")
    with pytest.raises(TypeError, match=r"metrics\['search'\] must map metric names"):
        retriever.push_to_hub("me/tiny", metrics={"search": 0.3})
    with pytest.raises(ValueError, match=r"card_data\['model-index'\] is generated"):
        retriever.push_to_hub("me/tiny", card_data={"model-index": []})
    assert hub.calls == []


def test_trainer_saves_card_and_training_config(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_recipe_hub", ROOT / "recipes" / "train.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = tmp_path / "run"
    result = recipe.main([str(ROOT / "recipes" / "configs" / "smoke.yaml"), "--training.output_dir", str(out),
                          "--training.max_steps", "4", "--training.eval_every", "4", "--training.save_every", "4",
                          "--eval.num_examples_to_show", "0"])
    model_dir = out / "model"
    config = json.loads((model_dir / "training_config.json").read_text())
    assert config["training"]["max_steps"] == 4 and config["model"]["d_model"] == 32
    assert config["training"]["output_dir"] == str(out) and config["data"]["source"] == "synthetic"
    card = ModelCard.load(model_dir / "README.md")
    assert card.data.library_name == "genretrieval"
    found = {(r.task_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert set(result["test"]) == {"search", "recommend"}
    for task, values in result["test"].items():
        assert found[(task, "recall@10")] == pytest.approx(values["recall@10"], abs=1e-6)
        assert found[(task, "mrr")] == pytest.approx(values["mrr"], abs=1e-6)
    loaded = GenerativeRetriever.from_pretrained(model_dir)
    assert loaded.hub_metadata["metrics"] == json.loads(json.dumps(result["test"]))
