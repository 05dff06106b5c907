"""GPU profiles: the layout of one card by its size, with fake cards (no GPU is needed).

The profile is pure arithmetic (ris.config.profiles); the machine-built layout applies it when one
card is shared, and `ris config --gpu-profile` prints it for a card that is not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ris.cli import main
from ris.config import ConfigError
from ris.config.defaults import MIN_CPU_SHARE, default_config, profile_config
from ris.config.load import parse_config
from ris.config.profiles import (
    CARD_SLACK_GIB,
    GIB,
    IMAGE_REFERENCES,
    SD_TURBO,
    SDXL_TURBO,
    card_of,
    pick_profile,
)
from ris.lanes import Lane
from ris.lanes.llm import SMOLLM2_SOURCE
from ris.machine import MachineInfo
from ris.memory.fit import image_plan

MIB = 2**20
CARD_SIZES_GB = (6, 8, 12, 16, 24, 80)


def one_card(gb: float, cores: int = 8) -> MachineInfo:
    return MachineInfo(
        cores=tuple(range(cores)), gpus=1, memory_bytes=32 * GIB, gpu_memory=((f"Fake {gb} GB", card_of(gb)),)
    )


@pytest.mark.parametrize(
    ("card_bytes", "profile"),
    [
        (card_of(4), "under 6 GB"),
        (card_of(6), "6 GB"),
        (card_of(8), "8 GB"),
        (8188 * MIB, "8 GB"),  # NVML reports some "8 GB" cards a little short of 8 GiB
        (card_of(10), "8 GB"),  # between two sizes: the smaller profile
        (card_of(12), "12 GB"),
        (16380 * MIB, "16 GB"),  # a 16 GB RTX 4060 Ti as NVML reports it
        (card_of(24), "24 GB"),
        (card_of(40), "24 GB"),
        (card_of(48), "48 GB and larger"),
        (card_of(80), "48 GB and larger"),
    ],
)
def test_the_profile_is_the_largest_not_above_the_card(card_bytes: int, profile: str) -> None:
    assert pick_profile(card_bytes).name == profile


def test_budgets_and_reserve_fit_every_card_size() -> None:
    # Every card from 1 to 100 GiB in steps of 1/8 GiB: what the profile asks plus what it keeps
    # for CUDA contexts and a desktop is never more than the card.
    for eighths in range(8, 801):
        card = eighths * GIB // 8
        profile = pick_profile(card)
        budgets = [gib for gib in (profile.llm_gib, profile.image_gib) if gib is not None]
        assert (sum(budgets) + profile.reserve_gib) * GIB <= card, profile
        # A CUDA context for each worker on the card, plus the desktop's share.
        assert profile.reserve_gib == (0.5 * len(budgets) + 0.5 if budgets else 0.0)


@pytest.mark.parametrize("gb", CARD_SIZES_GB)
def test_each_profile_puts_the_llm_and_image_lanes_on_the_card_and_never_tts(gb: int) -> None:
    settings = pick_profile(card_of(gb)).lane_settings()
    assert set(settings) == {Lane.LLM, Lane.IMAGE}
    assert settings[Lane.LLM]["device"] == settings[Lane.IMAGE]["device"] == "cuda:0"


@pytest.mark.parametrize("gb", [*CARD_SIZES_GB, 4])
def test_the_suggested_llm_fits_its_budget_whole(gb: int) -> None:
    profile = pick_profile(card_of(gb))
    assert profile.llm_placement == "gpu"
    assert profile.llm_gib is not None
    assert profile.llm_model.footprint(profile.llm_parallel).total <= profile.llm_gib * GIB


@pytest.mark.parametrize(
    ("gb", "sd_turbo", "sdxl_turbo"),
    [
        (6, "gpu", "sequential_offload"),
        (8, "gpu", "sequential_offload"),
        (12, "gpu", "sequential_offload"),
        (16, "gpu", "gpu"),
        (24, "gpu", "gpu"),
        (80, "gpu", "gpu"),
    ],
)
def test_image_plans_are_the_loaders_own(gb: int, sd_turbo: str, sdxl_turbo: str) -> None:
    profile = pick_profile(card_of(gb))
    assert profile.image_plans() == {"sd-turbo": sd_turbo, "sdxl-turbo": sdxl_turbo}
    # Configured pipelines are the resident ones (the backend moves a whole pipeline), the
    # largest the default.
    assert [m.name for m in profile.image_models()] == [
        ref.name for ref in reversed(IMAGE_REFERENCES) if profile.image_plans()[ref.name] == "gpu"
    ]


def test_the_reference_pipelines_need_what_the_docs_say() -> None:
    # SD-Turbo resident, SDXL-Turbo's UNet with the margin (model offload): the table's figures.
    assert round(SD_TURBO.footprint().total / GIB, 2) == 2.64
    assert round(SDXL_TURBO.footprint().total / GIB, 2) == 7.12
    assert image_plan(SDXL_TURBO.footprint(), int(5.44 * GIB)).plan == "model_offload"
    assert image_plan(SDXL_TURBO.footprint(), int(5.43 * GIB)).plan == "sequential_offload"


def test_the_largest_profile_grows_the_llm_budget_with_the_card() -> None:
    at_48, at_80 = pick_profile(card_of(48)), pick_profile(card_of(80))
    assert at_48.image_gib == at_80.image_gib == 12.0
    assert (at_48.llm_gib, at_80.llm_gib) == (34.5, 66.5)


def test_under_6_gb_the_llm_has_the_card_and_images_run_on_the_cpu() -> None:
    profile = pick_profile(card_of(4))
    assert profile.lane_settings() == {
        Lane.LLM: {"device": "cuda:0", "gpu_memory_gb": 3.0},
        Lane.IMAGE: {"device": "cpu"},
    }
    assert profile.image_plans() == {}
    # A card too small to help: nothing on it.
    tiny = pick_profile(card_of(1))
    assert tiny.lane_settings() == {Lane.LLM: {"device": "cpu"}, Lane.IMAGE: {"device": "cpu"}}
    assert pick_profile(card_of(2)).llm_placement == "partial"


def test_a_card_of_no_memory_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        pick_profile(0)


# ----- the machine-built layout ----------------------------------------------------------------


@pytest.mark.parametrize("gb", [*CARD_SIZES_GB, 4])
def test_the_machine_built_layout_takes_the_cards_profile(gb: int) -> None:
    cfg = default_config(one_card(gb))  # checked with the card: its budgets fit it
    for lane, settings in pick_profile(card_of(gb)).lane_settings().items():
        assert cfg.lane(lane).device == settings["device"]
        assert cfg.lane(lane).gpu_memory_gb == settings.get("gpu_memory_gb")
    assert cfg.lane(Lane.TTS).device == "cpu"
    # The image lane keeps a minimum CPU share wherever it computes on the CPU, a small card's
    # profile moving it there included (decided before the profile, it had none on 2-6 GB).
    image = cfg.lane(Lane.IMAGE)
    assert image.min_cpu_share == (MIN_CPU_SHARE if image.device == "cpu" else None), (gb, image.device)
    # The embedded models stay the defaults: their files are there; the suggested ones are not.
    assert cfg.lane(Lane.LLM).models[cfg.lane(Lane.LLM).default_model or ""].source == SMOLLM2_SOURCE


def test_a_card_too_small_to_help_lays_out_as_without_a_gpu() -> None:
    cfg = default_config(one_card(1))
    assert cfg.lane(Lane.LLM).device == cfg.lane(Lane.IMAGE).device == "cpu"
    assert cfg.lane(Lane.LLM).cores == tuple(range(6))  # the CPU layout's cores, not two to feed a GPU
    assert cfg.lane(Lane.IMAGE).min_cpu_share == MIN_CPU_SHARE


def test_the_cpu_layout_keeps_config_jsons_image_share_and_ris_bench_drops_it_without_isolation() -> None:
    """The machine-built layout and the repository's config.json keep the same share; ris
    bench's traditional and shared configurations run every lane at nice 0, without one."""
    from ris.benchmark import configs

    cfg = default_config(MachineInfo(cores=(0, 1), gpus=0))
    assert cfg.lane(Lane.IMAGE).min_cpu_share == MIN_CPU_SHARE
    shipped = json.loads((Path(__file__).resolve().parents[2] / "config.json").read_text())
    assert shipped["lanes"]["image"]["min_cpu_share"] == MIN_CPU_SHARE
    machine = MachineInfo(cores=(0, 1), gpus=0)
    assert configs.build("isolated", "cpu", machine).lane(Lane.IMAGE).min_cpu_share == MIN_CPU_SHARE
    for name in ("traditional", "shared"):
        image = configs.build(name, "cpu", machine).lane(Lane.IMAGE)
        assert image.min_cpu_share is None and image.nice == 0, name


