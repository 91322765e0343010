"""The fused full-softmax CE (`loss.ce_impl=full`) and its chunked form (`chunked`) against F.cross_entropy."""


import pytest
import torch
import torch.nn.functional as F

from dpgdiff.models.losses import SoftmaxCrossEntropy, domain_cross_entropy, softmax_cross_entropy


def _case(n=37, v=501, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, d, generator=g) * 2.0).double()
    table = torch.randn(v, d, generator=g).double()
    target = torch.randint(0, v, (n,), generator=g)
    weight = torch.rand(n, generator=g).double() + 0.5  # unequal per-row upstream gradients
    return h, table, target, weight


def _loss_and_grads(fn, h, table, target, weight):
    h = h.clone().requires_grad_()
    table = table.clone().requires_grad_()
    per_row = fn(h, table, target)
    (per_row * weight).sum().backward()
    return per_row.detach(), h.grad, table.grad


def _reference(h, table, target):
    return F.cross_entropy(h @ table.t(), target, reduction="none")


@pytest.mark.parametrize("chunk_rows", [None, 1, 5, 16, 37, 1000])
def test_softmax_ce_matches_cross_entropy_loss_and_grads(chunk_rows):
    case = _case()
    ref = _loss_and_grads(_reference, *case)
    got = _loss_and_grads(lambda h, t, y: softmax_cross_entropy(h, t, y, chunk_rows), *case)
    for name, a, b in zip(("loss", "grad h", "grad table"), got, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), f"{name}: max diff {float((a - b).abs().max())}"


def test_softmax_ce_float32_chunked_equals_full_to_1e5():
    h, table, target, weight = (x.float() if x.is_floating_point() else x for x in _case(n=300, v=4000, d=32))
    full = _loss_and_grads(lambda a, b, c: softmax_cross_entropy(a, b, c, None), h, table, target, weight)
    chunked = _loss_and_grads(lambda a, b, c: softmax_cross_entropy(a, b, c, 64), h, table, target, weight)
    ref = _loss_and_grads(_reference, h, table, target, weight)
    for a, b, c in zip(full, chunked, ref):  # fp32 sums over 300 rows: relative and absolute 1e-5
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
        assert torch.allclose(a, c, rtol=1e-5, atol=1e-5)


def test_softmax_ce_survives_a_second_backward():
    """retain_graph: the first backward consumes the kept logits in place; the second recomputes them."""
    h, table, target, weight = _case()
    h = h.clone().requires_grad_()
    loss = (SoftmaxCrossEntropy.apply(h, table, target, None) * weight).sum()
    loss.backward(retain_graph=True)
    first = h.grad.clone()
    h.grad = None
    loss.backward()
    assert torch.allclose(h.grad, first, rtol=1e-10, atol=1e-12)


def test_softmax_ce_extreme_logits_stay_finite():
    h, table, target, weight = _case()
    h = h * 200.0  # logits in the thousands: exp overflows without the max shift
    ref = _loss_and_grads(_reference, h, table, target, weight)
    for chunk_rows in (None, 8):
        got = _loss_and_grads(lambda a, b, c: softmax_cross_entropy(a, b, c, chunk_rows), h, table, target, weight)
        for a, b in zip(got, ref):
            assert torch.isfinite(a).all()
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_never_holds_more_than_one_chunk_of_logits():
    """Every (rows, V) tensor made inside forward and backward has at most chunk_rows rows."""
    h, table, target, weight = _case(n=64, v=700)
    h = h.requires_grad_()
    seen = []

    class Spy(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] == table.shape[0]:
                seen.append(out.shape[0])
            return out

    with Spy():
        (softmax_cross_entropy(h, table, target, 16) * weight).sum().backward()
    assert seen and max(seen) <= 16
    seen.clear()
    with Spy():
        softmax_cross_entropy(h.detach(), table, target, None)
    assert max(seen) == 64  # the full form does hold all rows (the spy sees them)


