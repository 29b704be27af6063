"""Tests for genretrieval.data: synthetic generator, JSONL/CSV loaders, example builders and task mixing."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from datasets import Dataset

from genretrieval.data import (
    CATALOG_FEATURES,
    EXAMPLE_FEATURES,
    INTERACTION_FEATURES,
    DataFormatError,
    MixtureConfig,
    SplitConfig,
    SyntheticConfig,
    build_examples,
    check_tasks,
    generate_synthetic,
    load_catalog,
    load_interactions,
    mix_tasks,
    normalize_query,
    save_table,
    simulate,
    validate_catalog,
    validate_interactions,
)

SMALL = dict(num_items=60, num_users=40, num_topics=6)


# --------------------------------------------------------------------------- synthetic generator


def test_same_seed_gives_identical_tables_and_other_seed_differs():
    a_cat, a_int = generate_synthetic(SyntheticConfig(**SMALL, seed=3))
    b_cat, b_int = generate_synthetic(SyntheticConfig(**SMALL, seed=3))
    c_cat, c_int = generate_synthetic(SyntheticConfig(**SMALL, seed=4))
    assert a_cat.to_dict() == b_cat.to_dict()
    assert a_int.to_dict() == b_int.to_dict()
    assert a_int.to_dict() != c_int.to_dict()
    assert a_cat["text"] != c_cat["text"]


def test_synthetic_tables_follow_the_schema_and_semantics():
    cfg = SyntheticConfig(**SMALL, searches_per_user=4, min_history_length=5, max_history_length=9)
    world = simulate(cfg)
    cat, inter = world.catalog, world.interactions
    assert cat.features == CATALOG_FEATURES
    assert inter.features == INTERACTION_FEATURES
    validate_catalog(cat)
    validate_interactions(inter, cat)
    assert len(cat) == cfg.num_items

    rows = inter.to_list()
    by_user: dict[str, list[dict]] = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append(row)
    assert len(by_user) == cfg.num_users
    terms = {item: set(text.replace(":", "").split()) | set(cats) for item, text, cats in
             zip(cat["item_id"], cat["text"], cat["categories"])}  # fmt: skip
    for events in by_user.values():
        times = [e["timestamp"] for e in events]
        assert times == sorted(times) and len(set(times)) == len(times)
        rec = [e["item_id"] for e in events if e["scenario"] == "rec"]
        assert len(rec) == len(set(rec)) and len(rec) <= cfg.max_history_length
        searches = [e for e in events if e["scenario"] == "search"]
        assert len(searches) == cfg.searches_per_user
        for e in searches:
            words = e["query"].split()
            assert cfg.query_min_terms <= len(words) <= cfg.query_max_terms
            assert set(words) <= terms[e["item_id"]]  # queries come from the target's own text and categories
    assert all(e["query"] == "" for e in rows if e["scenario"] == "rec")
    # The content topic drives the categories: first category is the content topic's name.
    assert [c[0] for c in cat["categories"]] == [world.topic_names[t] for t in world.content_topic]


def test_alignment_sets_the_fraction_of_items_whose_topics_agree():
    fractions = {a: simulate(SyntheticConfig(num_items=400, num_users=5, num_topics=10, alignment=a)).aligned_fraction()
                 for a in (0.0, 0.5, 1.0)}  # fmt: skip
    assert fractions[1.0] == 1.0
    assert fractions[0.0] < 0.25  # ~1/num_topics by chance
    assert 0.4 < fractions[0.5] < 0.7  # 0.5 + 0.5/10 expected
    assert fractions[0.0] < fractions[0.5] < fractions[1.0]


def test_histories_cluster_by_collaborative_topic():
    world = simulate(SyntheticConfig(**SMALL, drift_prob=0.0, topics_per_user=1, alignment=0.0))
    topic_of = dict(zip(world.catalog["item_id"], world.collaborative_topic))
    users: dict[str, set] = {}
    for user, item, scenario in zip(world.interactions["user_id"], world.interactions["item_id"],
                                    world.interactions["scenario"]):  # fmt: skip
        users.setdefault(user, set()).add(topic_of[item])
    assert all(len(topics) == 1 for topics in users.values())  # no drift, one topic: one collaborative topic each


def test_default_generation_is_fast():
    start = time.perf_counter()
    cat, inter = generate_synthetic()
    elapsed = time.perf_counter() - start
    assert len(cat) == 1000 and len(set(inter["user_id"])) == 1000
    assert elapsed < 5.0, f"default generation took {elapsed:.1f}s"


# --------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_loader_round_trip(tmp_path, suffix):
    cat, inter = generate_synthetic(SyntheticConfig(num_items=20, num_users=6, num_topics=4, searches_per_user=3))
    save_table(cat, tmp_path / f"catalog{suffix}")
    save_table(inter, tmp_path / f"interactions{suffix}")
    cat2 = load_catalog(tmp_path / f"catalog{suffix}")
    inter2 = load_interactions(tmp_path / f"interactions{suffix}", catalog=cat2)
    assert cat2.features == CATALOG_FEATURES and inter2.features == INTERACTION_FEATURES
    assert cat2.to_dict() == cat.to_dict()
    assert inter2.to_dict() == inter.to_dict()


def test_loader_accepts_int_ids_and_fills_defaults(tmp_path):
    lines = ['{"item_id": 7, "title": "Seven"}', "", '{"item_id": "x", "title": "X", "categories": ["a", 1]}']
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp,scenario,query\n1,7,10,,\n1,x,11,search,  Red Shoe\n")
    cat = load_catalog(tmp_path / "c.jsonl")
    assert cat.to_dict() == {"item_id": ["7", "x"], "title": ["Seven", "X"], "text": ["", ""],
                             "categories": [[], ["a", "1"]]}  # fmt: skip
    inter = load_interactions(tmp_path / "i.csv", catalog=cat)
    assert inter.to_dict() == {"user_id": ["1", "1"], "item_id": ["7", "x"], "timestamp": [10, 11],
                               "scenario": ["rec", "search"], "query": ["", "  Red Shoe"]}  # fmt: skip
    (tmp_path / "c.csv").write_text("item_id,title,categories\n1,One,shoes| red |\n")
    assert load_catalog(tmp_path / "c.csv")["categories"] == [["shoes", "red"]]


CATALOG_CSV = "item_id,title\na,A\nb,B\n"
MALFORMED = [
    # (file name, content, needs catalog, line, field, detail)
    ("interactions.csv", "user_id,item_id,timestamp\nu,a,1\nu,a,abc\n", False, 3, "timestamp",
     "'abc' is not an integer"),
    ("interactions.jsonl", '{"user_id": "u", "item_id": "a", "timestamp": 1}\n{"user_id": "u",\n', False, 2, None,
     "malformed JSON"),
    ("interactions.jsonl", '{"user_id": "u", "item_id": "a"}\n', False, 1, "timestamp", "required field is missing"),
    ("interactions.csv", "user_id,item_id\nu,a\n", False, 1, "timestamp", "required column is missing"),
    ("interactions.jsonl", '\n{"user_id": "u", "item_id": "a", "timestamp": 1, "scenario": "browse"}\n', False, 2,
     "scenario", "'browse' is not one of"),
    ("interactions.csv", "user_id,item_id,timestamp,scenario,query\nu,a,1,search,  \n", False, 2, "query",
     "non-empty query"),
    ("interactions.csv", "user_id,item_id,timestamp\nu,a,1\nu,zzz,2\n", True, 3, "item_id", "unknown item 'zzz'"),
    ("interactions.jsonl", '{"user_id": null, "item_id": "a", "timestamp": 1}\n', False, 1, "user_id", "is not an id"),
    ("catalog.csv", "item_id,title\na,A\nb,B\na,C\n", False, 4, "item_id", "duplicate item id 'a' (first on line 2)"),
    ("catalog.jsonl", '{"item_id": "a", "title": "A"}\n{"title": "B"}\n', False, 2, "item_id", "missing"),
    ("catalog.jsonl", '{"item_id": "a", "title": ""}\n', False, 1, "title", "empty"),
    ("catalog.jsonl", '{"item_id": "a", "title": "A", "categories": {"x": 1}}\n', False, 1, "categories", "expected"),
    ("catalog.csv", "item_id,title\na,A,extra\n", False, 2, None, "expected 2 cells"),
]


@pytest.mark.parametrize(("name", "content", "with_catalog", "line", "field", "detail"), MALFORMED)
def test_malformed_input_names_file_line_and_field(tmp_path, name, content, with_catalog, line, field, detail):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataFormatError) as info:
        if name.startswith("catalog"):
            load_catalog(path)
        else:
            (tmp_path / "catalog.csv").write_text(CATALOG_CSV)
            load_interactions(path, catalog=load_catalog(tmp_path / "catalog.csv") if with_catalog else None)
    message = str(info.value)
    assert message.startswith(f"{path} line {line}"), message
    if field is not None:
        assert f"field '{field}'" in message, message
    assert detail in message, message
    assert (info.value.line, info.value.field) == (line, field)


def test_error_message_matches_documented_format(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "u,a,1\n" * 5 + "u,a,abc\n")
    expected = r"^interactions\.csv line 7, field 'timestamp': 'abc' is not an integer$"
    with pytest.raises(DataFormatError, match=expected):
        load_interactions("interactions.csv")


def test_unsupported_extension_and_json_array_are_explained(tmp_path):
    (tmp_path / "catalog.txt").write_text("item_id,title\na,A\n")
    with pytest.raises(DataFormatError, match=r"catalog\.txt: unsupported extension '\.txt'"):
        load_catalog(tmp_path / "catalog.txt")
    (tmp_path / "catalog.json").write_text('[{"item_id": "a",\n "title": "A"}]\n')
    with pytest.raises(DataFormatError, match="line 1: malformed JSON.*not a JSON array"):
        load_catalog(tmp_path / "catalog.json")


# --------------------------------------------------------------------------- builders


def _table(rows: list[tuple], catalog_items: str = "abcdefgh") -> tuple[Dataset, Dataset]:
    """Catalog of one-letter items and interactions from ``(user, item, timestamp, scenario, query)`` tuples."""
    catalog = Dataset.from_dict(
        {"item_id": list(catalog_items), "title": list(catalog_items), "text": [""] * len(catalog_items),
         "categories": [[]] * len(catalog_items)},  # fmt: skip
        features=CATALOG_FEATURES,
    )
    cols = list(zip(*rows))
    inter = Dataset.from_dict(
        {"user_id": list(cols[0]), "item_id": list(cols[1]), "timestamp": list(cols[2]),
         "scenario": list(cols[3]), "query": list(cols[4])},  # fmt: skip
        features=INTERACTION_FEATURES,
    )
    return catalog, inter


def _pairs(ds: Dataset) -> list[tuple[str, list[str], str]]:
    return [(r["user_id"], r["history"], r["target_item"]) for r in ds]


def test_leave_one_out_split_on_a_hand_built_table():
    # u1: rec items in time order a(1) b(2) c(3, listed before d with the same timestamp) d(3) e(5); rows shuffled.
    # u2: only two rec interactions (< min_user_interactions=3): train only.
    cat, inter = _table([
        ("u1", "e", 5, "rec", ""), ("u1", "c", 3, "rec", ""), ("u2", "f", 1, "rec", ""), ("u1", "a", 1, "rec", ""),
        ("u1", "d", 3, "rec", ""), ("u1", "b", 2, "rec", ""), ("u2", "g", 2, "rec", ""), ("u1", "h", 4, "search", "q"),
    ])  # fmt: skip
    rec = build_examples(cat, inter, SplitConfig(max_history=2))["recommend"]
    assert rec["train"].features == EXAMPLE_FEATURES
    assert _pairs(rec["train"]) == [("u1", ["a"], "b"), ("u1", ["a", "b"], "c"), ("u2", ["f"], "g")]
    assert _pairs(rec["validation"]) == [("u1", ["b", "c"], "d")]
    assert _pairs(rec["test"]) == [("u1", ["c", "d"], "e")]
    assert set(rec["train"]["task"]) == {"recommend"} and set(rec["test"]["query"]) == {""}

    wide = build_examples(cat, inter, SplitConfig(max_history=20))["recommend"]
    assert _pairs(wide["test"]) == [("u1", ["a", "b", "c", "d"], "e")]


def test_search_split_is_query_disjoint_and_deterministic():
    cat, inter = generate_synthetic(SyntheticConfig(**SMALL, searches_per_user=15))
    cfg = SplitConfig(search_valid_fraction=0.2, search_test_fraction=0.2, seed=1)
    search = build_examples(cat, inter, cfg)["search"]
    queries = {split: {normalize_query(q) for q in search[split]["query"]} for split in search}
    assert queries["test"] and queries["validation"] and queries["train"]
    assert not queries["train"] & queries["test"]
    assert not queries["train"] & queries["validation"]
    assert not queries["validation"] & queries["test"]
    # every search interaction becomes one example, except training ones that target the user's held-out rec items
    assert sum(len(ds) for ds in search.values()) <= inter["scenario"].count("search")
    assert sum(len(ds) for ds in search.values()) >= 0.9 * inter["scenario"].count("search")
    again = build_examples(cat, inter, cfg)["search"]
    assert all(search[s].to_dict() == again[s].to_dict() for s in search)


def test_search_examples_group_query_variants_and_use_earlier_history():
    rows = [("u1", "a", 1, "rec", ""), ("u1", "b", 2, "rec", ""), ("u1", "c", 3, "search", "Red  Shoe"),
            ("u1", "d", 3, "rec", ""), ("u2", "c", 9, "search", "red shoe")]  # fmt: skip
    for k in range(20):
        rows += [("u3", "e", 2 * k, "search", f"Query {k}"), ("u3", "f", 2 * k + 1, "search", f" query  {k}")]
    cat, inter = _table(rows)
    search = build_examples(cat, inter, SplitConfig(max_history=1))["search"]
    split_of = {q: s for s in search for q in search[s]["query"]}
    assert split_of["Red  Shoe"] == split_of["red shoe"]  # same normalised query, same split
    assert all(split_of[f"Query {k}"] == split_of[f" query  {k}"] for k in range(20))
    distinct = {s: {normalize_query(q) for q in search[s]["query"]} for s in search}
    assert (len(distinct["test"]), len(distinct["validation"]), len(distinct["train"])) == (2, 2, 17)  # 10% of 21
    first = next(r for s in search for r in search[s] if r["query"] == "Red  Shoe")
    # Rec items strictly before t=3 are a, b (last max_history=1 → b); a training input must not hold u1's held-out
    # rec items (b is u1's validation target, d its test target), so there the history stops at a.
    assert first["history"] == (["a"] if split_of["Red  Shoe"] == "train" else ["b"])
    assert first["target_item"] == "c" and first["task"] == "search"


def test_search_training_histories_exclude_held_out_rec_items():
    rows = [("u1", i, t, "rec", "") for t, i in enumerate("abcde")]  # valid target d, test target e
    rows += [("u1", "a", 10 + k, "search", f"q{k}") for k in range(30)]
    cat, inter = _table(rows)
    search = build_examples(cat, inter)["search"]
    assert len(search["train"]) > 0
    assert all(h == ["a", "b", "c"] for h in search["train"]["history"])
    # a search training example may not target the user's held-out rec items either
    rows2 = rows + [("u1", item, 50 + k, "search", f"r{k} {item}") for k in range(10) for item in "de"]
    cat2, inter2 = _table(rows2)
    search2 = build_examples(cat2, inter2)["search"]
    assert "d" not in search2["train"]["target_item"] and "e" not in search2["train"]["target_item"]
    assert "a" in search2["train"]["target_item"]
    held_out_rows = sum(1 for r in rows2 if r[3] == "search" and r[1] in "de")
    kept = sum(t in "de" for split in ("validation", "test") for t in search2[split]["target_item"])
    assert sum(len(ds) for ds in search2.values()) == sum(r[3] == "search" for r in rows2) - (held_out_rows - kept)
    assert all(h == list("abcde") for h in search["test"]["history"])  # the past is fair game at test time


def test_absent_scenario_gives_empty_typed_splits_and_check_tasks_names_it():
    cat, inter = _table([("u1", i, t, "rec", "") for t, i in enumerate("abcd")])
    examples = build_examples(cat, inter)
    assert all(len(ds) == 0 and ds.features == EXAMPLE_FEATURES for ds in examples["search"].values())
    check_tasks(examples, ["recommend"])
    with pytest.raises(ValueError, match="task 'search' has no 'train' examples"):
        check_tasks(examples)
    _, lonely = _table([("u1", "a", 1, "rec", "")])
    with pytest.raises(ValueError, match="produce no examples"):
        build_examples(cat, lonely)


# --------------------------------------------------------------------------- mixture


def _examples(task: str, targets: list[str]) -> Dataset:
    n = len(targets)
    return Dataset.from_dict(
        {"task": [task] * n, "user_id": [f"u{i}" for i in range(n)], "query": [f"q{i}" for i in range(n)],
         "history": [[]] * n, "target_item": targets},  # fmt: skip
        features=EXAMPLE_FEATURES,
    )


def test_mixture_caps_examples_per_item_of_the_added_task_only():
    sets = {
        "search": _examples("search", ["x"] * 10 + ["y"] * 2 + ["z"]),
        "recommend": _examples("recommend", ["x"] * 7),
    }
    config = MixtureConfig(added_task="search", added_task_item_cap=3, seed=5)
    mixed = mix_tasks(sets, config)
    counts = Counter((t, i) for t, i in zip(mixed["task"], mixed["target_item"]))
    assert counts == {("search", "x"): 3, ("search", "y"): 2, ("search", "z"): 1, ("recommend", "x"): 7}
    kept = [u for t, u in zip(mixed["task"], mixed["user_id"]) if t == "search"]
    assert len(set(kept)) == len(kept)  # capped by dropping, never duplicating
    assert mixed.to_dict() == mix_tasks(sets, config).to_dict()


def test_mixture_weights_resample_to_shares_of_the_total():
    sets = {"search": _examples("search", list("abcd")), "recommend": _examples("recommend", list("abcdefgh"))}
    mixed = mix_tasks(sets, MixtureConfig(task_weights={"search": 1.0, "recommend": 1.0}, seed=0))
    assert len(mixed) == 12
    per_task = Counter(mixed["task"])
    assert per_task == {"search": 6, "recommend": 6}
    search_users = Counter(u for t, u in zip(mixed["task"], mixed["user_id"]) if t == "search")
    assert set(search_users) == {"u0", "u1", "u2", "u3"} and set(search_users.values()) == {1, 2}  # upsampled
    rec_users = [u for t, u in zip(mixed["task"], mixed["user_id"]) if t == "recommend"]
    assert len(set(rec_users)) == 6  # downsampled without replacement

    natural = mix_tasks(sets, MixtureConfig(seed=0))
    assert Counter(natural["task"]) == {"search": 4, "recommend": 8}
    other = mix_tasks(sets, MixtureConfig(seed=1))
    assert natural["user_id"] != other["user_id"] and sorted(natural["user_id"]) == sorted(other["user_id"])
    only_rec = mix_tasks(sets, MixtureConfig(tasks=["recommend"]))
    assert set(only_rec["task"]) == {"recommend"} and len(only_rec) == 8


def test_mix_tasks_needs_every_configured_task():
    with pytest.raises(ValueError, match=r"no training set for task\(s\) \['search'\]"):
        mix_tasks({"recommend": _examples("recommend", ["a"])}, MixtureConfig())


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: SyntheticConfig(alignment=1.5), r"alignment must be in \[0, 1\], got 1\.5"),
        (lambda: SyntheticConfig(num_items=5, num_topics=10), r"num_items must be >= num_topics \(10\), got 5"),
        (lambda: SyntheticConfig(min_history_length=10, max_history_length=4), r"max_history_length.*got 4"),
        (lambda: SyntheticConfig(query_max_terms=99), r"query_max_terms.*got 99"),
        (lambda: SyntheticConfig(drift_prob=-0.1), r"drift_prob.*got -0\.1"),
        (lambda: SplitConfig(max_history=0), r"max_history must be >= 1, got 0"),
        (lambda: SplitConfig(search_test_fraction=1.2), r"search_test_fraction.*got 1\.2"),
        (lambda: SplitConfig(search_valid_fraction=0.6, search_test_fraction=0.5), r"must be < 1, got 1\.1"),
        (lambda: SplitConfig(min_user_interactions=2), r"min_user_interactions must be >= 3.*got 2"),
        (lambda: MixtureConfig(tasks=["search", "ranking"]), r"unknown task 'ranking'"),
        (lambda: MixtureConfig(task_weights={"search": -1.0, "recommend": 1.0}), r"\['search'\].*got -1\.0"),
        (lambda: MixtureConfig(task_weights={"search": 1.0, "qa": 1.0}), r"unknown task 'qa'"),
        (lambda: MixtureConfig(task_weights={"search": 1.0}), r"no weight for task\(s\) \['recommend'\]"),
        (lambda: MixtureConfig(added_task="search", added_task_item_cap=0), r"added_task_item_cap must be >= 1, got 0"),
        (lambda: MixtureConfig(tasks=["recommend"], added_task="search"), r"added_task 'search' is not one of tasks"),
        (lambda: MixtureConfig(added_task_item_cap=5), r"added_task_item_cap=5 needs added_task"),
    ],
)
def test_bad_configs_name_the_bad_value(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_json_rows_written_by_save_table_are_plain_objects(tmp_path):
    tiny = SyntheticConfig(num_items=3, num_users=1, num_topics=1, topics_per_user=1, searches_per_user=0)
    cat, _ = generate_synthetic(tiny)
    save_table(cat, tmp_path / "c.jsonl")
    first = json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])
    assert set(first) == set(CATALOG_FEATURES) and isinstance(first["categories"], list)
