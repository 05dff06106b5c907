"""Each request's own sampling inside transformers' continuous batching: its temperature, its
top_p and its seed, as logits processors of the engine.

The engine's own sampling is one setting for the whole batch and one random stream shared by
every sequence (`transformers serve` takes the first request's settings and seeds the process
for each request), so a seeded answer would depend on who else is decoding. Here a request's
token depends on its own logits only:

- temperature and top_p are read per row, as the engine's per-request processors do, with a
  temperature of 0 (greedy) read as "leave the row alone";
- the draw is Gumbel-max: adding Gumbel noise to the logits and taking the argmax samples
  from their softmax, and the noise is a hash of (the request's seed, the token's position,
  the vocabulary index): no random generator per sequence, no shared stream (SGLang's seeded
  sampler works the same way). Greedy rows get no noise. The engine then takes the argmax
  (`do_sample=False`).

Pure tensor arithmetic on 64-bit integers: the same draws on CPU and CUDA, and inside a CUDA
graph. The processors follow the engine's per-request protocol (one int32 per row, floats
viewed as int32), the same in transformers 5.17 and 5.24."""

from __future__ import annotations

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
    ContinuousBatchingLogitsProcessorList,
)
from transformers.generation.logits_process import LogitsProcessorList

_MASK32 = 0xFFFFFFFF
# Odd multipliers below 2**31: a 32-bit value times one stays inside a signed 64-bit integer.
_M1, _M2, _M3, _M4 = 0x1E3779B1, 0x2C1B3C6D, 0x297A2D39, 0x05EBCA77


def draw_key(seed: int, position: int) -> int:
    """The noise key of a request's token at `position` (tokens generated before it): never 0,
    which marks a greedy row."""
    x = ((seed & _MASK32) * _M1 + (position & _MASK32) * _M2 + 0x9E37) & _MASK32
    x ^= x >> 16
    x = (x * _M3) & _MASK32
    x ^= x >> 13
    return x | 1


def _as_int32(value: int) -> int:
    """An unsigned 32-bit value as the int32 the engine's argument storage holds."""
    return value - (1 << 32) if value >= 1 << 31 else value


def gumbel_noise(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise of shape [rows, vocab], a pure function of each row's key."""
    k = keys.to(torch.int64).unsqueeze(-1) & _MASK32
    idx = torch.arange(vocab, device=keys.device, dtype=torch.int64).unsqueeze(0)
    x = (k * _M1 + idx * _M4) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _M2) & _MASK32
    x = x ^ (x >> 12)
    x = (x * _M3) & _MASK32
    x = x ^ (x >> 15)
    # 23 bits: (n + 0.5) / 2**23 is exact in float32, so u is never 0 or 1 (with 24 bits the
    # top value rounds to 1.0, and its noise to +inf).
    u = ((x >> 9).to(torch.float32) + 0.5) / float(1 << 23)
    return -torch.log(-torch.log(u))


def _kwargs(request: object) -> dict[str, object]:
    return request.state.logit_processor_kwargs  # type: ignore[attr-defined, no-any-return]


class Temperature(ContinuousBatchingLogitsProcessor):
    supported_kwargs: dict[str, type] = {"temperature": float}  # noqa: RUF012 - the engine's protocol
    ignored_kwargs: tuple[str, ...] = ()

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.copy_(torch.ones_like(int32_tensor, dtype=torch.float32).view(torch.int32))

    def prepare_tensor_args(self, requests_with_new_token: list) -> torch.Tensor:  # type: ignore[type-arg]
        temps = []
        for request in requests_with_new_token:
            t = float(_kwargs(request).get("temperature", 0.0))  # type: ignore[arg-type]
            temps.append(t if t > 0 else 1.0)  # greedy: the argmax of the row as it is
        return torch.tensor(temps, dtype=torch.float32).view(torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        temps = tensor_arg[: scores.size(0)].view(torch.float32)
        return scores / temps.unsqueeze(-1)


class TopP(ContinuousBatchingLogitsProcessor):
    supported_kwargs: dict[str, type] = {"top_p": float}  # noqa: RUF012
    ignored_kwargs: tuple[str, ...] = ()

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.copy_(torch.ones_like(int32_tensor, dtype=torch.float32).view(torch.int32))

    def prepare_tensor_args(self, requests_with_new_token: list) -> torch.Tensor:  # type: ignore[type-arg]
        tops = [float(_kwargs(r).get("top_p", 1.0)) for r in requests_with_new_token]  # type: ignore[arg-type]
        return torch.tensor(tops, dtype=torch.float32).view(torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        top_p = tensor_arg[: scores.size(0)].view(torch.float32).unsqueeze(-1)
        sorted_logits, order = torch.sort(scores, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        # A token stays while the tokens ranked above it hold less than top_p (the most likely
        # always stays): the nucleus, as llama.cpp and the transformers per-token loop cut it.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        return scores.masked_fill(drop, float("-inf"))


class SeededDraw(ContinuousBatchingLogitsProcessor):
    supported_kwargs: dict[str, type] = {"seed": int}  # noqa: RUF012
    ignored_kwargs: tuple[str, ...] = ()

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)  # greedy

    def prepare_tensor_args(self, requests_with_new_token: list) -> torch.Tensor:  # type: ignore[type-arg]
        keys = []
        for request in requests_with_new_token:
            kw = _kwargs(request)
            if float(kw.get("temperature", 0.0)) <= 0:  # type: ignore[arg-type]
                keys.append(0)
            else:
                state = request.state
                # Tokens generated before this one, counted from the engine's position so it
                # stays right when the engine prepares a step ahead of the last one's tokens.
                position = state.position_offset - (state._true_initial_tokens or len(state.initial_tokens))  # noqa: SLF001
                keys.append(_as_int32(draw_key(int(kw.get("seed", 0)), position)))  # type: ignore[call-overload]
        return torch.tensor(keys, dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        keys = tensor_arg[: scores.size(0)]
        noise = gumbel_noise(keys, scores.size(-1))
        sampled = (keys != 0).unsqueeze(-1)
        return torch.where(sampled, scores + noise, scores)


def per_request_sampling() -> ContinuousBatchingLogitsProcessorList:
    """The engine's processor list with these three, in order; each takes one row of the
    engine's argument storage."""
    procs = [Temperature(), TopP(), SeededDraw()]
    chain = ContinuousBatchingLogitsProcessorList(LogitsProcessorList(procs), per_request_processors=False)
    chain.tensors_required = len(procs)  # counted by the engine only for processors it converts
    return chain
