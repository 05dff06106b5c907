"""Code paths that only run on an NVIDIA GPU. Skipped, with the reason, on CPU-only machines."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="needs torch")
pytest.importorskip("diffusers", reason="needs diffusers")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]


def test_block_hooks_with_cuda_events_pause_inside_a_step() -> None:
    from diffusers import UNet2DConditionModel

    from ris.backends.image_diffusers import install_block_hooks
    from ris.backends.sd_arch import SD15_UNET
    from ris.preemption.policy import Activity, PreemptionPolicy, Yielder

    unet = UNet2DConditionModel(**SD15_UNET).to("cuda", torch.float16).eval()
    board = [int(Activity.IDLE)]
    entered: list[int] = []
    raised = threading.Event()

    def read() -> list[int]:
        if len(entered) == 5 and not raised.is_set():
            board[0] = int(Activity.PREFILL)
            raised.set()
        return board

    y = Yielder(PreemptionPolicy(mode="block", min_share=0.0), read, time.monotonic, time.sleep)
    n = install_block_hooks(unet, lambda: y.checkpoint("block"), cuda=True)
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        for sub in [*(block.resnets or []), *(getattr(block, "attentions", None) or [])]:
            sub.register_forward_pre_hook(lambda _m, _a: entered.append(1))
    x = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16)
    ehs = torch.randn(2, 77, 768, device="cuda", dtype=torch.float16)
    done = threading.Event()

    def step() -> None:
        with torch.inference_mode():
            unet(x, 500, encoder_hidden_states=ehs)
            torch.cuda.synchronize()
        done.set()

    t = threading.Thread(target=step)
    t.start()
    assert raised.wait(30)
    time.sleep(0.3)
    assert len(entered) == 5 and not done.is_set()
    board[0] = int(Activity.IDLE)
    t.join(30)
    assert done.is_set() and len(entered) == n


def test_dummy_sd15_and_7b_shapes_load_on_the_gpu(tmp_path: Path) -> None:
    from ris.backends import BackendContext, backend_class
    from ris.config import ModelSpec
    from ris.lanes import Lane
    from ris.lanes.image import DirectRun, ImageBackend, ImageRequest
    from ris.lanes.llm import LLMBackend, LLMRequest, TextCollector

    ctx = BackendContext("cuda:0", 2, tmp_path)
    img = backend_class(Lane.IMAGE, "diffusers")(
        ModelSpec(backend="diffusers", load_format="dummy", source="sd15"), ctx
    )
    assert isinstance(img, ImageBackend)
    out = img.generate(ImageRequest(prompt="x", width=512, height=512, steps=2), DirectRun())
    assert out.png[:4] == b"\x89PNG" and (out.width, out.height) == (512, 512)
    llm = backend_class(Lane.LLM, "transformers")(
        ModelSpec(backend="transformers", load_format="dummy", source="qwen2.5-0.5b"), ctx
    )
    assert isinstance(llm, LLMBackend)
    res = llm.generate(LLMRequest(prompt="hello" * 100, max_tokens=8, ignore_eos=True), TextCollector())
    assert res.completion_tokens == 8
