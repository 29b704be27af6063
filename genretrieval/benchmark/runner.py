"""Run a benchmark suite: every (dataset, model, seed) on identical splits, both protocols, one results folder.

Layout of ``<output_root>/<suite>/``::

    results.json         protocol, dataset statistics, seeds, versions, per-model metrics (mean/std/per seed), tests
    results.md           the same as markdown tables
    plots/               metrics per model, training curves, t-SNE of item embeddings
    runs/<dataset>/<model>/seed<k>.json      one finished run (the suite resumes by skipping these)
    runs/<dataset>/<model>/seed<k>-train/    generative runs' training directory (model, logs, metrics.json)
"""

from __future__ import annotations

import inspect
import json
import platform
import time
import typing
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import build_dataclass
from ..data.builders import build_examples
from ..evaluation.evaluator import Request, group_requests
from ..fileio import atomic_write_text
from .suite import DatasetSpec, ModelSpec, SuiteConfig

MAIN_METRIC = {"full": "recall@10", "sampled": "ndcg@10"}
REQUEST_SAMPLE_SEED = 0  # seed of ModelSpec.max_test_requests samples: one sample per size, whatever the run seed
# Per-request values kept for paired tests (the rest are kept as means only, to keep run files small).
PAIRED_METRICS = {"full": ("recall@10", "ndcg@10", "mrr"), "sampled": ("hr@10", "ndcg@10", "mrr")}


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------
def load_dataset(spec: DatasetSpec) -> tuple[Any, Any, dict[str, Any]]:
    """Catalog + interactions (with simulated queries if asked) and a description for results.json."""
    from ..data import loaders

    if spec.source == "synthetic":
        from ..data.synthetic import generate_synthetic

        catalog, interactions = generate_synthetic(spec.synthetic)
    elif spec.source == "files":
        catalog = loaders.load_catalog(spec.catalog_path)
        interactions = loaders.load_interactions(spec.interactions_path, catalog=catalog)
    elif spec.source == "movielens":
        catalog, interactions = loaders.load_movielens(spec.path)
    elif spec.source == "amazon-sequences":
        catalog, interactions = loaders.load_amazon_sequences(spec.path)
    else:
        catalog, interactions = loaders.load_amazon_reviews(spec.interactions_path, spec.catalog_path)
    if spec.max_users is not None:
        catalog, interactions = _subsample_users(catalog, interactions, spec.max_users, spec.split.seed)
    info: dict[str, Any] = {"source": spec.source, "path": spec.path or spec.interactions_path}
    if spec.queries is not None:
        from ..data.queries import describe, simulate_search

        interactions = simulate_search(catalog, interactions, spec.queries)
        info["query_simulation"] = describe(spec.queries)
    scen = Counter(interactions["scenario"])
    queries = {q for q, s in zip(interactions["query"], interactions["scenario"]) if s == "search"}
    info.update({"items": len(catalog), "users": len(set(interactions["user_id"])), "rec_interactions": scen["rec"],
                 "search_interactions": scen["search"], "distinct_queries": len(queries)})
    return catalog, interactions, info


def _subsample_users(catalog: Any, interactions: Any, max_users: int, seed: int) -> tuple[Any, Any]:
    users = sorted(set(interactions["user_id"]))
    if len(users) <= max_users:
        return catalog, interactions
    keep = set(np.random.default_rng(seed).choice(users, size=max_users, replace=False).tolist())
    interactions = interactions.filter(lambda u: u in keep, input_columns="user_id")
    used = set(interactions["item_id"])
    return catalog.filter(lambda i: i in used, input_columns="item_id"), interactions


