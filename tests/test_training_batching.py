"""Pre-tokenised examples, the length-bucketed sampler and dynamic padding (genretrieval/training/batching.py)."""

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from genretrieval.training.batching import (
    EpochPermutationSampler,
    LengthGroupedSampler,
    PaddingCollator,
    TokenizedExamples,
    padding_stats,
    tokenize_examples,
)


def _lengths(n: int, seed: int = 0) -> np.ndarray:
    # Two populations like ours: short search queries and long recommendation histories.
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < 0.6, rng.integers(3, 9, n), rng.integers(5, 23, n))


@pytest.mark.parametrize("n, batch_size, factor", [(1000, 32, 50), (1000, 32, 2), (999, 64, 3), (5, 8, 50), (64, 64, 1)])
def test_every_index_exactly_once_per_epoch(n, batch_size, factor):
    sampler = LengthGroupedSampler(_lengths(n), batch_size, seed=1, mega_batch_factor=factor)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) == n
        assert Counter(order) == Counter(range(n))
        batches = sampler.batches()
        assert all(len(b) == batch_size for b in batches[:-1]) and 0 < len(batches[-1]) <= batch_size


def test_order_is_a_function_of_seed_and_epoch_only():
    lengths = _lengths(2000)
    a, b = LengthGroupedSampler(lengths, 32, seed=7), LengthGroupedSampler(lengths, 32, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first, "each epoch must get a new order"
    a.set_epoch(0)
    assert list(a) == first, "an epoch's order must not depend on what was drawn before (exact resumption)"
    assert list(LengthGroupedSampler(lengths, 32, seed=8)) != first
    torch.manual_seed(0)
    np.random.seed(0)
    assert list(LengthGroupedSampler(lengths, 32, seed=7)) == first, "the global RNGs must play no part"


def test_batches_are_length_homogeneous_and_shuffled():
    lengths = _lengths(6400)
    bucketed = LengthGroupedSampler(lengths, 64, seed=3).batches()
    order = np.asarray(list(EpochPermutationSampler(len(lengths), 3)))
    random = [order[i : i + 64] for i in range(0, len(order), 64)]
    spread = lambda batches: np.mean([lengths[b].max() - lengths[b].min() for b in batches])  # noqa: E731
    assert spread(bucketed) < 0.2 * spread(random)
    assert padding_stats(lengths, bucketed)["padding_fraction"] < 0.1 < padding_stats(lengths, random)["padding_fraction"]
    # Not one long-to-short sweep per mega-batch: consecutive batches' longest rows are not sorted.
    maxima = [int(lengths[b].max()) for b in bucketed]
    assert maxima != sorted(maxima, reverse=True) and maxima != sorted(maxima)


def test_dataloader_batches_are_the_sampler_batches():
    lengths = _lengths(300)
    sampler = LengthGroupedSampler(lengths, 32, seed=0, mega_batch_factor=4)
    loader = DataLoader(range(300), batch_size=32, sampler=sampler)
    assert [b.tolist() for b in loader] == [b.tolist() for b in sampler.batches()]


@pytest.mark.parametrize("kwargs, message", [({"batch_size": 0}, "batch_size"), ({"mega_batch_factor": 0}, "mega_batch_factor")])
def test_bad_sampler_arguments_are_named(kwargs, message):
    args = {"lengths": [3, 4], "batch_size": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        LengthGroupedSampler(**args)


def test_bad_training_arguments_are_named():
    from genretrieval.training import TrainingArguments

    with pytest.raises(ValueError, match="length_group_factor"):
        TrainingArguments(length_group_factor=0)
    with pytest.raises(ValueError, match="speed_warmup_steps"):
        TrainingArguments(speed_warmup_steps=-1)


def test_default_thread_count_shares_the_cores_among_local_processes(monkeypatch):
    import os

    from genretrieval.training.trainer import default_num_threads

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_num_threads() == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_num_threads() == max(1, cores // 2)


@pytest.fixture(scope="module")
def tiny():
    """A tiny retriever and its mixed training set, built the way train() builds them."""
    from genretrieval.data.builders import build_examples, mix_tasks
    from genretrieval.data.synthetic import SyntheticConfig
    from genretrieval.modeling.retriever import ModelConfig
    from genretrieval.training import DataConfig, TrainConfig, TrainingArguments
    from genretrieval.training.trainer import build_retriever, load_tables

    config = TrainConfig(data=DataConfig(synthetic=SyntheticConfig(num_items=40, num_users=30, num_topics=4)),
                         model=ModelConfig(d_model=16, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=8,
                                           max_source_length=12),
                         training=TrainingArguments(batch_size=8))
    catalog, interactions = load_tables(config)
    examples = build_examples(catalog, interactions, config.data.split)
    train_set = mix_tasks({t: examples[t]["train"] for t in config.mixture.tasks}, config.mixture)
    return build_retriever(config, catalog, examples, log=lambda *_: None), train_set


def test_padded_batches_equal_the_tokenizer_collator(tiny):
    """Pre-tokenised + PaddingCollator gives exactly the tensors of tokenising each batch on the fly."""
    from genretrieval.training.trainer import Seq2SeqCollator

    retriever, train_set = tiny
    examples = TokenizedExamples(tokenize_examples(train_set, retriever))
    assert len(examples) == len(train_set)
    assert examples.lengths.max() == retriever.max_source_length, "truncation must apply (the fixture's limit is short)"
    collate = PaddingCollator(retriever.tokenizer.pad_token_id)
    reference = Seq2SeqCollator(retriever)
    for rows in (list(range(8)), [3, 17, 5, 40, 41, 2], [len(train_set) - 1]):
        got, want = collate(examples.__getitems__(rows)), reference([train_set[i] for i in rows])
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), key


def test_tokenised_set_is_cached_by_fingerprint(tiny, tmp_path):
    retriever, train_set = tiny
    first = tokenize_examples(train_set, retriever, tmp_path)
    files = sorted(tmp_path.glob("tokenized-*.arrow"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = tokenize_examples(train_set, retriever, tmp_path)
    assert files[0].stat().st_mtime_ns == stamp and sorted(tmp_path.glob("tokenized-*.arrow")) == files
    assert again["input_ids"] == first["input_ids"] and again["labels"] == first["labels"]
    # Anything the ids depend on changes the fingerprint, hence the file.
    other = retriever.with_model(retriever.model)
    other.max_source_length = 5
    tokenize_examples(train_set, other, tmp_path)
    assert len(list(tmp_path.glob("tokenized-*.arrow"))) == 2
    tokenize_examples(train_set.select(range(10)), retriever, tmp_path)
    assert len(list(tmp_path.glob("tokenized-*.arrow"))) == 3
