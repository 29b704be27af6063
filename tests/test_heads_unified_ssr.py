"""UnifiedSSR head: shapes, Eq. 5-9 on hand-built inputs, branch deactivation, padding, gradients, training."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from heads_util import random_batch, tiny_embeddings

from genretrieval.modeling.heads import HeadBatch, build_head, get_head_class
from genretrieval.modeling.heads.unified_ssr import (
    UnifiedSSRConfig,
    UnifiedSSRHead,
    pool_sessions,
    session_membership,
    session_ranges,
    ssl_loss,
)

DIM, USERS, ITEMS, VOCAB = 16, 10, 30, 50


def _head(**params) -> UnifiedSSRHead:
    params = {"num_heads": 2, "max_len": 12, **params}
    torch.manual_seed(0)
    return build_head("unified-ssr", embed_dim=DIM, num_users=USERS, **params)


def _batch(**kw) -> HeadBatch:
    return random_batch(num_items=ITEMS, vocab_size=VOCAB, num_users=USERS, **kw)


def _replace(batch: HeadBatch, **fields) -> HeadBatch:
    return dataclasses.replace(batch, **fields)


def test_registered_and_build_head():
    assert get_head_class("unified-ssr") is UnifiedSSRHead
    head = build_head("unified-ssr", embed_dim=32, num_users=5)
    cfg = head.config
    assert (cfg.num_layers, cfg.num_sessions, cfg.ssl_weight, cfg.max_len, cfg.ffn_factor) == (2, 2, 0.1, 100, 2)
    assert len(head.layers) == 2 and head.layers[0].ffn[0].out_features == 64
    assert head.search_weight.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown unified-ssr head parameter"):
        build_head("unified-ssr", embed_dim=32, num_users=5, sessions=3)


def test_shapes_on_mixed_batch():
    head, emb = _head(), tiny_embeddings(ITEMS, VOCAB, DIM)
    batch = _batch(size=10, negatives=3, seed=1)
    assert 0 < int(batch.is_search.sum()) < 10
    out = head(batch, emb)
    assert out.scores.shape == (10, 4) and out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert set(out.terms) == {"pred", "ssl"}  # L_pred and α L_ssl: they sum to the loss
    assert out.loss.item() == pytest.approx(out.terms["pred"].item() + out.terms["ssl"].item(), rel=1e-5)
    scores = out.scores.detach()
    eq12 = -(torch.log(torch.sigmoid(scores[:, 0])) + torch.log(1 - torch.sigmoid(scores[:, 1:])).sum(1)).mean()
    assert out.terms["pred"].item() == pytest.approx(eq12.item(), rel=1e-5)
    head.eval()
    assert head.score(batch, emb, torch.arange(ITEMS)).shape == (10, ITEMS)
    assert head.score(batch, emb, torch.randint(0, ITEMS, (10, 7))).shape == (10, 7)
    with pytest.raises(ValueError, match="candidates"):
        head.score(batch, emb, torch.zeros(3, 7, dtype=torch.long))


def test_pure_rec_and_pure_search_batches_and_empty_sequences():
    head, emb = _head(), tiny_embeddings(ITEMS, VOCAB, DIM)
    for fraction in (0.0, 1.0):
        out = head(_batch(search_fraction=fraction, negatives=2, seed=2), emb)
        assert torch.isfinite(out.loss) and out.scores.shape == (8, 3)
    batch = _batch(search_fraction=0.5, seed=3)
    empty = _replace(batch, history=torch.full_like(batch.history, -1),
                     search_items=torch.full_like(batch.search_items, -1),
                     search_queries=torch.zeros_like(batch.search_queries))
    out = head(empty, emb)  # first search / first rec request: the user-only placeholder token
    assert torch.isfinite(out.loss) and torch.isfinite(out.scores).all()
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_session_ranges_eq5_and_hard_soft_membership():
    lengths = torch.tensor([8])
    # Uniform start (Δx = 0, s = ½ chunk): the paper's initial sessions x ± n/(2N) = [0, 4), [4, 8).
    left, right = session_ranges(torch.zeros(1, 2), torch.full((1, 2), 0.5), lengths)
    assert left.tolist() == [[0.0, 4.0]] and right.tolist() == [[4.0, 8.0]]
    hard = session_membership(left, right, lengths, width=10, mode="hard")
    expected = torch.tensor([[[0, 0, 1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]]], dtype=torch.float)
    assert torch.equal(hard, expected)  # right-aligned: slots 0-1 are padding
    assert torch.equal(session_membership(left, right, lengths, 10, "soft"), expected)  # integer ends: identical
    # Session 0 moved by half a chunk (+2) and shrunk to half-length 0.375 chunk (1.5): range [2.5, 5.5).
    left, right = session_ranges(torch.tensor([[0.5, 0.0]]), torch.tensor([[0.375, 0.5]]), lengths)
    assert left[0, 0].item() == pytest.approx(2.5) and right[0, 0].item() == pytest.approx(5.5)
    hard = session_membership(left, right, lengths, 8, "hard")[0, 0]
    soft = session_membership(left, right, lengths, 8, "soft")[0, 0]
    assert hard.tolist() == [0, 0, 1, 1, 1, 0, 0, 0]  # centres 2.5, 3.5, 4.5 in [2.5, 5.5)
    assert soft.tolist() == pytest.approx([0, 0, 0.5, 1, 1, 0.5, 0, 0])  # covered fraction of each cell
    # A range reaching before the sequence ([-2.6, 1.0) on n = 4) covers only real positions, never padding;
    # zero length gives an empty session.
    left, right = session_ranges(torch.tensor([[-0.9, 0.0]]), torch.tensor([[0.9, 0.0]]), torch.tensor([4]))
    assert left[0, 0].item() == pytest.approx(-2.6) and right[0, 0].item() == pytest.approx(1.0)
    member = session_membership(left, right, torch.tensor([4]), 6, "hard")[0]
    assert member[0].tolist() == [0, 0, 1, 0, 0, 0] and member[1].sum().item() == 0
    assert session_membership(left, right, torch.tensor([4]), 6, "soft")[0, 0].tolist() == [0, 0, 1, 0, 0, 0]


def test_hard_membership_is_straight_through():
    lengths = torch.tensor([8])
    offsets = torch.tensor([[0.3, 0.0]], requires_grad=True)
    left, right = session_ranges(offsets, torch.full((1, 2), 0.5), lengths)
    member = session_membership(left, right, lengths, 8, "hard")
    assert set(member.detach().unique().tolist()) <= {0.0, 1.0}
    hidden = torch.arange(8.0).view(1, 8, 1)
    pooled = pool_sessions(member, hidden)
    pooled[0, 0, 0].backward()
    assert offsets.grad[0, 0].item() != 0.0  # moving the session right raises its mean


def test_pool_sessions_eq7_and_empty_session():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]]])
    member = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    pooled = pool_sessions(member, hidden)
    assert pooled[0, 0].tolist() == [2.0, 1.0] and pooled[0, 1].tolist() == [0.0, 0.0]


def test_ssl_loss_eq9_on_hand_built_sessions():
    ip = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]] * 2)  # adjacent cosines 1/√2, 1/√2
    iq = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]]] * 2)  # adjacent cosines -1, 0; alignment 1, -1/√2, 1
    is_search = torch.tensor([True, False])
    loss = ssl_loss(ip, iq, is_search)
    r = 1 / math.sqrt(2)
    search = (r + r) + (-1.0 + 0.0) - (1.0 - r + 1.0)
    assert loss.tolist() == pytest.approx([search, 2 * r])  # the rec row keeps only Σ Sim(I^p_i, I^p_{i+1})
    assert ssl_loss(ip, None, torch.tensor([False, False])).tolist() == pytest.approx([2 * r, 2 * r])
    valid = torch.tensor([[True, False, True]] * 2)  # an empty middle session drops out of every pair it is in
    loss = ssl_loss(ip, iq, is_search, valid, valid)
    assert loss.tolist() == pytest.approx([-(1.0 + 1.0), 0.0])
    assert ssl_loss(ip[:, :1], iq[:, :1], is_search).tolist() == pytest.approx([-1.0, 0.0])  # N = 1: alignment only


def test_query_branch_is_off_for_rec_rows():
    head, emb = _head(), tiny_embeddings(ITEMS, VOCAB, DIM)
    head.eval()
    batch = _batch(size=10, seed=4)
    rec = ~batch.is_search
    g = torch.Generator().manual_seed(9)
    changed = _replace(batch, query=torch.randint(1, VOCAB, batch.query.shape, generator=g),
                       search_queries=torch.randint(1, VOCAB, batch.search_queries.shape, generator=g),
                       search_items=torch.randint(0, ITEMS, batch.search_items.shape, generator=g))
    candidates = torch.arange(ITEMS)
    with torch.no_grad():
        before, after = head.score(batch, emb, candidates), head.score(changed, emb, candidates)
        rec_only = head.score(_replace(batch, is_search=torch.zeros_like(batch.is_search)), emb, candidates)
    assert torch.allclose(before[rec], after[rec], atol=1e-6)
    assert not torch.allclose(before[~rec], after[~rec], atol=1e-3)  # ...while search rows do read them
    assert torch.allclose(before[rec], rec_only[rec], atol=1e-6)  # and do not depend on the rest of the batch


def test_padding_does_not_leak():
    head, emb = _head(), tiny_embeddings(ITEMS, VOCAB, DIM)
    head.eval()
    batch = _batch(size=10, history=6, searches=4, seed=5)
    candidates = torch.arange(ITEMS)
    with torch.no_grad():
        base = head.score(batch, emb, candidates)
        # Query terms stored at padded search steps are ignored.
        junk = batch.search_queries.clone()
        junk[batch.search_items < 0] = 7
        assert torch.allclose(base, head.score(_replace(batch, search_queries=junk), emb, candidates), atol=1e-6)
        # Extra left padding of every sequence changes nothing (positions count real steps only).
        wider = _replace(batch,
                         history=torch.cat([torch.full((10, 3), -1), batch.history], 1),
                         search_items=torch.cat([torch.full((10, 2), -1), batch.search_items], 1),
                         search_queries=torch.cat([torch.zeros(10, 2, batch.search_queries.shape[2], dtype=torch.long),
                                                   batch.search_queries], 1))
        assert torch.allclose(base, head.score(wider, emb, candidates), atol=1e-5)
        # Steps older than max_len are dropped.
        short = _head(max_len=3)
        short.eval()
        trimmed = _replace(batch, history=batch.history[:, -3:], search_items=batch.search_items[:, -3:],
                           search_queries=batch.search_queries[:, -3:])
        assert torch.allclose(short.score(batch, emb, candidates), short.score(trimmed, emb, candidates), atol=1e-6)
    rec_row = int((~batch.is_search).nonzero()[0])
    bad = batch.history.clone()
    bad[rec_row, -1] = -1
    bad[rec_row, 0] = 3
    with pytest.raises(ValueError, match="left-padded"):
        head.score(_replace(batch, history=bad), emb, candidates)


def test_gradients_reach_shared_embeddings():
    head, emb = _head(), tiny_embeddings(ITEMS, VOCAB, DIM)
    batch = _batch(size=10, negatives=2, seed=6)
    head(batch, emb).loss.backward()
    item_grad = emb.item_table.weight.grad.abs().sum(1)
    used = torch.cat([batch.candidates().flatten(), batch.history[~batch.is_search].flatten()])
    used = used[used >= 0].unique()
    assert (item_grad[used] > 0).all()  # candidates and history items (Eq. 10-12 and the product branch)
    assert item_grad[ITEMS] == 0  # the padding row stays untouched
    word_grad = emb.word_table.weight.grad.abs().sum(1)
    search_terms = batch.query[batch.is_search].flatten()
    assert (word_grad[search_terms[search_terms > 0].unique()] > 0).all()  # the query branch, through e^q
    for name in ("sessions.locator.weight", "sessions.length_bias", "search_weight_logit", "positions.weight"):
        assert dict(head.named_parameters())[name].grad.abs().sum() > 0, name


def test_score_matches_forward_in_eval_mode():
    head, emb = _head(), tiny_embeddings(ITEMS, VOCAB, DIM)
    head.eval()
    batch = _batch(size=10, negatives=4, seed=7)
    with torch.no_grad():
        forward = head(batch, emb).scores
        rows = head.score(batch, emb, batch.candidates())
        catalog = head.score(batch, emb, torch.arange(ITEMS))
    assert torch.allclose(forward, rows, atol=1e-5)
    assert torch.allclose(forward, catalog.gather(1, batch.candidates()), atol=1e-5)


def test_tiny_training_run_loss_falls():
    torch.manual_seed(0)
    head = _head(dropout=0.1)
    emb = tiny_embeddings(ITEMS, VOCAB, DIM, seed=1)
    batches = [_batch(size=16, negatives=4, seed=s) for s in range(2)]
    opt = torch.optim.Adam(list(head.parameters()) + list(emb.parameters()), lr=1e-2)

    def pred_loss() -> float:
        head.eval()
        with torch.no_grad():
            value = sum(head(b, emb).terms["pred"].item() for b in batches) / len(batches)
        head.train()
        return value

    start = pred_loss()
    for _ in range(12):
        for b in batches:
            opt.zero_grad()
            head(b, emb).loss.backward()
            opt.step()
    end = pred_loss()
    assert end < 0.4 * start, (start, end)


def test_training_stages():
    head = _head()
    assert head.training_stages(10) == [(8, "alternate"), (2, "per-task")]
    assert head.training_stages(2) == [(1, "alternate"), (1, "per-task")]
    assert head.training_stages(1) == [(1, "alternate")]
    assert _head(pretrain_fraction=0.0).training_stages(5) == [(5, "per-task")]  # UnifiedSSR-R/-S
    assert _head(pretrain_fraction=1.0).training_stages(5) == [(5, "alternate")]  # "w/o FT"
    with pytest.raises(ValueError, match="num_epochs"):
        head.training_stages(0)


@pytest.mark.parametrize("field,value", [
    ("num_layers", 0), ("num_heads", 0), ("num_sessions", 0), ("max_len", 0), ("ffn_factor", 0),
    ("num_layers", 1.5), ("ssl_weight", -0.1), ("session_mask", "fuzzy"), ("pretrain_fraction", 1.5),
    ("search_weight_init", 1.0), ("dropout", 1.0), ("num_negatives", 0), ("ssl_weight", float("nan")),
])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        UnifiedSSRConfig(**{field: value})


def test_heads_must_divide_embed_dim():
    with pytest.raises(ValueError, match="num_heads=3 must divide embed_dim=16"):
        build_head("unified-ssr", embed_dim=16, num_users=4, num_heads=3)


def test_sessions_start_uniform_and_enhance_members():
    head = _head(num_sessions=2)
    hidden = torch.randn(2, 6, DIM)
    lengths = torch.tensor([4, 6])  # row 0: two padding slots
    enhanced, sessions, valid = head.sessions(hidden, lengths)
    assert valid.all()
    assert torch.allclose(sessions[0, 0], hidden[0, 2:4].mean(0), atol=1e-6)  # x ± n/(2N): [0, 2), [2, 4)
    assert torch.allclose(sessions[1, 1], hidden[1, 3:6].mean(0), atol=1e-6)
    assert torch.allclose(enhanced[0, 5], hidden[0, 5] + sessions[0, 1], atol=1e-6)  # Eq. 8
    assert torch.allclose(enhanced[0, :2], hidden[0, :2])  # padding gets no session
