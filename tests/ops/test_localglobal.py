"""The local-global family: Longformer (ViL), BigBird, Long-Short, and RFA.

Every fast op against its materialised twin in float64 (outputs and gradients) on odd grids with windows that do
not divide them, padding exactness (garbage in padded tokens changes nothing), all-padded samples, limiting cases
against plain softmax, the blocked layout's memory bound, half precision, and errors.
"""
import functools

import pytest
import torch
import torch.nn.functional as F

from linattn_mm import ops
from linattn_mm.ops.bigbird import (bigbird_attention, bigbird_attention_naive, bigbird_random_blocks,
                                    bigbird_random_blocks_naive, grid_blocks)
from linattn_mm.ops.longformer import longformer_attention, longformer_attention_naive
from linattn_mm.ops.longformer._common import geometry
from linattn_mm.ops.longshort import longshort_attention, longshort_attention_naive
from linattn_mm.ops.rfa import rfa_attention, rfa_attention_naive
from linattn_mm.ops.softmax import softmax_attention
from tests._helpers import assert_match, rand_qkv, rel_rms

B, H, D = 2, 2, 4


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rand(*shape, seed=0, dtype=torch.float64, requires_grad=True):
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64).to(dtype).requires_grad_(requires_grad)


def _mask(b, n, seed=0, num_global=0):
    """Scattered padding (~35 %), sample 0 unpadded, every sample keeps a valid grid token; globals unpadded."""
    m = torch.rand(b, n, generator=_gen(seed)) < 0.35
    m[0] = False
    m[:, num_global] = False
    m[:, :num_global] = False
    return m


# ------------------------------------------------------------------------------------------ cases
# (name, hw, kwargs); extra tensors (random pattern, projection scores, LN affines, features) are built per case
CASES = [
    ('longformer', (7, 5), dict(window_size=3)),
    ('longformer', (7, 5), dict(window_size=(3, 4), block_size=2, num_global=2)),
    ('longformer', (7, 5), dict(window_size=3, block_size=(3, 2), exact=False, num_global=1)),
    ('longformer', (4, 9), dict(window_size=5, num_global=1, return_global=False)),
    ('longformer', (1, 6), dict(window_size=3)),
    ('longformer', (3, 3), dict(window_size=7, num_global=1, exact=False)),
    ('longformer', (6, 6), dict(window_size=4, block_size=4, scale=0.3)),
    ('bigbird', (7, 5), dict(window_size=3, r=1)),
    ('bigbird', (7, 5), dict(window_size=(3, 4), block_size=2, num_global=2, r=3)),
    ('bigbird', (7, 5), dict(window_size=3, block_size=(3, 2), exact=False, num_global=1, r=2)),
    ('bigbird', (4, 9), dict(window_size=3, block_size=2, num_global=1, r=2, shared_heads=True)),
    ('bigbird', (4, 3), dict(window_size=3, num_global=1, r=4)),           # 2 blocks: 3 of the 4 slots empty
    ('longshort', (7, 5), dict(window_size=3, r=3)),
    ('longshort', (7, 5), dict(window_size=(3, 4), block_size=2, r=2, dual_ln=False)),
    ('longshort', (7, 5), dict(window_size=3, block_size=(3, 2), exact=False, r=4, affine=False)),
    ('longshort', (4, 9), dict(window_size=5, r=1)),
    ('rfa', (33, 20), dict(m=16)),
    ('rfa', (7, 7), dict(m=8, per_head=True, heads=3)),
    ('rfa', (33, 20), dict(m=16, kernel='arccos')),
    ('rfa', (12, 12), dict(m=8, normalize=False, per_head=True, heads=3)),
]


def _case_id(case):
    name, hw, kw = case
    return f'{name}-{hw[0]}x{hw[1]}-' + '-'.join(f'{k}={v}' for k, v in kw.items())


