"""SESRec head: building blocks on hand-built inputs, shapes, padding, losses, gradients, scoring, a tiny fit."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from genretrieval.modeling.heads import build_head, get_head_class
from genretrieval.modeling.heads.sesrec import (
    SESRecConfig,
    SESRecHead,
    alignment_loss,
    masked_softmax,
    similarity_split,
    triplet_loss,
)
from heads_util import random_batch, tiny_embeddings

DIM, USERS, ITEMS, VOCAB = 16, 10, 30, 50


def make_head(seed: int = 0, **params) -> SESRecHead:
    """A small SESRec head with deterministic initial weights."""
    torch.manual_seed(seed)
    params.setdefault("mlp_hidden", (32, 16))
    return build_head("sesrec", DIM, USERS, **params)


def with_left_padding(batch, extra: int):
    """The same requests with ``extra`` more padding columns on the left of every sequence."""
    b = batch.size
    pad_items = torch.full((b, extra), -1, dtype=torch.long)
    return dataclasses.replace(
        batch,
        history=torch.cat([pad_items, batch.history], 1),
        search_items=torch.cat([pad_items, batch.search_items], 1),
        search_queries=torch.cat(
            [torch.zeros(b, extra, batch.search_queries.shape[2], dtype=torch.long), batch.search_queries], 1),
    )


# -- registry and config --------------------------------------------------------------------------------------------

def test_build_head_registers_sesrec_with_paper_defaults():
    head = build_head("sesrec", DIM, USERS)
    assert isinstance(head, SESRecHead) and get_head_class("sesrec") is SESRecHead
    c = head.config
    assert (c.alpha, c.beta, c.margin, c.temperature) == (0.1, 0.001, 0.1, 0.1)
    assert (c.max_rec_len, c.max_search_len, c.mlp_hidden) == (15, 15, (200, 80))
    assert head.temperature.item() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown sesrec head parameter"):
        build_head("sesrec", DIM, USERS, gamma=1.0)


@pytest.mark.parametrize("field, value", [
    ("alpha", -0.1), ("beta", float("nan")), ("margin", 0.0), ("temperature", 0.0), ("num_layers", 0),
    ("num_heads", 0), ("max_rec_len", 0), ("max_search_len", 1.5), ("align_negatives", 0), ("score_chunk", 0),
    ("hidden_dim", 0), ("ffn_dim", -1), ("user_dim", True), ("mlp_hidden", ()), ("mlp_hidden", (8, 0)),
    ("alignment", 1), ("dropout", 1.0),
])
def test_config_validation_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        SESRecConfig(**{field: value})


def test_config_round_trips_through_json_lists_and_checks_heads():
    config = SESRecConfig(**{**SESRecConfig().to_dict(), "mlp_hidden": [8, 4]})
    assert config.mlp_hidden == (8, 4)
    with pytest.raises(ValueError, match="num_heads=3 must divide"):
        build_head("sesrec", DIM, USERS, num_heads=3)
    assert build_head("sesrec", DIM, USERS, num_heads=3, hidden_dim=12).dim == 12


# -- building blocks on hand-built inputs ---------------------------------------------------------------------------

def test_triplet_loss_on_known_distances():
    anchor = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    positive = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 1.05]])  # d(a, p) = 5, 1, 0.05
    negative = torch.tensor([[0.0, 1.0], [3.0, 4.0], [1.0, 1.0]])  # d(a, n) = 1, 5, 0
    loss = triplet_loss(anchor, positive, negative, margin=0.1)
    # 5 - 1 + 0.1; max(1 - 5 + 0.1, 0); 0.05 - 0 + 0.1 (inside the margin)
    torch.testing.assert_close(loss, torch.tensor([4.1, 0.0, 0.15]), atol=1e-4, rtol=0)


def test_similarity_split_at_one_over_t():
    scores = torch.tensor([[0.5, 0.3, 0.2, 0.0],  # T = 4: threshold 0.25
                           [0.0, 0.6, 0.25, 0.15],  # first is padding -> T = 3: threshold 1/3
                           [0.0, 0.0, 0.0, 1.0],  # T = 1: its only score equals 1/T -> dissimilar
                           [0.25, 0.25, 0.25, 0.25]])  # all equal 1/T -> all dissimilar
    mask = torch.tensor([[True, True, True, True], [False, True, True, True],
                         [False, False, False, True], [True, True, True, True]])
    similar, dissimilar = similarity_split(scores, mask)
    assert similar.tolist() == [[True, True, False, False], [False, True, False, False],
                                [False, False, False, False], [False, False, False, False]]
    assert dissimilar.tolist() == [[False, False, True, True], [False, False, True, True],
                                   [False, False, False, True], [True, True, True, True]]


def test_co_attention_split_on_hand_built_sequences():
    from genretrieval.modeling.heads.sesrec import _Sequence

    head = make_head()
    e1, e2 = torch.eye(DIM)[0], torch.eye(DIM)[1]
    rec = _Sequence(torch.stack([torch.zeros(DIM), e1, e1, -e1, e2]).unsqueeze(0),
                    torch.tensor([[False, True, True, True, True]]))  # left padding, then r0..r3
    search = _Sequence(torch.stack([e1, torch.zeros(DIM)]).unsqueeze(0), torch.tensor([[True, False]]))
    with torch.no_grad():
        head.coatt_w.copy_(torch.eye(DIM) * 5.0)  # A[s, r] = tanh(5 h_s . h_r) = [t, t, -t, 0], t = tanh(5)
        head.coatt_search.copy_(2.0 * e1)  # W_s h_s = 2
        head.coatt_rec.copy_(e2)
        head._co_attention(rec, search)
    t = math.tanh(5.0)
    expected = torch.softmax(torch.tensor([2 * t, 2 * t, -2 * t, 0.0]), 0)
    torch.testing.assert_close(rec.scores[0, 1:], expected)
    assert rec.scores[0, 0] == 0
    assert rec.similar.tolist() == [[False, True, True, False, False]]  # above 1/4
    assert rec.dissimilar.tolist() == [[False, False, False, True, True]]
    # One real search step: its score is 1 = 1/T, so it is dissimilar and there is no search triplet.
    assert search.scores.tolist() == [[1.0, 0.0]]
    assert search.similar.tolist() == [[False, False]] and search.dissimilar.tolist() == [[True, False]]
    state = type("State", (), {"rec": rec, "search": search})
    anchor = (expected.unsqueeze(1) * rec.hidden[0, 1:]).sum(0)
    expected_con = triplet_loss(anchor, e1, (-e1 + e2) / 2, 0.1)
    torch.testing.assert_close(head._contrast(state), expected_con)


def test_masked_softmax_ignores_padding_and_zeroes_empty_rows():
    logits = torch.tensor([[1.0, 2.0, 100.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    weights = masked_softmax(logits, mask)
    torch.testing.assert_close(weights[0], torch.tensor([1 / (1 + math.e), math.e / (1 + math.e), 0.0]))
    assert weights[1].tolist() == [0.0, 0.0, 0.0]


def test_alignment_perfect_pairs_beat_shuffled_pairs():
    queries = torch.eye(4) * 2.0
    w_a = torch.eye(4)
    negatives = -torch.eye(4)
    perfect = alignment_loss(queries, queries.clone(), negatives, w_a, 0.1)
    shuffled = alignment_loss(queries, queries[[1, 2, 3, 0]], negatives, w_a, 0.1)
    assert perfect.item() < shuffled.item() - 1.0
    # A sampled negative equal to the pair's item is no negative, and a duplicate query is no negative either.
    items = torch.randn(4, 4)
    base = alignment_loss(queries, items, negatives[:2], w_a, 0.5)
    masked = alignment_loss(queries, items, torch.cat([negatives[:2], items[:1]]), w_a, 0.5,
                            item_ids=torch.tensor([7, 1, 2, 3]), negative_item_ids=torch.tensor([10, 11, 7]))
    unmasked = alignment_loss(queries, items, torch.cat([negatives[:2], items[:1]]), w_a, 0.5)
    assert masked.item() != pytest.approx(unmasked.item())
    q2i_only_changes = alignment_loss(queries, items, negatives[:2], w_a, 0.5, item_ids=torch.tensor([7, 1, 2, 3]),
                                      negative_item_ids=torch.tensor([10, 11]))
    torch.testing.assert_close(base, q2i_only_changes)
    dup = alignment_loss(queries, items, negatives[:2], w_a, 0.5, query_keys=torch.tensor([0, 0, 1, 2]))
    assert dup.item() != pytest.approx(base.item())
    torch.testing.assert_close(alignment_loss(queries, items, negatives[:2], w_a, 0.5,
                                              query_keys=torch.tensor([0, 1, 2, 3])), base)


# -- the head ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("search_fraction", [0.0, 0.5, 1.0])
def test_forward_shapes_on_mixed_batches(search_fraction):
    emb = tiny_embeddings(ITEMS, VOCAB, DIM)
    head = make_head()
    batch = random_batch(size=6, negatives=4, search_fraction=search_fraction, seed=3)
    out = head(batch, emb)
    assert out.scores.shape == (6, 5) and out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert set(out.terms) == {"rec", "ali", "con"} and all(not t.requires_grad for t in out.terms.values())
    assert head.score(batch, emb, torch.arange(ITEMS)).shape == (6, ITEMS)
    assert head.score(batch, emb, torch.randint(0, ITEMS, (6, 7))).shape == (6, 7)
    with pytest.raises(ValueError, match="candidates"):
        head.score(batch, emb, torch.zeros(5, 3, dtype=torch.long))


def test_long_histories_are_cut_to_the_most_recent_steps():
    emb = tiny_embeddings(ITEMS, VOCAB, DIM)
    head = make_head(max_rec_len=3, max_search_len=2).eval()
    batch = random_batch(size=5, history=9, searches=6, seed=4)
    recent = dataclasses.replace(batch, history=batch.history[:, -3:], search_items=batch.search_items[:, -2:],
                                 search_queries=batch.search_queries[:, -2:])
    with torch.no_grad():
        torch.testing.assert_close(head.score(batch, emb, torch.arange(ITEMS)),
                                   head.score(recent, emb, torch.arange(ITEMS)))


def test_padding_does_not_leak():
    emb = tiny_embeddings(ITEMS, VOCAB, DIM)
    head = make_head().eval()
    batch = random_batch(size=8, history=5, searches=3, seed=5)
    with torch.no_grad():
        scores = head.score(batch, emb, torch.arange(ITEMS))
        # More left padding (as a longer batch would have) changes nothing.
        torch.testing.assert_close(head.score(with_left_padding(batch, 4), emb, torch.arange(ITEMS)), scores)
        # Rows do not see each other: each row scored alone gives the same scores.
        for i in range(batch.size):
            row = dataclasses.replace(batch, **{f.name: getattr(batch, f.name)[i:i + 1]
                                                for f in dataclasses.fields(batch)})
            torch.testing.assert_close(head.score(row, emb, torch.arange(ITEMS)), scores[i:i + 1])
        # Whatever the word table holds at padding id 0 never reaches a score.
        emb.word_table.weight[0] = 5.0
        torch.testing.assert_close(head.score(batch, emb, torch.arange(ITEMS)), scores)


def test_each_distinct_query_is_encoded_once_with_the_same_scores_and_gradients(monkeypatch):
    emb = tiny_embeddings(ITEMS, VOCAB, DIM)
    head = make_head(dropout=0.0)
    batch = random_batch(size=8, history=5, searches=6, seed=11)
    # Search histories repeat queries: two distinct past queries in all 8 x 6 steps.
    pool = batch.search_queries[0, -1:].expand(2, -1).clone()
    pool[1, 0] = pool[0, 0] % (VOCAB - 1) + 1
    repeated = pool[torch.arange(8 * 6).reshape(8, 6) % 2]
    batch = dataclasses.replace(batch, search_queries=repeated * (batch.search_items >= 0).unsqueeze(-1))
    encoded = []
    encode_text = emb.encode_text
    monkeypatch.setattr(emb, "encode_text", lambda ids: encoded.append(ids) or encode_text(ids))
    torch.manual_seed(0)  # the alignment negatives are sampled: the same ones in both passes
    out = head(batch, emb)
    out.loss.backward()
    rows = encoded[0].reshape(-1, encoded[0].shape[-1])
    assert len(encoded) == 1 and len(rows) == len(torch.unique(rows, dim=0)) <= 2 + 1 + 8  # + padding + current
    deduped_grad = emb.word_table.weight.grad.clone()

    # The same head encoding every row separately (the computation before rows were deduplicated), its same-text
    # labels for L_ali from a dict of the rows' token tuples.
    def row_by_row(e, q):
        labels = {}
        keys = [labels.setdefault(tuple(row.tolist()), len(labels)) for row in q.reshape(-1, q.shape[-1])]
        return head.query_proj(head._pool_query(encode_text(q), q)), torch.tensor(keys).reshape(q.shape[:-1])

    monkeypatch.setattr(head, "_query_vectors", row_by_row)
    emb.zero_grad()
    torch.manual_seed(0)
    reference = head(batch, emb)
    reference.loss.backward()
    torch.testing.assert_close(out.scores, reference.scores)
    torch.testing.assert_close(out.terms["ali"], reference.terms["ali"])
    torch.testing.assert_close(deduped_grad, emb.word_table.weight.grad)


def test_empty_histories_and_no_search_pairs_keep_a_valid_graph():
    emb = tiny_embeddings(ITEMS, VOCAB, DIM)
    head = make_head()
    batch = random_batch(size=4, search_fraction=0.0, seed=6)
    batch = dataclasses.replace(batch, search_items=torch.full_like(batch.search_items, -1),
                                search_queries=torch.zeros_like(batch.search_queries))
    batch.history[0] = -1  # one request with no history at all
    out = head(batch, emb)
    assert torch.isfinite(out.scores).all() and out.terms["ali"].item() == 0.0
    out.loss.backward()
    assert head.align_w.grad is not None and torch.isfinite(head.mlp[0].weight.grad).all()


def test_search_rows_use_the_current_query():
    emb = tiny_embeddings(ITEMS, VOCAB, DIM)
    head = make_head().eval()
    batch = random_batch(size=6, search_fraction=0.5, seed=7)
    changed = dataclasses.replace(batch, query=torch.where(batch.query > 0, (batch.query % (VOCAB - 1)) + 1, 0))
    with torch.no_grad():
        before, after = head.score(batch, emb, torch.arange(ITEMS)), head.score(changed, emb, torch.arange(ITEMS))
    search = batch.is_search
    assert search.any() and (~search).any()
    assert not torch.allclose(before[search], after[search])
    torch.testing.assert_close(before[~search], after[~search])


def test_zero_weights_give_exactly_the_rec_loss():
    emb = tiny_embeddings(ITEMS, VOCAB, DIM)
    batch = random_batch(size=8, negatives=2, seed=8)
    out = make_head(alpha=0.0, beta=0.0)(batch, emb)
    assert out.terms["ali"].item() > 0 and out.terms["con"].item() >= 0
    assert torch.equal(out.loss.detach(), out.terms["rec"])
    base = make_head(alignment=False, contrast=False)(batch, emb)  # "SESRec vs its base" switch
    assert set(base.terms) == {"rec"} and torch.equal(base.loss.detach(), base.terms["rec"])
    paper_base = make_head(alignment=False, contrast=False, multi_interest=False)  # Table 3 "Base"
    assert not hasattr(paper_base, "coatt_w") and paper_base(batch, emb).scores.shape == (8, 3)
    full = make_head()(batch, emb)
    expected = full.terms["rec"] + 0.1 * full.terms["ali"] + 0.001 * full.terms["con"]
    torch.testing.assert_close(full.loss.detach(), expected)


def test_gradients_reach_the_shared_embeddings():
    emb = tiny_embeddings(ITEMS, VOCAB, DIM)
    head = make_head()
    batch = random_batch(size=8, negatives=2, seed=9)
    head(batch, emb).loss.backward()
    item_grad = emb.item_table.weight.grad.norm(dim=1)
    word_grad = emb.word_table.weight.grad.norm(dim=1)
    for used in (batch.history, batch.search_items, batch.candidates()):
        ids = used[used >= 0].unique()
        assert (item_grad[ids] > 0).all()
    assert (word_grad[batch.search_queries[batch.search_queries > 0].unique()] > 0).all()
    assert (word_grad[batch.query[batch.query > 0].unique()] > 0).all()
    assert item_grad[ITEMS] == 0 and word_grad[0] == 0  # padding rows stay untouched
    assert head.log_temperature.grad is not None and head.coatt_w.grad is not None


def test_score_matches_forward_in_eval_mode():
    emb = tiny_embeddings(ITEMS, VOCAB, DIM)
    head = make_head().eval()
    batch = random_batch(size=7, negatives=3, seed=10)
    with torch.no_grad():
        forward_scores = head(batch, emb).scores
        torch.testing.assert_close(head.score(batch, emb, batch.candidates()), forward_scores)
        catalog = head.score(batch, emb, torch.arange(ITEMS))
        torch.testing.assert_close(catalog.gather(1, batch.candidates()), forward_scores)
        torch.testing.assert_close(head.score(batch, emb, torch.arange(ITEMS).expand(7, -1)), catalog)
        head.config.score_chunk = 10  # one candidate per chunk for 7 rows
        torch.testing.assert_close(head.score(batch, emb, torch.arange(ITEMS)), catalog)


def test_tiny_training_run_lowers_the_loss():
    emb = tiny_embeddings(ITEMS, VOCAB, DIM, seed=1)
    head = make_head(seed=1)
    batches = [random_batch(size=12, negatives=2, seed=s) for s in range(2)]
    optimizer = torch.optim.Adam(list(head.parameters()) + list(emb.parameters()), lr=1e-2)
    losses = []
    for _ in range(20):
        for batch in batches:
            out = head(batch, emb)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            losses.append(out.terms["rec"].item())
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4


@pytest.mark.parametrize("multi_interest", [True, False])
def test_prediction_equals_the_mlp_on_concatenated_interests(multi_interest):
    emb = tiny_embeddings(ITEMS, VOCAB, DIM)
    head = make_head(multi_interest=multi_interest, contrast=multi_interest).eval()
    batch = random_batch(size=5, seed=11)
    with torch.no_grad():
        state, _ = head._encode(batch, emb)
        items = emb.items(torch.arange(ITEMS))
        parts = [w @ seq.hidden for seq, weight in ((state.rec, head.rec_attention),
                                                    (state.search, head.search_attention))
                 for w in head._interest_weights(seq, weight, items)]  # u_r || u_s (Eq. 17-20)
        parts += [items.expand(5, -1, -1), state.user.unsqueeze(1).expand(-1, ITEMS, -1)]
        literal = head.mlp(torch.cat(parts, -1)).squeeze(-1)  # Eq. 21
        torch.testing.assert_close(head.score(batch, emb, torch.arange(ITEMS)), literal, atol=1e-5, rtol=1e-5)
