"""The `block` policy on a real (tiny) UNet: a step pauses half-way while the flag is raised."""

from __future__ import annotations

import threading
import time

import pytest

torch = pytest.importorskip("torch", reason="needs torch (make test installs it)")
pytest.importorskip("diffusers", reason="needs diffusers (make test installs it)")

from ris.backends.image_diffusers import install_block_hooks  # noqa: E402
from ris.backends.sd_arch import TINY_UNET  # noqa: E402
from ris.preemption.policy import Activity, PreemptionPolicy, Yielder  # noqa: E402


def test_raised_flag_stops_progress_inside_a_step_and_lowering_resumes_it() -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**TINY_UNET).eval()
    board = [int(Activity.IDLE)]
    entered: list[int] = []  # block entries, counted by a hook that runs after ours
    raise_at = 3

    def read() -> list[int]:
        # An LLM request arrives while the UNet is at its third block.
        if len(entered) == raise_at and board[0] == Activity.IDLE and not lowered.is_set():
            board[0] = int(Activity.PREFILL)
            raised.set()
        return board

    raised, lowered = threading.Event(), threading.Event()
    y = Yielder(PreemptionPolicy(mode="block", min_share=0.0, poll_s=0.001), read, time.monotonic, time.sleep)
    n_hooks = install_block_hooks(unet, lambda: y.checkpoint("block"), cuda=False)
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        for sub in [*(block.resnets or []), *(getattr(block, "attentions", None) or [])]:
            sub.register_forward_pre_hook(lambda _m, _a: entered.append(1))
    assert n_hooks > raise_at

    done = threading.Event()

    def step() -> None:
        with torch.inference_mode():
            unet(torch.randn(1, 4, 16, 16), 10, encoder_hidden_states=torch.randn(1, 77, 32))
        done.set()

    t = threading.Thread(target=step)
    t.start()
    assert raised.wait(10)
    time.sleep(0.3)
    frozen = len(entered)
    assert frozen == raise_at and not done.is_set()  # no block ran while the flag was up
    lowered.set()
    board[0] = int(Activity.IDLE)
    t.join(10)
    assert done.is_set() and len(entered) == n_hooks
    assert y.stats.pauses == 1 and y.stats.paused_s >= 0.25