def build(name, hw, kw, dtype=torch.float64, seed=0):
    """-> (fast, naive, inputs, n_out, num_global): ``fast(*inputs, key_padding_mask=...)`` returns the last
    ``n_out`` tokens' rows (all of them but the globals with ``return_global=False``)."""
    kw = dict(kw)
    if name == 'rfa':
        h = kw.pop('heads', H)
        m = kw.pop('m')
        feats = _rand(*((h, m, D) if kw.pop('per_head', False) else (m, D)), seed=seed + 9, dtype=dtype)
        q, k, v = rand_qkv(B, h, hw[0], hw[1], D, seed=seed, dtype=dtype)
        fast = functools.partial(_rfa, rfa_attention, **kw)
        naive = functools.partial(_rfa, rfa_attention_naive, **kw)
        return fast, naive, (q, k, v, feats), hw[0], 0
    n_grid = hw[0] * hw[1]
    g = kw.get('num_global', 0)
    q, k, v = rand_qkv(B, H, g + n_grid, g + n_grid, D, seed=seed, dtype=dtype)
    if name == 'longformer':
        nq = g + n_grid if kw.get('return_global', True) else n_grid
        return (functools.partial(longformer_attention, hw_shape=hw, **kw),
                functools.partial(longformer_attention_naive, hw_shape=hw, **kw), (q, k, v), nq, g)
    if name == 'bigbird':
        r = kw.pop('r')
        ny, nx = grid_blocks(hw, kw['window_size'], kw.get('block_size'))
        rb = bigbird_random_blocks(ny * nx, r, 1 if kw.pop('shared_heads', False) else H, seed=seed + 3)
        return (functools.partial(_with_hw(bigbird_attention), hw, rb, **kw),
                functools.partial(_with_hw(bigbird_attention_naive), hw, rb, **kw), (q, k, v), g + n_grid, g)
    r = kw.pop('r')
    logits = _rand(B, H, r, n_grid, seed=seed + 5, dtype=dtype)
    affine = kw.pop('affine', True) and kw.get('dual_ln', True)
    lns = tuple(_rand(H * D, seed=seed + 6 + i, dtype=dtype) for i in range(4)) if affine else ()
    fast = functools.partial(_longshort, longshort_attention, hw, **kw)
    naive = functools.partial(_longshort, longshort_attention_naive, hw, **kw)
    return fast, naive, (q, k, v, logits) + lns, n_grid, 0


def _with_hw(fn):
    def call(hw, rb, q, k, v, **kw):
        return fn(q, k, v, hw, rb, **kw)
    return call


def _longshort(fn, hw, q, k, v, logits, *lns, **kw):
    if lns:
        kw.update(short_ln=(lns[0], lns[1]), long_ln=(lns[2], lns[3]))
    return fn(q, k, v, hw, logits, **kw)


def _rfa(fn, q, k, v, feats, **kw):
    return fn(q, k, v, feats, **kw)


