"""Per-request sampling for transformers' continuous batching (ris.backends.hf_sampling): the
seeded Gumbel draw samples from the softmax, depends on its own row only, and top_p cuts the
nucleus as the per-token loop did."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="needs torch (make test installs it)")
pytest.importorskip("transformers", reason="needs transformers")

from ris.backends.hf_sampling import SeededDraw, TopP, _as_int32, draw_key, gumbel_noise  # noqa: E402


def test_gumbel_max_draws_follow_the_softmax() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    want = logits.softmax(-1)
    n = 20000
    keys = torch.tensor([draw_key(seed, 0) for seed in range(n)], dtype=torch.int64)
    picks = (logits + gumbel_noise(keys, 4)).argmax(-1)
    got = torch.bincount(picks, minlength=4).float() / n
    assert torch.allclose(got, want, atol=0.015), (got, want)


def test_a_row_draw_depends_on_its_key_only() -> None:
    keys = torch.tensor([draw_key(7, 3), draw_key(8, 3), draw_key(7, 4)], dtype=torch.int64)
    together = gumbel_noise(keys, 1000)
    alone = gumbel_noise(keys[:1], 1000)
    assert torch.equal(together[0], alone[0])
    assert not torch.equal(together[0], together[1]) and not torch.equal(together[0], together[2])
    assert all(draw_key(s, p) != 0 for s in range(50) for p in range(50))  # 0 marks greedy


def test_greedy_rows_get_no_noise() -> None:
    scores = torch.randn(2, 50)
    args = torch.tensor([0, _as_int32(draw_key(1, 0))], dtype=torch.int32)
    out = SeededDraw()(scores.clone(), args)
    assert torch.equal(out[0], scores[0]) and not torch.equal(out[1], scores[1])


def test_top_p_keeps_the_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    scores = probs.log()

    def kept(p: float) -> list[bool]:
        arg = torch.tensor([p], dtype=torch.float32).view(torch.int32)
        row: list[bool] = (TopP()(scores.clone(), arg) > float("-inf")).tolist()[0]
        return row

    assert kept(1.0) == [True] * 4
    assert kept(0.7) == [True, True, False, False]
    assert kept(0.1) == [True, False, False, False]  # the most likely always stays


def test_the_noise_is_finite_over_a_real_vocabulary() -> None:
    keys = torch.tensor([draw_key(seed, pos) for seed in range(40) for pos in range(10)], dtype=torch.int64)
    assert torch.isfinite(gumbel_noise(keys, 151936)).all()