@pytest.mark.parametrize("norm", ["per_domain_mean", "global_mean"])
def test_domain_cross_entropy_chunked_equals_full(norm):
    g = torch.Generator().manual_seed(3)
    tables = [torch.randn(50, 8, generator=g, requires_grad=True), torch.randn(70, 8, generator=g, requires_grad=True)]
    heads = [torch.randn(40, 8, generator=g, requires_grad=True) for _ in range(2)]
    dom = torch.randint(0, 2, (40,), generator=g)
    local = torch.where(dom == 0, torch.randint(0, 50, (40,), generator=g), torch.randint(0, 70, (40,), generator=g))
    results = []
    for impl in ("full", "chunked"):
        for t in tables + heads:
            t.grad = None
        losses = domain_cross_entropy(heads, local, dom, tables, 0.5, norm, impl, chunk_rows=7)
        sum(losses).backward()
        results.append([x.detach() for x in losses] + [t.grad.clone() for t in tables + heads])
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_softmax_ce_on_cuda_matches_cross_entropy():
    case = [x.cuda() for x in _case(n=300, v=5000, d=32)]
    ref = _loss_and_grads(_reference, *case)
    for chunk_rows in (None, 64):
        got = _loss_and_grads(lambda h, t, y: softmax_cross_entropy(h, t, y, chunk_rows), *case)
        for a, b in zip(got, ref):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["full", "chunked"])
def test_domain_cross_entropy_adds_the_item_bias_to_every_logit(impl):
    """model.item_bias: CE of s·h·E^T + b, checked against F.cross_entropy on logits built by hand, with the
    bias's gradient (both ride the bias in the matmul)."""
    g = torch.Generator().manual_seed(5)
    tables = [torch.randn(30, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    biases = [torch.randn(30, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    h = torch.randn(24, 6, generator=g, dtype=torch.float64)
    dom = torch.arange(24) % 2
    local = torch.randint(0, 30, (24,), generator=g)
    (loss,) = domain_cross_entropy([h], local, dom, tables, 0.5, "per_domain_mean", impl, 5, biases)
    loss.backward()
    got = [b.grad.clone() for b in biases]

    expected = 0.0
    for d in (0, 1):
        rows = dom == d
        logits = 0.5 * h[rows] @ tables[d].t() + biases[d]
        tgt = local[rows]
        expected = expected + F.cross_entropy(logits, tgt)
    for b in biases:
        b.grad = None
    expected.backward()
    assert torch.allclose(loss, expected, rtol=1e-10)
    for a, b in zip(got, (b.grad for b in biases)):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


def test_logits_buffers_are_reused_across_steps_without_leaking_stale_values():
    """The CE's CPU logits come from LogitsWorkspace: a later step of equal or smaller size reuses the buffer
    of an earlier one (no fresh page-faulted allocation), and whatever the buffer held before never reaches
    a loss or a gradient: each call matches F.cross_entropy, row counts going up and down as batches do."""
    from dpgdiff.models.losses import LOGITS

    LOGITS.clear()
    pointers = []
    for n in (40, 33, 40, 12, 51):
        h, table, target, weight = _case(n=n, v=300, d=8, seed=n)
        got = _loss_and_grads(lambda a, b, c: softmax_cross_entropy(a, b, c, None), h, table, target, weight)
        ref = _loss_and_grads(_reference, h, table, target, weight)
        for a, b in zip(got, ref):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-8)
        pointers.append([(b.data_ptr(), b.numel()) for b in LOGITS._free()])
    assert pointers[0] == pointers[1] == pointers[2] == pointers[3]  # 33 and 12 rows fit the 40-row buffer
    assert len(pointers[0]) == 1 and pointers[0][0][1] >= 40 * 300
    assert len(pointers[4]) == 1 and pointers[4][0][1] >= 51 * 300  # a larger one; the small one was let go
    LOGITS.clear()
    assert not LOGITS._free()