@pytest.mark.parametrize('masked', [False, True], ids=['nomask', 'mask'])
@pytest.mark.parametrize('case', CASES, ids=_case_id)
def test_fast_matches_naive_float64(case, masked):
    fast, naive, inputs, _, g = build(*case)
    kw = {'key_padding_mask': _mask(B, inputs[1].shape[2], seed=1, num_global=g)} if masked else {}
    assert_match(fast, naive, inputs, kw, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize('case', [c for c in CASES if c[2].get('num_global', 0) or c[0] in ('longshort', 'rfa')][:8],
                         ids=_case_id)
def test_padding_garbage_never_reaches_valid_outputs(case):
    """Huge values in padded keys, values, queries and projection scores leave every valid query's output as
    it was (and equal to the materialised twin on clean inputs)."""
    name = case[0]
    fast, naive, inputs, nq, g = build(*case)
    inputs = [t.detach() for t in inputs]
    n = inputs[1].shape[2]
    mask = _mask(B, n, seed=2, num_global=g)
    pad = mask[:, None, :, None]
    dirty = list(inputs)
    dirty[1] = inputs[1].masked_fill(pad, 3e4)
    dirty[2] = inputs[2].masked_fill(pad, -1e5)
    if name != 'rfa':                                              # self-attention: padded queries too
        dirty[0] = inputs[0].masked_fill(pad, 5e3)
    if name == 'longshort':
        dirty[3] = inputs[3].masked_fill(mask[:, None, None, :], 1e4)
    out = fast(*dirty, key_padding_mask=mask)
    ref = naive(*inputs, key_padding_mask=mask)
    rows = torch.ones(B, nq, dtype=torch.bool) if name == 'rfa' else ~mask[:, -nq:]
    rows = rows[:, None, :, None].expand_as(out)
    assert torch.isfinite(out[rows]).all()
    torch.testing.assert_close(out[rows], ref[rows], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize('case', [CASES[1], CASES[8], CASES[11], CASES[15]], ids=_case_id)
def test_all_padded_sample_gives_zeros_and_finite_grads(case):
    fast, _, inputs, _, _ = build(*case)
    mask = torch.zeros(B, inputs[1].shape[2], dtype=torch.bool)
    mask[1] = True
    out = fast(*inputs, key_padding_mask=mask)
    assert torch.all(out[1] == 0) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for t in inputs:
        assert torch.isfinite(t.grad).all()


# ------------------------------------------------------------------------------------------ limiting cases
def test_window_covering_the_grid_is_full_softmax_and_window_one_is_identity():
    hw, g = (5, 7), 1
    q, k, v = rand_qkv(B, H, g + 35, g + 35, D, seed=3, requires_grad=False)
    mask = _mask(B, g + 35, seed=4, num_global=g)
    full = longformer_attention(q, k, v, hw, window_size=13, num_global=g, key_padding_mask=mask, block_size=2)
    torch.testing.assert_close(full, softmax_attention(q, k, v, key_padding_mask=mask))
    only_self = longformer_attention(q[:, :, g:], k[:, :, g:], v[:, :, g:], hw, window_size=1)
    torch.testing.assert_close(only_self, v[:, :, g:])


def test_bigbird_with_every_block_is_full_softmax():
    """r >= nblk - 1: window + all other blocks = every key, each counted once (overlaps deduplicated); the slots
    beyond the nblk - 1 other blocks are empty (-1)."""
    hw = (7, 5)
    q, k, v = rand_qkv(B, H, 35, 35, D, seed=5, requires_grad=False)
    ny, nx = grid_blocks(hw, 3, 2)
    rb = bigbird_random_blocks(ny * nx, ny * nx + 1, H, seed=0)
    assert rb.shape == (H, ny * nx, ny * nx + 1) and (rb[..., :2] == -1).all() and (rb[..., 2:] >= 0).all()
    mask = _mask(B, 35, seed=6)
    out = bigbird_attention(q, k, v, hw, rb, window_size=3, block_size=2, key_padding_mask=mask)
    torch.testing.assert_close(out, softmax_attention(q, k, v, key_padding_mask=mask))


@pytest.mark.parametrize('nb,r,heads,seed', [(40, 5, 3, 7), (1, 3, 2, 0), (3, 5, 2, 1), (12, 11, 2, 2 ** 40)])
def test_bigbird_random_blocks_match_their_naive_twin(nb, r, heads, seed):
    torch.testing.assert_close(bigbird_random_blocks(nb, r, heads, seed=seed),
                               bigbird_random_blocks_naive(nb, r, heads, seed=seed), rtol=0, atol=0)


def test_bigbird_random_blocks_are_distinct_seeded_and_skip_their_own_block():
    rb = bigbird_random_blocks(40, 5, num_heads=3, seed=7)
    assert rb.shape == (3, 40, 5) and rb.dtype == torch.long
    own = torch.arange(40)[None, :, None]
    assert not (rb == own).any() and (rb >= 0).all() and (rb < 40).all()
    assert (rb.sort(-1).values.diff(dim=-1) > 0).all()          # distinct within each (head, block)
    assert torch.equal(rb, bigbird_random_blocks(40, 5, num_heads=3, seed=7))
    assert not torch.equal(rb, bigbird_random_blocks(40, 5, num_heads=3, seed=8))
    assert not torch.equal(rb[0], rb[1])                          # heads get their own pattern
    counts = torch.bincount(bigbird_random_blocks(8, 3, 200, seed=9)[:, 0].flatten(), minlength=8)
    assert counts[0] == 0 and counts[1:].min() > 0.6 * counts[1:].max()   # uniform over the other blocks
    # a generator draws the seed: a new pattern per call, reproducible from the generator's seed
    a, b = bigbird_random_blocks(40, 5, 3, generator=_gen(1)), bigbird_random_blocks(40, 5, 3, generator=_gen(1))
    assert torch.equal(a, b) and not torch.equal(a, rb)


def test_longshort_far_tokens_reach_a_query_only_through_landmarks():
    hw = (6, 8)
    q, k, v = rand_qkv(1, H, 48, 48, D, seed=8, requires_grad=False)
    logits = _rand(1, H, 3, 48, seed=9, requires_grad=False)
    base = longshort_attention(q, k, v, hw, logits, window_size=3)
    v2 = v.clone()
    v2[:, :, -1] = 10 * torch.randn(H, D, dtype=v.dtype)           # token (5, 7): far outside (0, 0)'s window
    moved = longshort_attention(q, k, v2, hw, logits, window_size=3)
    assert (moved[:, :, 0] - base[:, :, 0]).abs().max() > 1e-3
    no_long = longshort_attention(q, k, v2, hw, logits.masked_fill(torch.arange(48) == 47, -1e9), window_size=3)
    ref = longshort_attention(q, k, v, hw, logits.masked_fill(torch.arange(48) == 47, -1e9), window_size=3)
    torch.testing.assert_close(no_long[:, :, 0], ref[:, :, 0])    # zero projection weight: no influence


def test_rfa_converges_to_softmax_over_cosine_similarity():
    q, k, v = rand_qkv(1, 1, 64, 64, 8, seed=10, requires_grad=False)
    s = 1.0
    ref = softmax_attention(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, scale=s * s)
    errs = [rel_rms(ref, rfa_attention(q, k, v, s * _rand(m, 8, seed=11, requires_grad=False)))
            for m in (16, 256, 4096)]
    assert errs[2] < errs[1] < errs[0] and errs[2] < 0.05        # Monte Carlo: error ~ 1 / sqrt(M)


def test_rfa_per_head_features_act_per_head():
    """(H, M, D) features: head h uses features[h] whatever the batch size (B != H)."""
    q, k, v = rand_qkv(3, 2, 9, 11, D, seed=12, requires_grad=False)
    feats = _rand(2, 6, D, seed=13, requires_grad=False)
    out = rfa_attention(q, k, v, feats)
    for h in range(2):
        ref = rfa_attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1], feats[h])
        torch.testing.assert_close(out[:, h:h + 1], ref)