def test_without_the_cards_memory_or_with_two_cards_nothing_changes() -> None:
    unknown = default_config(MachineInfo(cores=tuple(range(8)), gpus=1))
    assert unknown.lane(Lane.LLM).gpu_memory_gb is None and unknown.lane(Lane.IMAGE).device == "cuda:0"
    two = MachineInfo(cores=tuple(range(8)), gpus=2, gpu_memory=(("A", card_of(8)), ("B", card_of(8))))
    cfg = default_config(two)
    assert (cfg.lane(Lane.LLM).device, cfg.lane(Lane.IMAGE).device) == ("cuda:0", "cuda:1")
    assert cfg.lane(Lane.LLM).gpu_memory_gb is None and cfg.lane(Lane.IMAGE).gpu_memory_gb is None


# ----- a card that is not here: profile_config and `ris config --gpu-profile` ------------------


def test_a_profile_is_laid_out_on_a_machine_without_a_gpu() -> None:
    here = MachineInfo(cores=tuple(range(8)), gpus=0)
    cfg = profile_config(card_of(8), here)
    llm, image = cfg.lane(Lane.LLM), cfg.lane(Lane.IMAGE)
    assert (llm.device, llm.gpu_memory_gb, llm.parallel) == ("cuda:0", 2.0, 4)
    assert (image.device, image.gpu_memory_gb, image.enabled) == ("cuda:0", 4.25, True)
    assert llm.default_model == "qwen2.5:1.5b" and image.default_model == "sd-turbo"
    assert llm.models["qwen2.5:1.5b"].source == "/models/qwen2.5-1.5b-instruct-q4_k_m.gguf"
    assert "smollm2" in llm.models and "tiny-sd" in image.models  # the embedded ones kept
    # What is printed loads where such a card is, and is refused where it is not.
    assert parse_config(cfg.model_dump(mode="json"), one_card(8)).lane(Lane.LLM).gpu_memory_gb == 2.0
    with pytest.raises(ConfigError, match="cuda:0' is not available"):
        parse_config(cfg.model_dump(mode="json"), here)


def test_ris_config_gpu_profile_prints_the_layout_for_that_card(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--gpu-profile", "16"]) == 0
    out, err = capsys.readouterr()
    lanes = json.loads(out)["lanes"]
    assert (lanes["llm"]["gpu_memory_gb"], lanes["image"]["gpu_memory_gb"]) == (6.25, 8.0)
    assert lanes["image"]["default_model"] == "sdxl-turbo"
    assert lanes["tts"]["device"] == "cpu"
    assert err.startswith("ris config: the 16 GB profile") and "sdxl-turbo resident" in err


def test_ris_config_gpu_profile_takes_no_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--gpu-profile", "8", "--config", "config.json"]) == 2
    assert "--gpu-profile builds a layout" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["config", "--gpu-profile", "eight"])


def test_the_slack_is_what_counts_a_short_card_as_its_size() -> None:
    assert pick_profile(int((8 - CARD_SLACK_GIB) * GIB)).name == "8 GB"
    assert pick_profile(int((8 - CARD_SLACK_GIB) * GIB) - 1).name == "6 GB"
