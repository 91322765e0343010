"""dpgdiff.models.layers.dropout / attention: F.dropout's and SDPA's semantics with a cheaper CPU mask (issue 9)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dpgdiff.models.layers import Dropout, attention, dropout, dropout_keep_mask


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_keep_mask_has_the_right_rate_and_no_pattern(p):
    torch.manual_seed(0)
    n = 1_000_003  # not a multiple of 4: the last 64-bit draw is only partly used
    keep = dropout_keep_mask((n,), p, torch.device("cpu"))
    assert keep.dtype == torch.bool and keep.shape == (n,)
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(keep.float().mean().item() - (1 - p)) < 5 * sd
    # the four entries cut from one 64-bit draw are independent: each position of the 4 has the rate,
    # and pairs of neighbours are kept together at (1 - p)^2
    quads = keep[: n // 4 * 4].view(-1, 4).float()
    sd4 = math.sqrt(p * (1 - p) / quads.shape[0])
    for j in range(4):
        assert abs(quads[:, j].mean().item() - (1 - p)) < 5 * sd4, j
    both = (quads[:, 0] * quads[:, 1]).mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / quads.shape[0])


def test_dropout_scales_kept_entries_and_gradients_like_f_dropout():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.25, True)
    kept = y != 0
    assert 0.6 < kept.float().mean().item() < 0.9
    assert torch.allclose(y[kept], x.detach()[kept] / 0.75)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)
    assert dropout(x, 0.25, False) is x and dropout(x, 0.0, True) is x  # eval / p = 0: no work
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))


def test_dropout_follows_the_global_seed():
    x = torch.ones(1000)
    torch.manual_seed(7)
    a = dropout(x, 0.3, True)
    torch.manual_seed(7)
    assert torch.equal(a, dropout(x, 0.3, True))
    assert not torch.equal(a, dropout(x, 0.3, True))


def test_dropout_module_is_nn_dropout_in_eval_and_refuses_bad_p():
    m = Dropout(0.2).eval()
    x = torch.randn(5, 4)
    assert torch.equal(m(x), x) and "p=0.2" in repr(m)
    with pytest.raises(ValueError, match="not in"):
        Dropout(1.5)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_attention_equals_sdpa_without_dropout_and_with_its_own_masks(mask_kind):
    torch.manual_seed(2)
    q, k, v = (torch.randn(3, 2, 5, 8) for _ in range(3))
    mask = {"none": None,
            "bool": torch.ones(5, 5, dtype=torch.bool).tril()[None, None],
            "float": torch.zeros(3, 1, 5, 5).masked_fill(torch.rand(3, 1, 5, 1) < 0.3, -1e9)}[mask_kind]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(attention(q, k, v, mask, 0.1, False), ref, atol=1e-6)  # eval: SDPA itself
    # training with dropout: the manual path, checked against softmax · (dropped weights) · v with the same mask
    torch.manual_seed(3)
    out = attention(q, k, v, mask, 0.1, True)
    torch.manual_seed(3)
    scores = q @ k.transpose(-2, -1) / math.sqrt(8)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, -1)
    expected = dropout(weights, 0.1, True) @ v
    assert torch.allclose(out, expected, atol=1e-6)
    # and with p -> 0 the manual path is SDPA's math
    assert torch.allclose(attention(q, k, v, mask, 1e-12, True), ref, atol=1e-5)