# ------------------------------------------------------------------------------------------ linear memory
def _largest_saved(fn, *inputs):
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return max(sizes)


@pytest.mark.parametrize('name', ['longformer', 'bigbird', 'longshort'])
def test_no_quadratic_or_unfold_sized_tensor(name):
    """At 64 x 64 tokens, w = 7, D = 32 nothing saved for backward reaches N^2 / 8 elements nor a w^2-fold copy
    of the keys (an unfold); the key tiles hold the keys about (2w - 1)^2 / w^2 times."""
    hw, w, d = (64, 64), 7, 32
    n = hw[0] * hw[1]
    g = geometry(hw, w)
    assert g.tile_tokens == 13 * 13 and g.num_blocks * g.tile_tokens / n < 4.2
    q, k, v = rand_qkv(1, 1, n + 1, n + 1, d, seed=14, dtype=torch.float32)
    if name == 'longformer':
        fn = functools.partial(longformer_attention, hw_shape=hw, window_size=w, num_global=1)
    elif name == 'bigbird':
        rb = bigbird_random_blocks(g.num_blocks, 2, seed=0)
        fn = functools.partial(_with_hw(bigbird_attention), hw, rb, window_size=w, num_global=1)
    else:
        q, k, v = (t.detach()[:, :, 1:].requires_grad_() for t in (q, k, v))
        logits = torch.randn(1, 1, 8, n, requires_grad=True)
        fn = functools.partial(_longshort, longshort_attention, hw, window_size=w)
        return _check_saved(_largest_saved(fn, q, k, v, logits), n, d, w)
    _check_saved(_largest_saved(fn, q, k, v), n, d, w)


def _check_saved(largest, n, d, w):
    assert largest < n * n / 8
    assert largest < n * d * w * w / 4


# ------------------------------------------------------------------------------------------ half precision
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('name', ['longformer', 'bigbird', 'longshort', 'rfa'])
def test_half_precision_finite_and_close(name, dtype):
    case = {'longformer': ('longformer', (24, 20), dict(window_size=7, num_global=1)),
            'bigbird': ('bigbird', (24, 20), dict(window_size=5, num_global=1, r=2)),
            'longshort': ('longshort', (24, 20), dict(window_size=7, r=8)),
            'rfa': ('rfa', (480, 480), dict(m=32))}[name]
    fast, _, inputs, _, g = build(*case, dtype=torch.float64)
    inputs = [t.detach() * (4 if i < 2 else 1) for i, t in enumerate(inputs)]   # sharp attention
    mask = _mask(B, inputs[1].shape[2], seed=15, num_global=g)
    ref = fast(*inputs, key_padding_mask=mask)
    out = fast(*[t.to(dtype) for t in inputs], key_padding_mask=mask)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_rms(ref, out) < 3e-2


# ------------------------------------------------------------------------------------------ errors
def test_errors_name_the_problem():
    q, k, v = rand_qkv(1, 2, 13, 13, D, requires_grad=False)
    with pytest.raises(ValueError, match='num_global'):
        longformer_attention(q, k, v, (3, 4))                     # 13 tokens = 1 global + 3*4 grid
    with pytest.raises(ValueError, match='window_size'):
        longformer_attention(q, k, v, (3, 4), window_size=0, num_global=1)
    with pytest.raises(ValueError, match='rand_blocks'):
        bigbird_attention(q, k, v, (3, 4), torch.zeros(2, 5, 1, dtype=torch.long), window_size=2, num_global=1)
    with pytest.raises(ValueError, match='proj_logits'):
        longshort_attention(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], (3, 4), torch.randn(1, 2, 3, 13))
    with pytest.raises(ValueError, match='features'):
        rfa_attention(q, k, v, torch.randn(3, 8, 5))
    with pytest.raises(ValueError, match='kernel'):
        rfa_attention(q, k, v, torch.randn(8, D), kernel='laplace')
    with pytest.raises(ValueError, match='key_padding_mask'):
        longformer_attention(q, k, v, (3, 4), num_global=1, key_padding_mask=torch.zeros(1, 12, dtype=torch.bool))


def test_exported_from_ops():
    for name in ('longformer_attention', 'bigbird_attention', 'bigbird_random_blocks', 'longshort_attention',
                 'rfa_attention'):
        assert name in ops.__all__ and callable(getattr(ops, name))
