"""Tests for the public-dataset loaders (MovieLens, Amazon, product search), query simulation and the per-user split.

Every test writes its own small fixture in ``tmp_path``; nothing here reads the real data in ``/work/shared/data``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from datasets import Dataset

from genretrieval.data import (
    CATALOG_FEATURES,
    INTERACTION_FEATURES,
    DataFormatError,
    SplitConfig,
    build_examples,
    validate_catalog,
    validate_interactions,
)
from genretrieval.data.loaders import (
    ProductSearchData,
    detect_movielens_format,
    load_amazon_reviews,
    load_amazon_sequences,
    load_movielens,
    load_product_search,
    product_search_examples,
)
from genretrieval.data.queries import (
    AMAZON_BEAUTY_TOP_CATEGORIES,
    STOP_WORDS,
    QuerySimulationConfig,
    describe,
    item_queries,
    resolve_top_categories,
    simulate_search,
)


def write(path: Path, text: str, encoding: str = "utf-8", gz: bool = False) -> Path:
    """Write a fixture file (gzipped when ``gz``) and return its path."""
    data = text.encode(encoding)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def check_tables(catalog: Dataset, interactions: Dataset) -> None:
    assert catalog.features == CATALOG_FEATURES
    assert interactions.features == INTERACTION_FEATURES
    validate_catalog(catalog)
    validate_interactions(interactions, catalog)


def rows(interactions: Dataset) -> list[tuple]:
    return [(r["user_id"], r["item_id"], r["timestamp"], r["scenario"], r["query"]) for r in interactions.to_list()]


# --------------------------------------------------------------------------- MovieLens

U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|Amélie (2001)|01-Jan-2001||http://x|0|0|0|0|0|1|0|0|0|0|0|0|0|0|1|0|0|0|0\n"
    "3|Unrated (1990)|01-Jan-1990||http://x|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "4|unknown|||http://x|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
)
U_GENRE = "".join(
    f"{name}|{i}\n"
    for i, name in enumerate(
        "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy Film-Noir Horror "
        "Musical Mystery Romance Sci-Fi Thriller War Western".split()
    )
)
# user 10 before user 2 in the file, equal timestamps for user 2: order must be (user numerically, time, line)
U_DATA = "10\t1\t4\t500\n2\t2\t5\t300\n2\t1\t3\t300\n2\t4\t1\t100\n"


def ml100k(tmp_path: Path, data: str = U_DATA, item: str = U_ITEM, genre: bool = True, gz: bool = False) -> Path:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    write(folder / ("u.data.gz" if gz else "u.data"), data, gz=gz)
    write(folder / "u.item", item, encoding="latin-1")
    if genre:
        write(folder / "u.genre", U_GENRE + "\n")
    return folder


@pytest.mark.parametrize("gz", [False, True])
def test_ml100k_parses_into_canonical_tables(tmp_path, gz):
    folder = ml100k(tmp_path, gz=gz)
    assert detect_movielens_format(folder) == "ml-100k"
    catalog, interactions = load_movielens(folder)
    check_tables(catalog, interactions)
    # item 3 has no rating: not in the catalog; latin-1 title decoded; the 'unknown' genre is no genre
    assert catalog.to_list() == [
        {"item_id": "1", "title": "Toy Story (1995)",
         "text": "Toy Story (1995). Genres: Animation, Children's, Comedy.",
         "categories": ["Animation", "Children's", "Comedy"]},
        {"item_id": "2", "title": "Amélie (2001)", "text": "Amélie (2001). Genres: Comedy, Romance.",
         "categories": ["Comedy", "Romance"]},
        {"item_id": "4", "title": "unknown", "text": "unknown.", "categories": []},
    ]  # fmt: skip
    assert rows(interactions) == [
        ("2", "4", 100, "rec", ""),
        ("2", "2", 300, "rec", ""),  # tie at 300: file order
        ("2", "1", 300, "rec", ""),
        ("10", "1", 500, "rec", ""),
    ]


def test_ml100k_without_u_genre_uses_the_standard_names_and_min_rating_filters(tmp_path):
    catalog, interactions = load_movielens(ml100k(tmp_path, genre=False), min_rating=4)
    assert rows(interactions) == [("2", "2", 300, "rec", ""), ("10", "1", 500, "rec", "")]
    assert catalog["item_id"] == ["1", "2"]  # item 4 lost its only rating
    assert catalog["categories"][0] == ["Animation", "Children's", "Comedy"]


def test_ml1m_dat_format(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    movies = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Misérables, Les (1995)::Drama\n"
    write(folder / "movies.dat", movies, "latin-1")
    write(folder / "ratings.dat", "1::2::5::978300760\n1::1::3::978300700\n")
    assert detect_movielens_format(folder) == "ml-dat"
    catalog, interactions = load_movielens(folder)
    check_tables(catalog, interactions)
    assert catalog["title"] == ["Toy Story (1995)", "Misérables, Les (1995)"]
    assert catalog["categories"] == [["Animation", "Children's", "Comedy"], ["Drama"]]
    assert rows(interactions) == [("1", "1", 978300700, "rec", ""), ("1", "2", 978300760, "rec", "")]


def test_ml_latest_csv_with_quoted_titles_and_tags(tmp_path):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    write(folder / "movies.csv", 'movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama|Romance\n'
          "7,Unknown Film (2000),(no genres listed)\n")  # fmt: skip
    write(folder / "ratings.csv", "userId,movieId,rating,timestamp\n5,7,3.5,20\n5,1,4.0,10\n")
    write(folder / "tags.csv", "userId,movieId,tag,timestamp\n5,1,politics,1\n6,1,Politics,2\n5,1,  sorkin ,3\n")
    catalog, interactions = load_movielens(folder)
    check_tables(catalog, interactions)
    assert catalog.to_list()[0] == {
        "item_id": "1",
        "title": "American President, The (1995)",
        "text": "American President, The (1995). Genres: Comedy, Drama, Romance. Tags: politics, sorkin.",
        "categories": ["Comedy", "Drama", "Romance"],
    }
    assert catalog.to_list()[1]["categories"] == []
    assert rows(interactions) == [("5", "1", 10, "rec", ""), ("5", "7", 20, "rec", "")]
    _, no_tags = load_movielens(folder, max_tags=0)
    assert len(no_tags) == 2


@pytest.mark.parametrize(
    "data, line, field, detail",
    [
        ("1\t1\t4\t5\n2\t1\t4\n", 2, None, "expected 4 tab-separated fields"),
        ("1\t1\t4\t5\n\n1\t2\t4\tsoon\n", 3, "timestamp", "'soon' is not an integer"),
        ("1\t99\t4\t5\n", 1, "item_id", "unknown item '99'"),
        ("1\t1\tgood\t5\n", 1, "rating", "'good' is not a number"),
    ],
)
def test_movielens_malformed_ratings_name_file_line_and_field(tmp_path, data, line, field, detail):
    with pytest.raises(DataFormatError, match=detail) as info:
        load_movielens(ml100k(tmp_path, data=data))
    assert info.value.path.endswith("u.data") and info.value.line == line and info.value.field == field
    assert f"u.data line {line}" in str(info.value)


def test_movielens_malformed_item_files(tmp_path):
    bad_flag = U_ITEM.replace("|1|1|1|", "|1|1|x|", 1)  # Toy Story's Comedy flag
    with pytest.raises(DataFormatError, match="u.item line 1, field 'genre Comedy': genre flag must be 0 or 1"):
        load_movielens(ml100k(tmp_path, item=bad_flag))
    short = tmp_path / "short"
    short.mkdir()
    lines = U_ITEM.splitlines(keepends=True)
    lines[1] = lines[1].replace("|http://x", "")
    with pytest.raises(DataFormatError, match=r"u.item line 2: expected 24 '\|'-separated fields .* got 23"):
        load_movielens(ml100k(short, item="".join(lines)))


def test_movielens_missing_files_name_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"u\.data \+ u\.item.*ratings\.dat \+ movies\.dat.*ratings\.csv"):
        load_movielens(tmp_path)
    write(tmp_path / "u.data", U_DATA)
    with pytest.raises(FileNotFoundError, match=r"missing u\.item"):
        load_movielens(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_movielens(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="min_rating.*nan"):
        load_movielens(tmp_path, min_rating=float("nan"))


# --------------------------------------------------------------------------- Amazon raw reviews

REVIEWS_2018 = [
    {"overall": 5.0, "reviewerID": "B_USER", "asin": "I2", "unixReviewTime": 300, "reviewText": "nice"},
    {"overall": 4.0, "reviewerID": "A_USER", "asin": "I1", "unixReviewTime": 200},
    {"overall": 4.0, "reviewerID": "A_USER", "asin": "I2", "unixReviewTime": 100},
]
META_2018 = [
    {"asin": "I0", "title": "Never reviewed"},
    {"asin": "I2", "title": "Shampoo &amp; More", "brand": "Acme", "category": ["All Beauty", "Hair Care", "</span>"],
     "description": ["<b>Gentle</b> wash", "for all"]},
    {"asin": "I1", "title": "Lipstick", "category": ["All Beauty", "Makeup", "Lips"]},
    {"asin": "I2", "title": "Duplicate line: ignored"},
]  # fmt: skip


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_amazon_2018_strict_json_gzipped(tmp_path):
    reviews = write(tmp_path / "Beauty_5.json.gz", jsonl(REVIEWS_2018), gz=True)
    meta = write(tmp_path / "meta_Beauty.json.gz", jsonl(META_2018), gz=True)
    catalog, interactions = load_amazon_reviews(reviews, meta)
    check_tables(catalog, interactions)
    assert catalog.to_list() == [
        {"item_id": "I2", "title": "Shampoo & More",
         "text": "Shampoo & More. Brand: Acme. Categories: Hair Care. Gentle wash for all",
         "categories": ["Hair Care"]},
        {"item_id": "I1", "title": "Lipstick", "text": "Lipstick. Categories: Makeup, Lips",
         "categories": ["Makeup", "Lips"]},
    ]  # fmt: skip
    assert rows(interactions) == [
        ("A_USER", "I2", 100, "rec", ""),
        ("A_USER", "I1", 200, "rec", ""),
        ("B_USER", "I2", 300, "rec", ""),
    ]
    kept_root, _ = load_amazon_reviews(reviews, meta, category_root_drop=False)
    assert kept_root["categories"][1] == ["All Beauty", "Makeup", "Lips"]


def test_amazon_2014_loose_json_and_k_core(tmp_path):
    # 2014 dumps are Python reprs (single quotes), categories a list of paths; the first path is used
    meta = "{'asin': 'X1', 'title': 'Cream', 'categories': [['Beauty', 'Skin Care', 'Face'], ['Health']]}\n" \
           "{'asin': 'X2', 'categories': [['Beauty', 'Makeup']], 'description': 'red'}\n"  # fmt: skip
    reviews = "".join(
        repr({"reviewerID": u, "asin": i, "unixReviewTime": t}) + "\n"
        for u, i, t in [("u1", "X1", 1), ("u1", "X2", 2), ("u2", "X1", 3), ("u2", "X2", 4), ("u3", "X1", 5)]
    )
    write(tmp_path / "meta.json", meta)
    write(tmp_path / "reviews.json", reviews)
    catalog, interactions = load_amazon_reviews(tmp_path / "reviews.json", tmp_path / "meta.json")
    assert catalog.to_list() == [
        {"item_id": "X1", "title": "Cream", "text": "Cream. Categories: Skin Care, Face",
         "categories": ["Skin Care", "Face"]},
        {"item_id": "X2", "title": "X2", "text": "X2. Categories: Makeup. red", "categories": ["Makeup"]},
    ]  # fmt: skip
    assert len(interactions) == 5
    _, core = load_amazon_reviews(tmp_path / "reviews.json", tmp_path / "meta.json", k_core=2)
    assert sorted(set(core["user_id"])) == ["u1", "u2"]  # u3 has one review


@pytest.mark.parametrize(
    "line2, field, detail",
    [
        ('{"reviewerID": "u", "asin": "I1", ', None, "malformed JSON.*not a Python dict literal"),
        ("__import__('os').system('touch pwned')", None, "malformed JSON"),  # literal_eval never runs code
        ('{"reviewerID": "u", "asin": "I1"}', "unixReviewTime", "required field is missing"),
        ('{"reviewerID": "u", "asin": "I1", "unixReviewTime": "May 2"}', "unixReviewTime", "is not an integer"),
        ('{"reviewerID": "u", "asin": "NOPE", "unixReviewTime": 3}', "asin", "'NOPE' has no line in the metadata"),
    ],
)
def test_amazon_malformed_reviews_name_file_line_and_field(tmp_path, monkeypatch, line2, field, detail):
    monkeypatch.chdir(tmp_path)
    reviews = write(tmp_path / "r.json", '{"reviewerID": "u", "asin": "I1", "unixReviewTime": 1}\n' + line2 + "\n")
    meta = write(tmp_path / "m.json", jsonl(META_2018))
    with pytest.raises(DataFormatError, match=detail) as info:
        load_amazon_reviews(reviews, meta)
    assert (info.value.path, info.value.line, info.value.field) == (str(reviews), 2, field)
    assert not (tmp_path / "pwned").exists()


def test_amazon_missing_metadata_can_be_dropped_and_bad_categories_are_named(tmp_path):
    reviews = write(tmp_path / "r.json", jsonl(REVIEWS_2018 + [{"reviewerID": "C", "asin": "Z", "unixReviewTime": 9}]))
    meta = write(tmp_path / "m.json", jsonl(META_2018))
    _, interactions = load_amazon_reviews(reviews, meta, missing_metadata="drop")
    assert "Z" not in interactions["item_id"] and len(interactions) == 3
    bad = write(tmp_path / "bad.json", jsonl([{"asin": "I1", "categories": "Beauty"}, {"asin": "I2"}]))
    with pytest.raises(DataFormatError, match="bad.json line 1, field 'categories'"):
        load_amazon_reviews(reviews, bad, missing_metadata="drop")
    with pytest.raises(ValueError, match="k_core.*0"):
        load_amazon_reviews(reviews, meta, k_core=0)


# --------------------------------------------------------------------------- Amazon preprocessed sequences

ITEMS = [
    {"item_id": 1, "asin": "A1", "text": "nail lacquer", "attributes": ["OPI", "Makeup", "Nails", "Nail Polish"]},
    {"item_id": 2, "asin": "A2", "text": "face  cream", "attributes": ["Skin Care", "Face"]},
    {"item_id": 3, "asin": "A3", "text": "", "attributes": ["L&#39;Oreal", "Hair Care"]},
]


def beauty(tmp_path: Path, sequences: str = "2 3 1\n1 1 2 3\n", gz: bool = False) -> Path:
    folder = tmp_path / "beauty"
    folder.mkdir()
    write(folder / ("sequences.txt.gz" if gz else "sequences.txt"), sequences, gz=gz)
    write(folder / "items.jsonl", jsonl(ITEMS))
    return folder


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_sequences(tmp_path, gz):
    catalog, interactions = load_amazon_sequences(beauty(tmp_path, gz=gz))
    check_tables(catalog, interactions)
    assert catalog.to_list() == [
        {"item_id": "1", "title": "nail lacquer", "text": "nail lacquer",
         "categories": ["OPI", "Makeup", "Nails", "Nail Polish"]},
        {"item_id": "2", "title": "face cream", "text": "face cream", "categories": ["Skin Care", "Face"]},
        {"item_id": "3", "title": "A3", "text": "", "categories": ["L'Oreal", "Hair Care"]},
    ]  # fmt: skip
    assert rows(interactions) == [
        ("1", "1", 0, "rec", ""), ("1", "2", 1, "rec", ""), ("1", "3", 2, "rec", ""),
        ("2", "3", 0, "rec", ""), ("2", "1", 1, "rec", ""),
    ]  # fmt: skip


def test_amazon_sequences_errors(tmp_path):
    with pytest.raises(DataFormatError, match=r"sequences.txt line 2, field 'item_id': unknown item '9' at position 2"):
        load_amazon_sequences(beauty(tmp_path, "1 1\n2 1 9\n"))
    other = tmp_path / "o"
    other.mkdir()
    with pytest.raises(DataFormatError, match=r"line 2, field 'user_id': user '1' already has a sequence on line 1"):
        load_amazon_sequences(beauty(other, "1 1\n1 2\n"))
    empty = tmp_path / "e"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"missing sequences.txt and items.jsonl.*user item item"):
        load_amazon_sequences(empty)
    write(empty / "sequences.txt", "1 1\n")
    write(empty / "items.jsonl", '{"item_id": 1, "text": "a"}\n{"item_id": 2, "text": "b"\n')
    with pytest.raises(DataFormatError, match=r"items.jsonl line 2: malformed JSON"):
        load_amazon_sequences(empty)


# --------------------------------------------------------------------------- Ai et al. product search

QUERIES = "cell phone accessory case\ncell phone accessory charger\nelectronics computer accessory\n"
TRAIN_QRELS = "U1_0 0 P1 1 \nU1_1 0 P2 1\nU2_0 0 P1 1\nU2_2 0 P3 0\nU3_1 0 P2 1\n"
TEST_QRELS = "U1_2 0 P4 1\n"


def product_folder(tmp_path: Path, train: str = TRAIN_QRELS, queries: str = QUERIES) -> Path:
    folder = tmp_path / "cellphones"
    folder.mkdir()
    write(folder / "query_text.txt.gz", queries, gz=True)
    write(folder / "train.qrels.gz", train, gz=True)
    write(folder / "test.qrels.gz", TEST_QRELS, gz=True)
    return folder


def test_product_search_keeps_the_upstream_split(tmp_path):
    data = load_product_search(product_folder(tmp_path))
    assert isinstance(data, ProductSearchData)
    catalog, interactions, split = data
    check_tables(catalog, interactions)
    assert catalog.to_list() == [
        {"item_id": p, "title": p, "text": "", "categories": []} for p in ("P1", "P2", "P4")
    ]  # P3 only has a label-0 judgement
    assert rows(interactions) == [
        ("U1", "P1", 0, "search", "cell phone accessory case"),
        ("U1", "P2", 1, "search", "cell phone accessory charger"),
        ("U2", "P1", 2, "search", "cell phone accessory case"),
        ("U3", "P2", 3, "search", "cell phone accessory charger"),
        ("U1", "P4", 4, "search", "electronics computer accessory"),
    ]
    assert split == ["train", "train", "train", "train", "test"]


def test_product_search_examples(tmp_path):
    data = load_product_search(product_folder(tmp_path))
    ex = product_search_examples(data, validation_fraction=0.0)
    assert [len(ex[s]) for s in ("train", "validation", "test")] == [4, 0, 1]
    test = ex["test"][0]
    assert (test["user_id"], test["query"], test["target_item"]) == ("U1", "electronics computer accessory", "P4")
    assert test["history"] == ["P1", "P2"]  # training purchases, never a test item
    assert ex["train"][0]["history"] == ["P2"]  # own target excluded
    held = product_search_examples(data, validation_fraction=0.5, seed=1)
    valid_pairs = {(r["user_id"], r["query"]) for r in held["validation"]}
    assert len(valid_pairs) == 2 and not valid_pairs & {(r["user_id"], r["query"]) for r in held["train"]}
    again = product_search_examples(data, validation_fraction=0.5, seed=1)
    assert again["validation"].to_list() == held["validation"].to_list()
    assert product_search_examples(data, max_history=0)["test"][0]["history"] == []


@pytest.mark.parametrize(
    "train, field, detail",
    [
        ("U1_0 0 P1\n", None, "expected 4 space-separated fields"),
        ("U1_x 0 P1 1\n", "user_query", "'x' is not an integer"),
        ("U1_7 0 P1 1\n", "user_query", "query line 7 is outside query_text.txt.gz"),
        ("U1 0 P1 1\n", "user_query", "is not <reviewerID>_<query line>"),
        ("U1_0 0 P1 2\n", "relevance", "expected 0 or 1"),
    ],
)
def test_product_search_malformed_qrels(tmp_path, train, field, detail):
    with pytest.raises(DataFormatError, match=detail) as info:
        load_product_search(product_folder(tmp_path, train="U9_0 0 P1 1\n" + train))
    assert info.value.path.endswith("train.qrels.gz") and info.value.line == 2 and info.value.field == field


def test_product_search_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing query_text.txt, train.qrels, test.qrels.*query_text.txt.gz"):
        load_product_search(tmp_path)


# --------------------------------------------------------------------------- query simulation


def beauty_catalog() -> Dataset:
    return Dataset.from_dict(
        {
            "item_id": ["1", "2", "3", "4", "5", "6"],
            "title": ["t1", "t2", "t3", "t4", "t5", "t6"],
            "text": ["lacquer red", "cream of the day", "shampoo", "unique zebra", "unique yak", "serum"],
            "categories": [
                ["OPI", "Makeup", "Nails", "Nail Polish"],  # brand dropped
                ["Skin Care", "Face", "Creams & Moisturizers"],  # top category kept; '&' gone
                ["Unknown", "Hair Care", "Hair & Scalp Treatments"],  # 'Unknown' brand; repeated 'hair' dropped
                ["Makeup", "Makeup Palettes"],
                ["Retinol", "Skin Care", "Face", "Treatments & Masks", "Acids & Peels", "Retinol"],  # brand = a leaf
                ["Skin Care", "Sun", "After Sun"],  # 'after' is not a stop word
            ],
        },
        features=CATALOG_FEATURES,
    )


def rec_table(events: list[tuple[str, str, int]]) -> Dataset:
    return Dataset.from_dict(
        {
            "user_id": [u for u, _, _ in events],
            "item_id": [i for _, i, _ in events],
            "timestamp": [t for _, _, t in events],
            "scenario": ["rec"] * len(events),
            "query": [""] * len(events),
        },
        features=INTERACTION_FEATURES,
    )


def test_category_path_queries_follow_the_brand_rule():
    catalog = beauty_catalog()
    cfg = QuerySimulationConfig(method="category_path", drop_first_attribute_if_brand=True)
    assert resolve_top_categories(catalog, cfg) == {"Makeup", "Skin Care"}  # 'Retinol' is a leaf elsewhere, not a root
    expected = {
        "1": "makeup nails nail polish",
        "2": "skin care face creams moisturizers",
        "3": "hair care scalp treatments",
        "4": "makeup palettes",
        "5": "skin care face treatments masks acids peels retinol",
        "6": "skin care sun after",
    }
    assert item_queries(catalog, cfg) == expected
    explicit = QuerySimulationConfig(drop_first_attribute_if_brand=True, top_categories=AMAZON_BEAUTY_TOP_CATEGORIES)
    assert item_queries(catalog, explicit) == expected
    no_rule = item_queries(catalog, QuerySimulationConfig())
    assert no_rule["1"] == "opi makeup nails nail polish" and no_rule["3"] == "hair care scalp treatments"
    assert item_queries(catalog, QuerySimulationConfig(max_terms=2))["2"] == "skin care"
    assert {"the", "of", "and", "s"} <= STOP_WORDS and "after" not in STOP_WORDS


def test_simulated_search_sits_right_before_its_rec_event_and_is_seeded():
    catalog = beauty_catalog()
    inter = rec_table([("u", "1", 5), ("u", "2", 5), ("v", "3", 1), ("u", "6", 9)])
    cfg = QuerySimulationConfig(drop_first_attribute_if_brand=True)
    out = simulate_search(catalog, inter, cfg)
    assert rows(out) == [
        ("u", "1", 5, "search", "makeup nails nail polish"), ("u", "1", 5, "rec", ""),
        ("u", "2", 5, "search", "skin care face creams moisturizers"), ("u", "2", 5, "rec", ""),
        ("v", "3", 1, "search", "hair care scalp treatments"), ("v", "3", 1, "rec", ""),
        ("u", "6", 9, "search", "skin care sun after"), ("u", "6", 9, "rec", ""),
    ]  # fmt: skip
    validate_interactions(out, catalog)
    half = [simulate_search(catalog, inter, QuerySimulationConfig(search_fraction=0.5, seed=s)) for s in range(6)]
    picks = [tuple(r["item_id"] for r in t.to_list() if r["scenario"] == "search") for t in half]
    assert all(len(p) == 2 for p in picks) and len(set(picks)) > 1
    assert rows(simulate_search(catalog, inter, QuerySimulationConfig(search_fraction=0.5, seed=3))) == rows(half[3])
    # a search's history (rec items strictly before it) never holds its own target
    examples = build_examples(catalog, out, SplitConfig(search_valid_fraction=0.0, search_test_fraction=0.0))
    for ex in examples["search"]["train"]:
        assert ex["target_item"] not in ex["history"]


def movie_catalog() -> Dataset:
    return Dataset.from_dict(
        {
            "item_id": ["1", "2", "3"],
            "title": ["Toy Story (1995)", "The Usual Suspects (1995)", "Untitled"],
            "text": ["", "", ""],
            "categories": [["Animation", "Children's", "Comedy"], ["Crime", "Thriller"], ["unknown"]],
        },
        features=CATALOG_FEATURES,
    )


def test_genre_template_and_title_keywords():
    catalog = movie_catalog()
    inter = rec_table([("u", str(1 + k % 3), k) for k in range(60)])
    cfg = QuerySimulationConfig(method="genre_template", seed=7)
    a, b = simulate_search(catalog, inter, cfg), simulate_search(catalog, inter, cfg)
    assert rows(a) == rows(b)
    assert rows(a) != rows(simulate_search(catalog, inter, QuerySimulationConfig(method="genre_template", seed=8)))
    queries = {(r["item_id"], r["query"]) for r in a.to_list() if r["scenario"] == "search"}
    assert all(item != "3" for item, _ in queries)  # only the 'unknown' genre: no query
    allowed_2 = {
        "crime movies", "thriller movies", "crime films", "thriller films", "crime thriller movies",
        "crime movies from the 1990s", "thriller movies from the 1990s", "crime thriller films from the 1990s",
    }  # fmt: skip
    assert {q for item, q in queries if item == "2"} <= allowed_2
    assert len({q for item, q in queries if item == "2"}) >= 4
    custom = QuerySimulationConfig(method="genre_template", templates=("best {genre} of the {decade}s",))
    custom_queries = {r["query"] for r in simulate_search(catalog, inter, custom).to_list() if r["item_id"] == "1"}
    assert len(custom_queries - {""}) >= 2 and custom_queries - {""} <= {
        "best animation of the 1990s", "best children's of the 1990s", "best comedy of the 1990s"
    }
    titles = item_queries(catalog, QuerySimulationConfig(method="title_keywords"))
    assert titles == {"1": "toy story 1995", "2": "usual suspects 1995", "3": "untitled"}


def test_personalisation_uses_only_the_users_training_items():
    catalog = beauty_catalog()
    # u: training items 2 ('cream', 'day') and 6 ('serum'); held-out 4 and 5 carry the words 'unique zebra/yak'
    inter = rec_table([("u", "2", 1), ("u", "6", 2), ("u", "4", 3), ("u", "5", 4), ("w", "4", 1), ("w", "1", 2)])
    cfg = QuerySimulationConfig(drop_first_attribute_if_brand=True, personalize=True, personal_terms=2)
    out = simulate_search(catalog, inter, cfg)
    searches = {(r["user_id"], r["item_id"]): r["query"] for r in out.to_list() if r["scenario"] == "search"}
    for query in searches.values():
        assert not {"zebra", "yak", "unique"} & set(query.split())
    # 'serum' and 'cream'/'day' all have idf of one item: ties alphabetical -> 'cream', 'day'
    assert searches[("u", "4")] == "makeup palettes cream day"
    assert searches[("u", "2")] == "skin care face creams moisturizers cream day"
    assert searches[("w", "1")] == "makeup nails nail polish"  # w has only 2 rec events: no training item
    assert simulate_search(catalog, inter, cfg).to_list() == out.to_list()


def test_describe_and_config_validation():
    record = describe(QuerySimulationConfig(drop_first_attribute_if_brand=True), beauty_catalog())
    assert json.loads(json.dumps(record)) == record
    assert record["method"] == "category_path" and record["resolved_top_categories"] == ["Makeup", "Skin Care"]
    for kwargs, match in [
        (dict(method="bm25"), "method must be one of.*'bm25'"),
        (dict(search_fraction=0.0), "search_fraction.*0.0"),
        (dict(personal_terms=0), "personal_terms.*0"),
        (dict(templates=("{genre} by {director}",)), "unknown field.*director"),
        (dict(templates=("films from the {decade}s",)), "names no genre"),
        (dict(seed=-1), "seed.*-1"),
    ]:
        with pytest.raises(ValueError, match=match):
            QuerySimulationConfig(**kwargs)
    with pytest.raises(ValueError, match="genre_template"):
        item_queries(movie_catalog(), QuerySimulationConfig(method="genre_template"))


def test_simulate_search_rejects_unknown_items():
    with pytest.raises(ValueError, match="row 0, column 'item_id': unknown item 'zz'"):
        simulate_search(beauty_catalog(), rec_table([("u", "zz", 1)]), QuerySimulationConfig())


# --------------------------------------------------------------------------- per-user search split


def test_per_user_search_split_on_a_hand_built_table():
    catalog = Dataset.from_dict(
        {"item_id": list("abcdefg"), "title": list("abcdefg"), "text": [""] * 7, "categories": [[]] * 7},
        features=CATALOG_FEATURES,
    )
    events = [  # (user, item, time, scenario, query); rows deliberately not in time order
        ("u", "a", 1, "rec", ""), ("u", "b", 2, "rec", ""), ("u", "c", 3, "rec", ""), ("u", "d", 4, "rec", ""),
        ("u", "e", 30, "search", "q last"), ("u", "f", 10, "search", "q first"), ("u", "g", 20, "search", "q mid"),
        ("u", "a", 25, "search", "q tie"),  # 4 searches: 10 train, 20 train, 25 validation, 30 test
        ("v", "a", 5, "search", "q last"), ("v", "b", 6, "search", "q mid"),  # 2 searches < 3: train only
    ]  # fmt: skip
    inter = Dataset.from_dict(
        {k: [e[i] for e in events] for i, k in enumerate(INTERACTION_FEATURES)}, features=INTERACTION_FEATURES
    )
    ex = build_examples(catalog, inter, SplitConfig(search_split="user"))["search"]
    got = {s: [(r["user_id"], r["query"], r["target_item"], r["history"]) for r in ex[s]] for s in ex}
    # evaluation inputs hold every earlier rec item; training inputs never the held-out rec items c, d
    assert got["test"] == [("u", "q last", "e", ["a", "b", "c", "d"])]
    assert got["validation"] == [("u", "q tie", "a", ["a", "b", "c", "d"])]
    assert sorted(got["train"]) == [
        ("u", "q first", "f", ["a", "b"]), ("u", "q mid", "g", ["a", "b"]),
        ("v", "q last", "a", []), ("v", "q mid", "b", []),
    ]  # fmt: skip
    default = build_examples(catalog, inter, SplitConfig())["search"]
    assert SplitConfig().search_split == "query" and sum(len(d) for d in default.values()) == 6
    with pytest.raises(ValueError, match="search_split.*'time'"):
        SplitConfig(search_split="time")


def test_personal_keywords_skip_boilerplate_shared_by_most_items():
    catalog = Dataset.from_dict(
        {
            "item_id": ["1", "2", "3", "4"],
            "title": ["a", "b", "c", "d"],
            "text": ["genres drama", "genres drama", "genres comedy", "genres war"],
            "categories": [["Drama"], ["Drama"], ["Comedy"], ["War"]],
        },
        features=CATALOG_FEATURES,
    )
    inter = rec_table([("u", "1", 1), ("u", "2", 2), ("u", "3", 3), ("u", "4", 4)])
    cfg = QuerySimulationConfig(personalize=True, personal_terms=1)
    queries = [r["query"] for r in simulate_search(catalog, inter, cfg).to_list() if r["scenario"] == "search"]
    # 'genres' is in every text and 'drama' in half: 'drama' is the keyword, except in the drama queries themselves
    assert queries == ["drama", "drama", "comedy drama", "war drama"]