def _popularity(examples: dict[str, Any], item_ids: Sequence[str]) -> np.ndarray:
    counts = Counter(t for task in examples.values() for t in task["train"]["target_item"])
    return np.array([counts.get(i, 0) for i in item_ids], dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------
def make_baseline(spec: ModelSpec) -> Any:
    """Instantiate a registered baseline with ``spec.params`` checked against its config dataclass."""
    from .. import baselines  # noqa: F401  (registers the baselines)
    from ..baselines.base import get_baseline_class

    cls = get_baseline_class(spec.baseline)
    params = inspect.signature(cls.__init__).parameters
    config_param = next((p for name, p in params.items() if name != "self"), None)
    if config_param is None:
        if spec.params:
            raise ValueError(f"model {spec.name!r}: baseline {spec.baseline!r} takes no params, got {spec.params}")
        return cls()
    hints = typing.get_type_hints(cls.__init__)
    config_cls = next((a for a in typing.get_args(hints[config_param.name]) if a is not type(None)),
                      hints[config_param.name])
    return cls(build_dataclass(config_cls, spec.params, prefix=f"models[{spec.name}].params"))


def _dotted_to_nested(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def generative_config(spec: ModelSpec, dataset: DatasetSpec, suite: SuiteConfig, seed: int, run_dir: Path) -> Any:
    """The ``TrainConfig`` of one generative run: suite defaults, then the model's overrides (``heads`` included),
    then what the suite fixes (split, tasks, seed, output directory)."""
    from ..config import deep_merge
    from ..training import TrainConfig

    values = deep_merge(_dotted_to_nested(suite.generative_defaults), _dotted_to_nested(spec.overrides))
    values = deep_merge(values, {
        "data": {"split": asdict(dataset.split)},
        "mixture": {"tasks": list(spec.tasks)},
        "training": {"seed": seed, "output_dir": str(run_dir), "save_total_limit": 1},
        "eval": {"num_examples_to_show": 0, "exclude_history_items": suite.exclude_history, "run_test": False},
    })
    return build_dataclass(TrainConfig, values, prefix=f"models[{spec.name}]")


def train_generative(spec: ModelSpec, dataset: DatasetSpec, suite: SuiteConfig, seed: int, tables: tuple[Any, Any],
                     run_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Train a generative model through the same loop as recipes/train.py; returns (retriever, its metrics.json).

    A training run that already finished in ``run_dir`` with the same config (its ``config.json``) is reused: a
    run interrupted during evaluation, or re-evaluated after a change to the evaluation code, does not train again.
    """
    from ..modeling import GenerativeRetriever
    from ..training import train

    config = generative_config(spec, dataset, suite, seed, run_dir)
    finished = run_dir / "metrics.json"
    if finished.is_file() and (run_dir / "model").is_dir() and (run_dir / "config.json").is_file():
        saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        if saved == json.loads(json.dumps(asdict(config))):
            # metrics.json is written only when training ran to its end (an interrupted run returns before it).
            result = json.loads(finished.read_text(encoding="utf-8"))
            return GenerativeRetriever.from_pretrained(run_dir / "model"), {**result, "reused": True}
    result = train(config, tables=tables)
    return GenerativeRetriever.from_pretrained(run_dir / "model"), result


# ---------------------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------------------
def run_one(spec: ModelSpec, dataset: DatasetSpec, suite: SuiteConfig, seed: int, tables: tuple[Any, Any],
            examples: dict[str, Any], requests: dict[str, list[Request]], interacted: dict[str, set[str]],
            run_dir: Path) -> dict[str, Any]:
    """Fit/train one model with one seed and evaluate it on its tasks under every protocol."""
    import torch

    from ..evaluation.protocols import ProtocolConfig, evaluate_protocols
    from ..evaluation.sampling import BeamRanking, sample_request_index

    started = time.time()
    record: dict[str, Any] = {"dataset": dataset.name, "model": spec.name, "seed": seed, "kind": spec.kind}
    if spec.kind == "generative":
        retriever, train_result = train_generative(spec, dataset, suite, seed, tables, run_dir / f"seed{seed}-train")
        tasks = list(spec.tasks)
        record["log_history"] = train_result.get("log_history", [])
        record["steps"] = train_result.get("steps")
        record["training_reused"] = bool(train_result.get("reused", False))
    else:
        torch.manual_seed(seed)
        retriever = make_baseline(spec)
        tasks = [t for t in ("search", "recommend") if t in retriever.supported_tasks and len(examples[t]["train"])]
        retriever.fit(tables[0], {t: examples[t]["train"] for t in tasks},
                      {t: examples[t]["validation"] for t in tasks}, seed=seed)
        # Trained baselines keep one entry per epoch (loss, validation metric): how long they ran, and where they peaked.
        record["training_log"] = list(getattr(retriever, "training_log", []))
    record["fit_seconds"] = round(time.time() - started, 1)
    record["tasks"] = tasks
    record["metrics"], record["per_request"], record["request_index"] = {}, {}, {}
    scorer, protocols, depth = retriever, list(suite.protocols), suite.depth
    if spec.ranking == "beam":
        scorer, protocols, depth = BeamRanking(retriever, spec.num_beams), ["full"], spec.num_beams
    record["evaluation"] = {"ranking": spec.ranking, "depth": depth, "protocols": protocols,
                            "max_test_requests": spec.max_test_requests, "request_sample_seed": REQUEST_SAMPLE_SEED,
                            "test_requests": {t: len(requests[t]) for t in tasks}, "evaluated": {}}
    for task in tasks:
        if not requests[task]:
            continue
        index = sample_request_index(len(requests[task]), spec.max_test_requests, REQUEST_SAMPLE_SEED)
        sampled = len(index) < len(requests[task])
        chosen = [requests[task][i] for i in index] if sampled else requests[task]
        # Positions in the task's full request list: paired tests and the cold-start cut align runs through them.
        record["request_index"][task] = index.tolist() if sampled else None
        record["evaluation"]["evaluated"][task] = len(chosen)
        record["metrics"][task], record["per_request"][task] = {}, {}
        configs = [ProtocolConfig(name=protocol, ks=tuple(suite.ks), depth=depth, num_negatives=suite.num_negatives,
                                  exclude_history=suite.exclude_history, seed=0) for protocol in protocols]
        # One scoring pass serves every protocol; exact multi-token scoring can take minutes, so a bar shows progress.
        results = evaluate_protocols(scorer, chosen, configs, interacted=interacted,
                                     progress=f"{dataset.name} | {spec.name} | seed {seed} | {task}")
        for protocol, result in zip(protocols, results):
            record["metrics"][task][protocol] = {k: float(v) for k, v in result.metrics.items()}
            record["per_request"][task][protocol] = {
                m: np.asarray(result.per_request[m], dtype=np.float32).round(5).tolist()
                for m in PAIRED_METRICS[protocol] if m in result.per_request}
    record["eval_seconds"] = round(time.time() - started - record["fit_seconds"], 1)
    if spec.kind == "generative" and suite.tsne and seed == suite.seeds[0]:
        emb = _item_embeddings(retriever)
        np.save(run_dir / f"seed{seed}-item-embeddings.npy", emb)
    return record


def _item_embeddings(retriever: Any) -> np.ndarray:
    """Input-embedding rows of the item tokens (the items' learned representations)."""
    weight = retriever.model.get_input_embeddings().weight.detach().cpu().float()
    # Multi-token (semantic) IDs: the mean of the item's code embeddings.
    return weight[retriever.trie.codes].mean(dim=1).numpy()


# ---------------------------------------------------------------------------------------------------------------
# the suite
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class PreparedDataset:
    """One dataset of a suite, loaded and split exactly as every run of the suite sees it."""

    catalog: Any
    interactions: Any
    info: dict[str, Any]  # statistics written to results.json (plus "popularity": training examples per item)
    examples: dict[str, Any]  # task -> split -> examples table
    requests: dict[str, list[Request]]  # task -> test requests (search grouped per query)
    interacted: dict[str, set[str]]  # user -> every item they interacted with (sampled-protocol negatives avoid them)
    cold: dict[str, list[int]]  # task -> indices of the cold-start requests


def prepare_dataset(dataset: DatasetSpec, suite: SuiteConfig) -> PreparedDataset:
    """Load, split and group the test requests of one dataset (shared by the suite runner and recipes/evaluate_saved.py)."""
    catalog, interactions, info = load_dataset(dataset)
    examples = build_examples(catalog, interactions, dataset.split)
    info["examples"] = {t: {s: len(examples[t][s]) for s in examples[t]} for t in examples}
    info["popularity"] = _popularity(examples, list(catalog["item_id"])).tolist()
    requests = {t: group_requests(examples[t]["test"], _source_for, exclude_history=suite.exclude_history)
                for t in ("search", "recommend")}
    train_count = dict(zip(catalog["item_id"], info["popularity"]))
    cold = {t: [i for i, r in enumerate(requests[t])
                if all(train_count.get(item, 0) <= suite.cold_start_max_train for item in r.relevant)]
            for t in requests}
    interacted: dict[str, set[str]] = {}
    for user, item in zip(interactions["user_id"], interactions["item_id"]):
        interacted.setdefault(user, set()).add(item)
    return PreparedDataset(catalog, interactions, info, examples, requests, interacted, cold)


def run_suite(suite: SuiteConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) every run of the suite and write results.json, results.md and plots."""
    from tqdm.auto import tqdm

    out = Path(suite.output_root) / suite.name
    records: list[dict[str, Any]] = []
    dataset_info: dict[str, Any] = {}
    cold: dict[str, dict[str, list[int]]] = {}
    total = len(suite.datasets) * len(suite.models) * len(suite.seeds)
    bar = tqdm(total=total, desc=f"suite {suite.name}", unit="run")
    for dataset in suite.datasets:
        pending = [(m, s) for m in suite.models for s in suite.seeds
                   if not (out / "runs" / dataset.name / m.slug / f"seed{s}.json").is_file()
                   and (not suite.only or m.name in suite.only)]
        prepared = prepare_dataset(dataset, suite)
        catalog, interactions, info = prepared.catalog, prepared.interactions, prepared.info
        examples, requests, interacted = prepared.examples, prepared.requests, prepared.interacted
        dataset_info[dataset.name] = info
        cold[dataset.name] = prepared.cold
        log(f"[{dataset.name}] {info['items']} items, {info['users']} users, "
            f"{info['rec_interactions']} rec + {info['search_interactions']} search interactions; "
            f"test requests: search {len(requests['search'])}, recommend {len(requests['recommend'])}")
        for model in suite.models:
            for seed in suite.seeds:
                run_dir = out / "runs" / dataset.name / model.slug
                path = run_dir / f"seed{seed}.json"
                bar.set_postfix_str(f"{dataset.name} | {model.name} | seed {seed}")
                if (model, seed) in pending:
                    run_dir.mkdir(parents=True, exist_ok=True)
                    record = run_one(model, dataset, suite, seed, (catalog, interactions), examples, requests,
                                     interacted, run_dir)
                    atomic_write_text(path, json.dumps(record))
                    summary = ", ".join(f"{t} {MAIN_METRIC['full']}={m['full'][MAIN_METRIC['full']]:.4f}"
                                        for t, m in record["metrics"].items() if "full" in m)
                    bar.write(f"[{dataset.name}] {model.name} seed {seed}: {summary} ({record['fit_seconds']} s)")
                if path.is_file():  # absent only for runs that `only` skipped
                    records.append(json.loads(path.read_text(encoding="utf-8")))
                bar.update(1)
    bar.close()
    results = aggregate(suite, records, dataset_info, cold)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    markdown = to_markdown(results)
    atomic_write_text(out / "results.md", markdown)
    make_plots(suite, records, dataset_info, out)
    log(markdown)
    return results


def _source_for(row: dict[str, Any]) -> str:
    """Model input of an example; generative models re-format requests themselves, baselines ignore it."""
    if row["task"] == "search":
        return "search: " + " ".join(row["query"].split())
    return "recommend: " + " ".join(row["history"])


def aggregate(suite: SuiteConfig, records: list[dict[str, Any]], dataset_info: dict[str, Any],
              cold: dict[str, dict[str, list[int]]] | None = None) -> dict[str, Any]:
    """Means/stds over seeds and paired tests against the reference model, per dataset × task × protocol.

    ``cold[dataset][task]`` lists the test requests of the cold-start cut (relevant items with at most
    ``suite.cold_start_max_train`` training examples); their full-protocol means go to ``results["cold_start"]``.
    """
    from ..evaluation.significance import paired_t_test

    reference = suite.reference_model or next((m.name for m in suite.models if m.kind == "generative"
                                               and len(m.tasks) == 2), suite.models[0].name)
    table: dict[str, Any] = {}
    comparisons: list[dict[str, Any]] = []
    for dataset in suite.datasets:
        for task in ("search", "recommend"):
            for protocol in suite.protocols:
                rows = {}
                per_request_mean, request_index, evaluation = {}, {}, {}
                for model in suite.models:
                    runs = [r for r in records if r["dataset"] == dataset.name and r["model"] == model.name
                            and task in r["metrics"] and protocol in r["metrics"][task]]
                    if not runs:
                        continue
                    names = list(runs[0]["metrics"][task][protocol])
                    rows[model.name] = {
                        m: {"mean": float(np.mean([r["metrics"][task][protocol][m] for r in runs])),
                            # sample std (ddof=1), as evaluation.significance.mean_over_seeds reports it
                            "std": float(np.std([r["metrics"][task][protocol][m] for r in runs], ddof=1))
                            if len(runs) > 1 else 0.0,
                            "per_seed": [r["metrics"][task][protocol][m] for r in runs]} for m in names}
                    request_index[model.name] = _request_index(runs, task, model.name)
                    evaluation[model.name] = runs[0].get("evaluation", {"ranking": "exact"})
                    per_request_mean[model.name] = {
                        m: np.mean([r["per_request"][task][protocol][m] for r in runs], axis=0)
                        for m in runs[0]["per_request"][task][protocol]}
                if not rows:
                    continue
                tests = {}
                if reference in per_request_mean:
                    for name, values in per_request_mean.items():
                        if name == reference:
                            continue
                        pairs = {m: _paired(per_request_mean[reference][m], request_index[reference],
                                            values[m], request_index[name])
                                 for m in values if m in per_request_mean[reference]}
                        tests[name] = {m: paired_t_test(*pair) for m, pair in pairs.items() if len(pair[0]) > 1}
                block = {"models": rows, "paired_tests": tests}
                # Models not scored exactly on every test request: how they were (the markdown marks them).
                special = {name: {"requests": len(next(iter(per_request_mean[name].values()))),
                                  "of": evaluation[name].get("test_requests", {}).get(task),
                                  "ranking": evaluation[name]["ranking"], "depth": evaluation[name].get("depth")}
                           for name in rows if request_index[name] is not None or evaluation[name]["ranking"] != "exact"}
                if special:
                    block["evaluated_on"] = special
                table.setdefault(dataset.name, {}).setdefault(task, {})[protocol] = block
                main = MAIN_METRIC[protocol]
                for a, b in suite.comparisons:
                    if a in per_request_mean and b in per_request_mean and main in per_request_mean[a]:
                        pair = _paired(per_request_mean[a][main], request_index[a],
                                       per_request_mean[b][main], request_index[b])
                        if len(pair[0]) < 2:  # disjoint request samples: nothing to pair
                            continue
                        test = paired_t_test(*pair)
                        comparisons.append({"dataset": dataset.name, "task": task, "protocol": protocol,
                                            # over the requests both evaluated (differs from the table's means
                                            # only when one model ran on a max_test_requests sample)
                                            "a": a, "b": b, "metric": main, "mean_a": float(np.mean(pair[0])),
                                            "mean_b": float(np.mean(pair[1])), "seeds_a": len(rows[a][main]["per_seed"]),
                                            "seeds_b": len(rows[b][main]["per_seed"]), **test})
    cold_table: dict[str, Any] = {}
    for dataset_name, tasks in (cold or {}).items():
        for task, index in tasks.items():
            if not index:
                continue
            for model in suite.models:
                runs = [r for r in records if r["dataset"] == dataset_name and r["model"] == model.name
                        and "full" in r.get("per_request", {}).get(task, {})]
                if not runs:
                    continue
                positions = _positions(index, _request_index(runs, task, model.name))
                if not len(positions):
                    continue
                per_seed = {m: [float(np.mean(np.asarray(r["per_request"][task]["full"][m])[positions])) for r in runs]
                            for m in PAIRED_METRICS["full"]}
                cold_table.setdefault(dataset_name, {}).setdefault(task, {"num_requests": len(index), "models": {}})
                cold_table[dataset_name][task]["models"][model.name] = {
                    "requests": int(len(positions)),
                    **{m: {"mean": float(np.mean(v)), "per_seed": v} for m, v in per_seed.items()}}
    return {
        "suite": suite.name,
        "protocol": {"full": f"full-catalog ranking, depth {suite.depth}", "sampled":
                     f"1 positive + {suite.num_negatives} negatives sampled from items the user never interacted with",
                     "history_items_masked": suite.exclude_history, "split_rec": "leave-one-out per user",
                     "split_search": "see datasets.<name>.split", "paired_test": f"paired t-test over test requests "
                     f"(per-request metrics averaged over seeds) against {reference}"},
        "reference_model": reference,
        "seeds": suite.seeds,
        "datasets": {n: {k: v for k, v in info.items() if k != "popularity"} |
                     {"split": asdict(next(d for d in suite.datasets if d.name == n).split)}
                     for n, info in dataset_info.items()},
        "models": [asdict(m) for m in suite.models],
        "results": table,
        "cold_start": {"max_train_examples": suite.cold_start_max_train, "results": cold_table},
        "comparisons": comparisons,
        "runs": [{k: v for k, v in r.items() if k not in ("per_request", "log_history", "request_index")}
                 for r in records],
        "environment": _environment(),
    }


def _request_index(runs: list[dict[str, Any]], task: str, model: str) -> list[int] | None:
    """Positions (in the task's test requests) a model's runs evaluated; None = all. Its seeds must agree."""
    found = {json.dumps(r.get("request_index", {}).get(task)) for r in runs}
    if len(found) > 1:
        raise ValueError(f"the runs of {model!r} on {task} evaluated different test-request samples (was "
                         f"max_test_requests changed between runs?): delete the stale runs/ files and re-run")
    return json.loads(found.pop())


def _positions(wanted: Sequence[int], index: list[int] | None) -> np.ndarray:
    """Where the requests ``wanted`` (positions in the full list) sit in a run's per-request arrays."""
    wanted = np.asarray(wanted, dtype=np.int64)
    if index is None:
        return wanted
    index = np.asarray(index, dtype=np.int64)
    return np.searchsorted(index, np.intersect1d(wanted, index))


def _paired(a: np.ndarray, index_a: list[int] | None, b: np.ndarray, index_b: list[int] | None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Two models' per-request values on the requests both evaluated (``index`` None = every request)."""
    if index_a is None and index_b is None:
        return np.asarray(a), np.asarray(b)
    common = np.intersect1d(np.arange(len(a)) if index_a is None else index_a,
                            np.arange(len(b)) if index_b is None else index_b)
    return np.asarray(a)[_positions(common, index_a)], np.asarray(b)[_positions(common, index_b)]


def _environment() -> dict[str, str]:
    import accelerate
    import datasets
    import torch
    import transformers

    from .. import __version__

    return {"genretrieval": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "accelerate": accelerate.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "cpu_threads": str(torch.get_num_threads())}


def to_markdown(results: dict[str, Any]) -> str:
    """One table per dataset × task × protocol: mean ± std over seeds, p-value of the paired test."""
    lines = [f"# Benchmark `{results['suite']}`", "",
             f"Seeds {results['seeds']}; reference for paired tests: **{results['reference_model']}**; history items "
             f"{'masked' if results['protocol']['history_items_masked'] else 'not masked'}.", ""]
    for dataset, tasks in results["results"].items():
        info = results["datasets"][dataset]
        lines += [f"## {dataset}", "", f"{info['items']} items, {info['users']} users, {info['rec_interactions']} rec and "
                  f"{info['search_interactions']} search interactions, {info['distinct_queries']} distinct queries.", ""]
        for task, protocols in tasks.items():
            for protocol, block in protocols.items():
                # A union: beam-ranked models have map@<depth> instead of map@100.
                metrics = list(dict.fromkeys(m for vals in block["models"].values() for m in vals))
                main = MAIN_METRIC[protocol]
                lines += [f"### {dataset} · {task} · {protocol} protocol", "",
                          "| model | " + " | ".join(metrics) + f" | p ({main}) |",
                          "|---|" + "---|" * (len(metrics) + 1)]
                special = block.get("evaluated_on", {})
                for model, vals in block["models"].items():
                    test = block["paired_tests"].get(model, {}).get(main)
                    p = "ref." if model == results["reference_model"] else (f"{test['p_value']:.3g}" if test else "")
                    cells = ["–" if m not in vals else f"{vals[m]['mean']:.4f}"
                             + (f" ± {vals[m]['std']:.4f}" if len(vals[m]['per_seed']) > 1 else "") for m in metrics]
                    lines.append(f"| {model}{' †' if model in special else ''} | " + " | ".join(cells) + f" | {p} |")
                for model, how in special.items():
                    ranking = "exact scores" if how["ranking"] == "exact" else f"beam-search ranking (depth {how['depth']})"
                    which = (f"all {how['of']} test requests" if how["requests"] == how["of"] else
                             f"{how['requests']} of {how['of']} test requests (seeded sample); paired tests use the "
                             "requests both models evaluated")
                    lines.append(f"\n† {model}: {ranking} on {which}.")
                lines.append("")
        for task, block in results.get("cold_start", {}).get("results", {}).get(dataset, {}).items():
            limit = results["cold_start"]["max_train_examples"]
            metrics = PAIRED_METRICS["full"]
            lines += [f"### {dataset} · {task} · cold-start cut (full protocol)", "",
                      f"{block['num_requests']} test requests whose relevant items have at most {limit} training "
                      "examples; a sub-sampled model (†) is averaged over the cut's requests it evaluated.", "",
                      "| model | " + " | ".join(metrics) + " | requests |", "|---|" + "---|" * (len(metrics) + 1)]
            for model, vals in block["models"].items():
                # Older results.json files have no per-model count: the model evaluated the whole cut.
                count = vals.get("requests", block["num_requests"])
                lines.append(f"| {model} | " + " | ".join(f"{vals[m]['mean']:.4f}" for m in metrics) + f" | {count} |")
            lines.append("")
    if results.get("comparisons"):
        lines += ["## Comparisons", "", "Paired t-test over test requests (per-request metric averaged over each model's "
                  "seeds); a > b means the first model scored higher.", "",
                  "| dataset | task | protocol | metric | a | b | mean a | mean b | a − b | p | seeds a/b | requests |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in results["comparisons"]:
            lines.append(f"| {c['dataset']} | {c['task']} | {c['protocol']} | {c['metric']} | {c['a']} | {c['b']} | "
                         f"{c['mean_a']:.4f} | {c['mean_b']:.4f} | {c['mean_a'] - c['mean_b']:+.4f} | "
                         f"{c['p_value']:.3g} | {c['seeds_a']}/{c['seeds_b']} | {c['n']} |")
        lines.append("")
    return "\n".join(lines)


def make_plots(suite: SuiteConfig, records: list[dict[str, Any]], dataset_info: dict[str, Any], out: Path) -> None:
    """Metric bars per dataset × task, training curves of generative models, t-SNE of item embeddings."""
    from ..evaluation.plots import plot_item_embeddings_tsne, plot_metrics, plot_training_curves

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for dataset in suite.datasets:
        for task in ("search", "recommend"):
            table = {}
            for model in suite.models:
                runs = [r for r in records if r["dataset"] == dataset.name and r["model"] == model.name
                        and task in r["metrics"] and "full" in r["metrics"][task]]
                if runs:
                    table[model.name] = {m: float(np.mean([r["metrics"][task]["full"][m] for r in runs]))
                                         for m in ("recall@10", "ndcg@10", "mrr")}
            if table:
                plot_metrics(table, ["recall@10", "ndcg@10", "mrr"], plots / f"{dataset.name}-{task}-metrics.png",
                             title=f"{dataset.name} · {task} · full ranking")
        histories = {r["model"]: r["log_history"] for r in records
                     if r["dataset"] == dataset.name and r.get("log_history") and r["seed"] == suite.seeds[0]}
        if histories:
            plot_training_curves(histories, "train/loss", plots / f"{dataset.name}-train-loss.png")
        if suite.tsne:
            embeddings = {}
            for model in suite.models:
                path = out / "runs" / dataset.name / model.slug / f"seed{suite.seeds[0]}-item-embeddings.npy"
                if model.kind == "generative" and path.is_file():
                    embeddings[model.name] = np.load(path)
            if embeddings:
                plot_item_embeddings_tsne(embeddings, np.asarray(dataset_info[dataset.name]["popularity"]),
                                          plots / f"{dataset.name}-item-tsne.png", seed=suite.seeds[0])
