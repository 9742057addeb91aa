"""Chunked log-probs / entropy against the plain log_softmax formula, gradients, and memory."""

from __future__ import annotations

import pytest
import torch

from stages.errors import MgpoError
from stages.train.logprobs import logprobs_from_hidden, logprobs_from_logits

F64 = torch.float64


def reference(logits, targets, temperature=1.0):
    """Plain formula: log_softmax, gather, -sum p log p (float64)."""
    logp_all = torch.log_softmax(logits.to(F64) / temperature, dim=-1)
    valid = (targets >= 0) & (targets < logits.shape[-1])
    logp = logp_all.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * valid
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def grads(outputs, inputs, g1, g2):
    logp, ent = outputs
    return torch.autograd.grad((logp * g1).sum() + (ent * g2).sum(), inputs)


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("chunk", [1, 3, 1000, None])
def test_logits_path_matches_formula(temperature, chunk):
    g = torch.Generator().manual_seed(0)
    b, t, v = 3, 6, 17
    full = (3 * torch.randn(b, t + 1, v, generator=g, dtype=F64)).requires_grad_(True)
    logits = full[:, :-1]  # non-contiguous, as after shifting model outputs
    targets = torch.randint(0, v, (b, t), generator=g)
    targets[0, 2] = -100
    out = logprobs_from_logits(logits, targets, temperature=temperature, chunk_tokens=chunk)
    ref = reference(logits, targets, temperature)
    torch.testing.assert_close(out.logp, ref[0])
    torch.testing.assert_close(out.entropy, ref[1])
    g1 = torch.randn(b, t, generator=g, dtype=F64)
    g2 = torch.randn(b, t, generator=g, dtype=F64)
    torch.testing.assert_close(grads(out, full, g1, g2)[0], grads(ref, full, g1, g2)[0])


def test_contiguous_2d_and_logp_only():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 9, generator=g, dtype=F64, requires_grad=True)
    targets = torch.randint(0, 9, (10,), generator=g)
    out = logprobs_from_logits(logits, targets, with_entropy=False, chunk_tokens=4)
    assert out.entropy is None
    ref = reference(logits, targets)
    torch.testing.assert_close(out.logp, ref[0])
    (ga,) = torch.autograd.grad(out.logp.sum(), logits)
    (gb,) = torch.autograd.grad(ref[0].sum(), logits)
    torch.testing.assert_close(ga, gb)


def test_gradcheck_both_paths():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 7, generator=g, dtype=F64, requires_grad=True)
    targets = torch.randint(0, 7, (2, 4), generator=g)
    assert torch.autograd.gradcheck(
        lambda x: tuple(logprobs_from_logits(x, targets, temperature=0.8, chunk_tokens=3)),
        (logits,),
    )
    hidden = torch.randn(2, 4, 5, generator=g, dtype=F64, requires_grad=True)
    weight = torch.randn(7, 5, generator=g, dtype=F64, requires_grad=True)
    bias = torch.randn(7, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda h, w, b: tuple(
            logprobs_from_hidden(h, w, targets, bias=b, temperature=1.3, chunk_tokens=3)
        ),
        (hidden, weight, bias),
    )


@pytest.mark.parametrize("with_bias", [False, True])
def test_hidden_path_matches_logits_path(with_bias):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 5, 8, generator=g, dtype=F64, requires_grad=True)
    weight = torch.randn(13, 8, generator=g, dtype=F64, requires_grad=True)
    bias = torch.randn(13, generator=g, dtype=F64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 13, (2, 5), generator=g)
    out = logprobs_from_hidden(hidden, weight, targets, bias=bias, temperature=0.9, chunk_tokens=4)
    ref = reference(torch.nn.functional.linear(hidden, weight, bias), targets, 0.9)
    torch.testing.assert_close(out.logp, ref[0])
    torch.testing.assert_close(out.entropy, ref[1])
    inputs = (hidden, weight) + ((bias,) if with_bias else ())
    g1 = torch.randn(2, 5, generator=g, dtype=F64)
    g2 = torch.randn(2, 5, generator=g, dtype=F64)
    for a, b in zip(grads(out, inputs, g1, g2), grads(ref, inputs, g1, g2), strict=True):
        torch.testing.assert_close(a, b)


def test_bf16_logits():
    g = torch.Generator().manual_seed(4)
    logits = (4 * torch.randn(4, 8, 50, generator=g)).to(torch.bfloat16).requires_grad_(True)
    targets = torch.randint(0, 50, (4, 8), generator=g)
    out = logprobs_from_logits(logits, targets, chunk_tokens=5)
    assert out.logp.dtype == torch.float32
    ref = reference(logits.detach(), targets)
    torch.testing.assert_close(out.logp.double(), ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.entropy.double(), ref[1], atol=1e-5, rtol=1e-5)
    (out.logp.sum() + out.entropy.sum()).backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


def saved_bytes(fn):
    """Bytes of tensors autograd keeps for backward (storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_backward_keeps_no_vocab_sized_copy():
    """The naive path saves a [tokens, vocab] float32 log-softmax; ours only per-token vectors
    (plus the logits the caller already holds)."""
    m, v = 64, 4096
    logits = torch.randn(m, v, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, v, (m,))
    lean = saved_bytes(lambda: logprobs_from_logits(logits, targets, chunk_tokens=8))
    naive = saved_bytes(lambda: reference(logits.float(), targets))
    logits_bytes = m * v * 2
    assert lean <= logits_bytes + 64 * m
    assert naive >= logits_bytes + m * v * 4

    hidden = torch.randn(m, 32, requires_grad=True)
    weight = torch.randn(v, 32, requires_grad=True)
    lean = saved_bytes(lambda: logprobs_from_hidden(hidden, weight, targets, chunk_tokens=8))
    assert lean <= hidden.nbytes + weight.nbytes + 64 * m  # no [m, v] logits at all


def test_bad_temperature_and_chunk():
    logits = torch.randn(2, 3)
    targets = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(MgpoError, match="temperature"):
        logprobs_from_logits(logits, targets, temperature=0.0)
    with pytest.raises(MgpoError, match="chunk_tokens"):
        logprobs_from_logits(logits, targets, chunk_tokens=0)


def test_real_tiny_causal_lm():
    """hidden-state path on a real (tiny, random) transformers model equals its own logits."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen2Config(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).to(F64)
    ids = torch.randint(0, 96, (2, 12))
    out = model(input_ids=ids, output_hidden_states=True)
    targets = ids[:, 1:]
    from_logits = logprobs_from_logits(out.logits[:, :-1], targets, chunk_tokens=5)
    hidden = out.hidden_states[-1][:, :-1]
    from_hidden = logprobs_from_hidden(hidden, model.lm_head.weight, targets, chunk_tokens=5)
    torch.testing.assert_close(from_hidden.logp, from_logits.logp)
    torch.testing.assert_close(from_hidden.entropy, from_logits.entropy)
    ga = torch.autograd.grad(from_logits.logp.sum(), model.lm_head.weight, retain_graph=True)[0]
    gb = torch.autograd.grad(from_hidden.logp.sum(), model.lm_head.weight)[0]
    torch.testing.assert_close(ga, gb)
