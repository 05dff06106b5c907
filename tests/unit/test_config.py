"""config.json validation against a fake machine: every error quotes the value and the choices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ris.config import ConfigError
from ris.config.defaults import default_config
from ris.config.load import load_config, parse_config
from ris.lanes import Lane
from ris.machine import MachineInfo

TWO_CORES = MachineInfo(cores=(0, 1), gpus=0)
ONE_GPU = MachineInfo(cores=tuple(range(8)), gpus=1)


def base() -> dict[str, Any]:
    return {
        "lanes": {
            "llm": {
                "cores": [0],
                "default_model": "m",
                "models": {"m": {"backend": "llama_cpp", "source": "/x.gguf"}},
            },
            "tts": {"cores": [1], "default_model": "e", "models": {"e": {"backend": "espeak"}}},
            "image": {"enabled": False, "priority_class": "batch"},
        }
    }


def error_of(data: dict[str, Any], machine: MachineInfo = TWO_CORES) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, machine)
    return str(exc.value)


def test_valid_config_parses() -> None:
    cfg = parse_config(base(), TWO_CORES)
    assert cfg.lane(Lane.LLM).cores == (0,)
    assert cfg.server.port == 8080 and cfg.server.host == "127.0.0.1"
    assert cfg.lane(Lane.LLM).resolve_model(None) == "m"


def test_unknown_key_is_named_with_allowed_keys() -> None:
    data = base()
    data["lanes"]["llm"]["coers"] = [0]
    msg = error_of(data)
    assert "lanes.llm.coers" in msg and "'coers'" in msg and "cores" in msg


def test_unknown_top_level_key() -> None:
    data = base()
    data["sever"] = {}
    assert "unknown key 'sever'" in error_of(data)


def test_core_that_does_not_exist() -> None:
    data = base()
    data["lanes"]["tts"]["cores"] = [7]
    msg = error_of(data)
    assert "core 7 is not one this server may run on (its CPU affinity: 0, 1)" in msg and "0, 1" in msg


def test_gpu_that_is_not_there() -> None:
    data = base()
    data["lanes"]["llm"]["device"] = "cuda:0"
    msg = error_of(data)
    assert "'cuda:0' is not available" in msg and "no GPU" in msg
    data["lanes"]["llm"]["device"] = "cuda:3"
    data["lanes"]["llm"]["cores"] = [0]
    assert "cuda:0" in error_of(data, MachineInfo(cores=(0, 1), gpus=1))


def test_device_form() -> None:
    data = base()
    data["lanes"]["llm"]["device"] = "gpu0"
    assert "'gpu0' is not allowed" in error_of(data)


def test_tts_lane_never_gets_a_gpu() -> None:
    data = base()
    data["lanes"]["tts"]["device"] = "cuda:0"
    data["lanes"]["tts"]["cores"] = [2]
    assert "TTS lane runs on CPU cores only" in error_of(data, ONE_GPU)


def test_two_realtime_lanes_on_the_same_core() -> None:
    data = base()
    data["lanes"]["tts"]["cores"] = [0]
    msg = error_of(data)
    assert "lanes.tts.cores: core(s) 0 also given to the real-time llm lane" in msg


def test_a_short_key_is_warned_of_never_written(caplog: pytest.LogCaptureFixture) -> None:
    """Behind the address a key was used from, a guesser is answered for it while throttled
    (its users must not be locked out): a short key can be found there."""
    data = base()
    data["server"] = {"api_keys": ["1234", {"name": "bob", "key": "b0b"}, "a" * 16]}
    with caplog.at_level("WARNING", logger="ris.config"):
        parse_config(data, TWO_CORES)
    assert "server.api_keys[0] has 4 characters: a key shorter than 16 can be guessed" in caplog.text
    assert "the key of 'bob' has 3 characters" in caplog.text
    assert "[2]" not in caplog.text and "1234" not in caplog.text and "b0b" not in caplog.text


def test_sharing_allowed_when_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    data = base()
    data["lanes"]["tts"]["cores"] = [0]
    data["lanes"]["tts"]["exclusive_cores"] = False
    # Allowed (the refusal's advice), but said: the LLM lane did not ask to share (its core
    # was taken unsaid; an outside CLI user's run).
    with caplog.at_level("WARNING", logger="ris.config"):
        parse_config(data, TWO_CORES)
    assert (
        "lanes.tts shares core(s) 0 with the real-time llm lane, whose exclusive_cores is true" in caplog.text
    )
    caplog.clear()
    data["lanes"]["llm"]["exclusive_cores"] = False
    with caplog.at_level("WARNING", logger="ris.config"):
        parse_config(data, TWO_CORES)
    assert caplog.text == ""
    # Every pair is compared, not each lane with the first on the core: two strict lanes
    # beside a sharing one were let through (a review).
    data["lanes"]["tts"]["exclusive_cores"] = True
    data["lanes"]["image"] = {
        "enabled": True,
        "priority_class": "realtime",
        "cores": [0],
        "default_model": "i",
    }
    data["lanes"]["image"]["models"] = {
        "i": {"backend": "diffusers", "load_format": "dummy", "source": "tiny"}
    }
    assert "lanes.image.cores: core(s) 0 also given to the real-time tts lane" in error_of(data)


def test_batch_lane_may_share_cores() -> None:
    # Enabled: the exclusivity rule reads enabled lanes only, so a disabled one proves nothing.
    data = base()
    data["lanes"]["image"] = {
        "priority_class": "batch",
        "cores": [0, 1],
        "default_model": "t",
        "models": {"t": {"backend": "diffusers", "source": "tiny"}},
    }
    image = parse_config(data, TWO_CORES).lane(Lane.IMAGE)
    assert image.enabled and image.cores == (0, 1) and image.exclusive_cores


def test_a_lane_an_image_lane_yields_to_has_one_worker_locally() -> None:
    # Its worker publishes the lane's activity in one slot of the board: two replicas would
    # overwrite each other's, and the image lane would run through the other's prefill.
    data = base()
    data["lanes"]["llm"].update(device="cuda:0", replicas=2)
    data["lanes"]["image"] = {
        "device": "cuda:0",
        "priority_class": "batch",
        "default_model": "t",
        "models": {"t": {"backend": "diffusers", "source": "tiny"}},
    }
    msg = error_of(data, ONE_GPU)
    assert "lanes.llm.replicas: 2; the image lane yields to llm on cuda:0" in msg
    data["lanes"]["image"]["device"] = "cpu"  # nothing shared, nothing to publish
    parse_config(data, ONE_GPU)
    data["lanes"]["llm"]["replicas"] = 1
    data["lanes"]["image"].update(device="cuda:0", replicas=2)  # the image lane only reads it
    parse_config(data, ONE_GPU)


def test_backend_must_fit_the_lane() -> None:
    data = base()
    data["lanes"]["tts"]["models"]["e"]["backend"] = "llama_cpp"
    assert "not a tts backend; allowed: espeak, piper" in error_of(data)


def test_default_model_must_be_configured() -> None:
    data = base()
    data["lanes"]["llm"]["default_model"] = "qwen2.5"
    assert "'qwen2.5' is not in its models" in error_of(data)


def test_bounds_quote_the_value() -> None:
    data = base()
    data["lanes"]["llm"]["max_queue"] = -1
    msg = error_of(data)
    assert "lanes.llm.max_queue" in msg and "-1" in msg


def test_unknown_model_in_a_request() -> None:
    cfg = parse_config(base(), TWO_CORES)
    with pytest.raises(KeyError, match="unknown model 'qwen2.5'; configured: m"):
        cfg.lane(Lane.LLM).resolve_model("qwen2.5")


def test_bad_json_names_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_text('{"lanes": {\n  "llm": ,}}')
    with pytest.raises(ConfigError, match="line 2 column"):
        load_config(p, TWO_CORES)


def test_a_byte_order_mark_is_read_past_and_a_file_not_an_object_is_said(tmp_path: Path) -> None:
    """Notepad's UTF-8 (with a BOM) was refused as "Unexpected UTF-8 BOM"; a top-level [] read
    "  - : Input should be an object", a path of nothing."""
    p = tmp_path / "config.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({**base(), "data_dir": "data"}).encode())
    assert load_config(p, TWO_CORES).data_dir == tmp_path / "data"
    p.write_text("[]")
    with pytest.raises(ConfigError, match=r"the configuration is a JSON object \(\{...\}\), not list"):
        load_config(p, TWO_CORES)


def test_relative_data_dir_is_relative_to_the_file(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_text(json.dumps({**base(), "data_dir": "data"}))
    assert load_config(p, TWO_CORES).data_dir == tmp_path / "data"


def test_a_relative_model_source_beside_the_config_is_read_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service started from another folder (systemd's WorkingDirectory, --config /etc/...)
    found no model where the config's own folder has it: the lane failed after start."""
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "voice.onnx").write_bytes(b"x")
    data = base()
    data["lanes"]["tts"]["models"]["v"] = {"backend": "espeak", "source": "voice.onnx"}
    data["lanes"]["tts"]["models"]["w"] = {"backend": "espeak", "source": "elsewhere.onnx"}
    data["lanes"]["tts"]["models"]["p"] = {"backend": "espeak", "source": "package:somewhere/x"}
    p = folder / "config.json"
    p.write_text(json.dumps(data))
    monkeypatch.chdir(tmp_path)
    models = load_config(p, TWO_CORES).lane(Lane.TTS).models
    assert models["v"].source == str(folder / "voice.onnx")
    assert models["w"].source == "elsewhere.onnx"  # not beside it: the working directory's, as before
    assert models["p"].source == "package:somewhere/x"


def test_a_data_dir_under_home_is_under_home_as_ris_pull_reads_it(tmp_path: Path) -> None:
    from ris.pull import _data_dir

    p = tmp_path / "config.json"
    data = {**base(), "data_dir": "~/ris-data-x"}
    p.write_text(json.dumps(data))
    assert load_config(p, TWO_CORES).data_dir == Path.home() / "ris-data-x" == _data_dir(data, p)


def test_default_on_two_cpu_cores_gives_disjoint_realtime_cores() -> None:
    cfg = default_config(TWO_CORES)
    llm, tts, image = (cfg.lane(x) for x in Lane)
    assert llm.cores == (0,) and tts.cores == (1,)
    assert llm.device == tts.device == "cpu"
    assert image.nice == 19 and image.priority_class == "batch"


def test_default_on_many_cores() -> None:
    cfg = default_config(MachineInfo(cores=tuple(range(8)), gpus=0))
    assert cfg.lane(Lane.LLM).cores == tuple(range(6))
    assert cfg.lane(Lane.TTS).cores == (6, 7)


def test_default_with_a_gpu_puts_the_llm_on_it() -> None:
    cfg = default_config(ONE_GPU)
    assert cfg.lane(Lane.LLM).device == "cuda:0"
    assert cfg.lane(Lane.TTS).device == "cpu"
    assert cfg.lane(Lane.IMAGE).device == "cuda:0"
    assert not set(cfg.lane(Lane.LLM).cores or ()) & set(cfg.lane(Lane.TTS).cores or ())


def test_default_on_one_core_shares_it_rather_than_refusing() -> None:
    cfg = default_config(MachineInfo(cores=(0,), gpus=0))
    assert cfg.lane(Lane.LLM).cores == cfg.lane(Lane.TTS).cores == (0,)


def test_example_config_in_the_repository_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    load_config(root / "config.json", TWO_CORES)


def test_a_config_with_no_enabled_lane_is_refused() -> None:
    assert "no lane is enabled" in error_of({"lanes": {}})
    assert "no lane is enabled" in error_of({})


def test_parallel_is_bounded_and_only_for_lanes_that_run_tasks_together() -> None:
    assert parse_config(base(), TWO_CORES).lane(Lane.LLM).parallel == 8  # the LLM kind's default
    for absurd, allowed in ((0, "greater than or equal to 1"), (100_000, "less than or equal to 256")):
        data = base()
        data["lanes"]["llm"]["parallel"] = absurd
        assert f"lanes.llm.parallel: Input should be {allowed} (got {absurd})" in error_of(data)
    assert parse_config(base(), TWO_CORES).lane(Lane.TTS).parallel == 4  # taking turns a piece each
    data = base()
    data["lanes"]["image"] = {
        "enabled": True,
        "parallel": 2,
        "default_model": "i",
        "models": {"i": {"backend": "diffusers"}},
    }
    assert "lanes.image.parallel: 2; the image lane runs one task at a time" in error_of(data)


def test_a_cluster_given_on_the_command_line_is_the_files_rule(tmp_path: Path) -> None:
    """`ris serve --ray` lays the cluster over the file before its one validation: a GPU lane
    and cores this host lacks are the nodes' business, as with "cluster" in the file."""
    data = base()
    data["lanes"]["llm"].update(device="cuda:0", cores=[0, 1, 2, 3, 4, 5])
    p = tmp_path / "config.json"
    p.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="cuda:0"):
        load_config(p, TWO_CORES)
    on_ray = load_config(p, TWO_CORES, cluster={"engine": "ray", "address": "head:6379"})
    p.write_text(json.dumps({**data, "cluster": {"engine": "ray", "address": "head:6379"}}))
    assert load_config(p, TWO_CORES) == on_ray
    assert on_ray.cluster.address == "head:6379" and on_ray.lane(Lane.LLM).device == "cuda:0"


def test_numbers_that_are_not_numbers_are_refused_not_a_traceback() -> None:
    """JSON readers take 1e309 as Infinity, and NaN: a GPU budget of infinity failed later
    with OverflowError, outside the config's errors."""
    for field, value in (("gpu_memory_gb", float("inf")), ("keep_alive_s", float("nan"))):
        data = base()
        data["lanes"]["llm"][field] = value
        assert "finite number" in error_of(data), field


def test_values_of_the_wrong_json_type_are_refused_not_converted() -> None:
    """Lax validation took `"port": true` as port 1 and `"threads": "2"` as 2: a typo became a
    setting nobody wrote. JSON's own types are required (a list still fills a tuple)."""
    for where, field, value, kind in (
        ("server", "port", True, "integer"),
        ("llm", "threads", "2", "integer"),
        ("llm", "enabled", "false", "boolean"),
        ("llm", "enabled", 0, "boolean"),
    ):
        data = base()
        (data.setdefault("server", {}) if where == "server" else data["lanes"][where])[field] = value
        msg = error_of(data)
        # The value as the file writes it (true, "2"), not as Python would (True, '2').
        assert f"valid {kind}" in msg and f"(got {json.dumps(value)})" in msg, (field, value, msg)
    data = base()
    data["lanes"]["llm"]["aging_s"] = 5  # an integer where a number is asked is a number
    assert parse_config(data, TWO_CORES).lanes[Lane.LLM].aging_s == 5.0


def test_a_heartbeat_timeout_under_a_few_heartbeats_is_refused() -> None:
    """Workers report every 0.5 s: at 0.2 s every healthy idle worker was declared hung."""
    data = base()
    data["lanes"]["tts"]["heartbeat_timeout_s"] = 0.2
    assert "heartbeat_timeout_s" in error_of(data) and "2" in error_of(data)


def test_an_unknown_key_in_a_named_api_key_lists_what_is_allowed() -> None:
    data = base()
    data["server"] = {"api_keys": [{"name": "a", "key": "k" * 32, "rol": "user"}]}
    said = error_of(data)
    assert "api_keys.0.rol: unknown key 'rol'; did you mean 'role'? allowed here: name, key, role" in said
    assert "NamedKey" not in said and "k" * 32 not in said


def test_a_model_loaded_at_start_must_be_there_when_the_server_starts() -> None:
    from ris.config.checks import missing_model_problems

    smol = {"backend": "llama_cpp", "source": "/nonexistent/a.gguf"}
    later = {"backend": "llama_cpp", "source": "/nonexistent/b.gguf", "preload": False}
    data: dict[str, Any] = {
        "lanes": {
            "llm": {"cores": [0], "default_model": "a", "models": {"a": smol, "b": later}},
            "tts": {"enabled": False},
            "image": {"enabled": False},
        }
    }
    cfg = parse_config(data, TWO_CORES)  # the loader reads it: the files may be another machine's
    (problem,) = missing_model_problems(cfg)
    assert problem.startswith("lanes.llm.models.a.source: model source '/nonexistent/a.gguf'")
    assert "preload: false" in problem and "lanes.llm.enabled: false" in problem
    # On a cluster the files are the nodes' to have.
    assert (
        missing_model_problems(
            cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"engine": "ray"})})
        )
        == []
    )
    # A folder where one .gguf is loaded, and "" (read as the config's folder, which exists):
    # both passed, and the worker failed to load and was restarted for ever.
    data["lanes"]["llm"]["models"]["a"] = {"backend": "llama_cpp", "source": "/tmp"}
    (problem,) = missing_model_problems(parse_config(data, TWO_CORES))
    assert problem == (
        "lanes.llm.models.a.source: '/tmp' is a folder; the llama_cpp backend loads one .gguf file"
    )
    data["lanes"]["llm"]["models"]["a"] = {"backend": "llama_cpp", "source": ""}
    (problem,) = missing_model_problems(parse_config(data, TWO_CORES))
    assert problem.startswith("lanes.llm.models.a.source: this model needs a 'source' file or folder")
    data["lanes"]["llm"]["models"]["a"] = {"backend": "noop", "source": ""}  # reads none: as none
    assert missing_model_problems(parse_config(data, TWO_CORES)) == []


def test_the_machine_built_layout_leaves_out_embedded_models_not_installed() -> None:
    from ris.config.defaults import _installed
    from ris.config.schema import ModelSpec

    there = ModelSpec(backend="espeak")
    gone = ModelSpec(backend="piper", source="package:no_such_voice_pkg")
    assert _installed({"piper": gone, "espeak": there}) == {"espeak": there}


def test_model_options_are_checked_as_their_backend_reads_them() -> None:
    """`options` passed the loader whatever they held: "n_ctx": "big" failed as a traceback of
    the memory estimate, -5 as a worker restarted forever, "default_steps": 0 as every image's
    ZeroDivisionError; a Piper voice took any key silently."""
    data = base()
    data["lanes"]["llm"]["models"]["m"]["options"] = {"n_ctx": "big", "flash_attn": "yes", "chat_format": "x"}
    said = error_of(data)
    assert "lanes.llm.models.m.options.n_ctx: Input should be a valid integer (got 'big')" in said, said
    assert "lanes.llm.models.m.options.flash_attn:" in said and "chat_format" not in said  # Llama's own
    data["lanes"]["llm"]["models"]["m"]["options"] = {"n_ctx": -5}
    assert "options.n_ctx: Input should be greater than or equal to 64 (got -5)" in error_of(data)
    data["lanes"]["llm"]["models"]["m"]["options"] = {"type_k": 8, "type_v": 8}  # q8_0, as Llama takes it
    assert parse_config(data, TWO_CORES).lanes[Lane.LLM].models["m"].options["type_k"] == 8
    # A name Llama does not take (read from its source, not imported): said here with the
    # nearest, not only by a worker that failed to load and was restarted for ever.
    data["lanes"]["llm"]["models"]["m"]["options"] = {"n_ctxx": 4096, "use_mmap": True}
    said = error_of(data)
    assert "options.n_ctxx: not an option of llama.cpp" in said and "did you mean 'n_ctx'?" in said, said
    assert "use_mmap" not in said  # Llama's own
    # One RIS sets itself passed, and the worker raised "got multiple values" at every start;
    # a KV type llama.cpp does not have aborted it (SIGABRT) at every start.
    data["lanes"]["llm"]["models"]["m"]["options"] = {"n_threads": 2, "type_k": 999}
    said = error_of(data)
    assert "options.n_threads: set by RIS itself, not an option here (use lanes.llm.threads)" in said, said
    data["lanes"]["llm"]["models"]["m"]["options"] = {"type_k": 999}
    assert "options.type_k: Input should be 0, 1, 2, 3, 6, 7, 8 or 30" in error_of(data)
    data["lanes"]["llm"]["models"]["m"]["options"] = {"n_ctxx": 4096}
    # On a cluster the nodes' llama-cpp-python reads them, which may be another version.
    parse_config({**data, "cluster": {"engine": "ray", "address": "10.0.0.1:6379"}}, TWO_CORES)
    data = base()
    data["lanes"]["tts"]["models"]["e"]["options"] = {"voice": "nope"}
    assert "lanes.tts.models.e.options.voice: the espeak backend takes no option 'voice'" in error_of(data)
    data = base()
    data["lanes"]["image"] = {
        "enabled": True,
        "priority_class": "batch",
        "default_model": "i",
        "models": {"i": {"backend": "diffusers", "source": "/x", "options": {"default_steps": 0}}},
    }
    assert "options.default_steps: Input should be greater than or equal to 1 (got 0)" in error_of(data)
    data["lanes"]["image"]["models"]["i"]["options"] = {"default_steps": 8, "default_guidance": -5}
    assert "options.default_guidance: Input should be greater than or equal to 0" in error_of(data)
    # A dtype torch does not have, an architecture the loader does not know: said here, not by
    # an image worker restarted for ever (dtype) or loading the file as SD 1.5 (arch "sd3").
    data["lanes"]["image"]["models"]["i"]["options"] = {"dtype": "float99", "arch": "sd3"}
    said = error_of(data)
    assert "options.dtype: Input should be 'float32', 'float16', 'bfloat16'" in said, said
    assert "options.arch: Input should be 'sd15' or 'sdxl' (got 'sd3')" in said, said


def test_two_backends_driving_libespeak_in_one_lane_are_refused_when_the_config_loads() -> None:
    """espeak and pyttsx3 in one TTS lane passed `ris config` and `ris serve` started a worker
    that failed to load and was restarted for ever, the lane never ready."""
    data = base()
    data["lanes"]["tts"]["models"]["p"] = {"backend": "pyttsx3"}
    said = error_of(data)
    assert (
        "lanes.tts.models: the 'espeak' and 'pyttsx3' backends both drive libespeak-ng, whose "
        "state is per process: configure one of them per TTS lane" in said
    ), said
    del data["lanes"]["tts"]["models"]["e"]
    data["lanes"]["tts"]["default_model"] = "p"
    assert "p" in parse_config(data, TWO_CORES).lanes[Lane.TTS].models  # either one alone is fine


def test_more_threads_than_a_lanes_cores_is_refused() -> None:
    """64 threads on one core: 16 tokens took 1.05 s against 0.30 s, and nothing said why."""
    data = base()
    data["lanes"]["llm"]["threads"] = 64
    assert "lanes.llm.threads: 64 on 1 core(s) [0]" in error_of(data)
    data["lanes"]["llm"]["threads"] = 1
    assert parse_config(data, TWO_CORES).lanes[Lane.LLM].threads == 1


def test_ris_config_prints_no_key_and_its_placeholder_is_refused_as_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ris config` printed every bearer key to the terminal (and to any log or ticket it went to)."""
    from ris.cli import main

    data = json.loads(Path("config.json").read_text())
    data["server"]["api_keys"] = ["plain-secret-1", {"name": "ann", "key": "ann-secret-2"}]
    given = tmp_path / "config.json"
    given.write_text(json.dumps(data))
    assert main(["config", "--config", str(given)]) == 0
    out, err = capsys.readouterr()
    assert "secret" not in out and "2 API key(s) shown as 'REDACTED'; --show-keys" in err
    printed = json.loads(out)
    assert printed["server"]["api_keys"] == ["REDACTED", {"name": "ann", "key": "REDACTED", "role": "user"}]
    # Loading what was printed does not serve with a key everyone has read.
    said = error_of(printed)
    assert "entry 0 is 'REDACTED', what `ris config` prints in place of a key" in said, said
    assert main(["config", "--config", str(given), "--show-keys"]) == 0
    assert json.loads(capsys.readouterr().out)["server"]["api_keys"][0] == "plain-secret-1"
    # A key no client can send as written (curl got 401, httpx refused the header): refused here.
    for unsendable in (" spaced-key ", "clé-secrète", "tab\tkey"):
        data["server"]["api_keys"] = ["fine-key", unsendable]
        said = error_of(data)
        assert "entry 1 has a space or a character outside visible ASCII" in said, said
        assert unsendable.strip() not in said  # never the secret itself


def test_a_server_of_several_keys_keeps_one_from_filling_a_queue() -> None:
    """One key filled the image queue and every other key met 429 for a day; one person's box
    (no key, or one) keeps its whole queue."""
    data = base()
    assert parse_config(data, TWO_CORES).lane(Lane.LLM).policy(keys=0).client_queue_share == 1.0
    assert parse_config(data, TWO_CORES).lane(Lane.LLM).policy(keys=1).client_queue_share == 1.0
    assert parse_config(data, TWO_CORES).lane(Lane.LLM).policy(keys=2).client_queue_share == 0.5
    data["lanes"]["llm"]["client_queue_share"] = 0.25
    assert parse_config(data, TWO_CORES).lane(Lane.LLM).policy(keys=0).client_queue_share == 0.25


def test_a_server_memory_ceiling_below_what_the_api_process_holds_is_refused() -> None:
    """100 MiB: the API process holds about that idle; /ready said true while every POST got
    503 server_memory_full."""
    data = base()
    data["server"] = {"memory_limit_mb": 100}
    assert "server.memory_limit_mb: 100 MiB is less than the API process holds" in error_of(data)
    for fine in (0, 256):
        data["server"] = {"memory_limit_mb": fine}
        assert parse_config(data, TWO_CORES).server.memory_limit_mb == fine


def test_a_hand_edited_file_is_told_what_json_does_not_allow(tmp_path: Path) -> None:
    """A key given twice (the last won, unsaid), a comment, a trailing comma, an empty file:
    each said in the file's own terms (an outside CLI user's run)."""
    from ris.config.load import load_config

    cases = {
        '{"server": {"port": 8080, "port": 8081}}': "the key 'port' is given twice in one object",
        '{\n  // the port\n  "server": {}\n}': "(JSON has no comments: remove it)",
        '{"server": {"port": 8080,}}': "(JSON allows no comma after the last item)",
        "  \n": "the file is empty; `ris config > config.json` writes one",
    }
    path = tmp_path / "config.json"
    for text, said in cases.items():
        path.write_text(text)
        with pytest.raises(ConfigError) as exc:
            load_config(path, TWO_CORES)
        assert said in str(exc.value), (text, str(exc.value))
    path.write_text('{"lanes": {"llm": {"thread": 1}}}')
    with pytest.raises(ConfigError, match="unknown key 'thread'; did you mean 'threads'"):
        load_config(path, TWO_CORES)


def test_a_host_with_a_scheme_or_a_port_is_refused_as_such() -> None:
    """ "http://127.0.0.1" was refused as exposing the service without keys, "localhost:8080"
    as an unknown name (an outside CLI user's run)."""
    for host, said in (
        ("http://127.0.0.1", "is a URL"),
        ("localhost:8080", "has a port"),
        ("1.2.3.4:80", "has a port"),
    ):
        data = base()
        data["server"] = {"host": host}
        assert said in error_of(data), host
    for host in ("::", "::1", "[::1]", "0.0.0.0", "box.example", "fe80::1%eth0"):
        data = base()
        data["server"] = {"host": host, "api_keys": ["k" * 32]}
        parse_config(data, TWO_CORES)


def test_a_lane_given_without_models_says_where_to_start() -> None:
    data = base()
    data["lanes"]["tts"] = {"cores": [1]}
    assert "`ris config` prints this machine's layout" in error_of(data)


def test_keys_short_enough_to_guess_are_said_at_start() -> None:
    from ris.api.security import short_key_hint

    data = base()
    data["server"] = {"api_keys": ["k" * 32, "short", {"name": "bob", "key": "tiny"}]}
    hint = short_key_hint(parse_config(data, TWO_CORES)) or ""
    assert (
        "entry 1, 'bob' are shorter than 16 characters" in hint and "short" not in hint.split("are")[0][:40]
    )
    data["server"] = {"api_keys": ["k" * 32]}
    assert short_key_hint(parse_config(data, TWO_CORES)) is None


def test_settings_that_do_nothing_where_they_are_are_said(caplog: pytest.LogCaptureFixture) -> None:
    """Each was taken in silence, and its writer believed it in force (a CLI user's run)."""
    data = base()
    data["lanes"]["llm"]["gpu_memory_gb"] = 4
    data["lanes"]["llm"]["preemption"] = {"policy": "step"}
    data["lanes"]["image"] = {
        "cores": [0, 1],
        "priority_class": "batch",
        "models": {"i": {"backend": "diffusers", "source": "/sd"}},
        "preemption": {"yield_to": ["tts"]},
    }
    data["lanes"]["tts"]["enabled"] = False
    with caplog.at_level("WARNING", logger="ris.config"):
        parse_config(data, TWO_CORES)
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "lanes.llm.gpu_memory_gb has no effect: the lane runs on the CPU (device 'cpu')",
        "lanes.llm.preemption has no effect: only the image lane yields to others",
        "lanes.image.preemption.yield_to: the tts lane is disabled; nothing to yield to",
        "lanes.image.default_model is not set: a request that names no model is refused (models: i)",
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="ris.config"):
        parse_config(base(), TWO_CORES)  # nothing idle: nothing said
        default_config(TWO_CORES)
    assert caplog.text == ""


def test_memory_ceilings_the_machine_cannot_give_are_said(caplog: pytest.LogCaptureFixture) -> None:
    """A 4,000 MiB LLM ceiling on a 1.5 GiB machine passed every check: the kernel's OOM
    killer, not RIS, then stopped the worker on its first big load."""
    small = MachineInfo(cores=(0, 1), gpus=0, memory_bytes=1536 * 2**20)
    with caplog.at_level("INFO", logger="ris.config"):
        parse_config(base(), small)
    # The defaults (shares of the machine) add up to more than it has: said, not warned.
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    assert "the memory ceilings add up to 3,354 MiB (llm 922 MiB, tts 384 MiB" in caplog.text
    assert "more than the machine's 1,536 MiB" in caplog.text and "worker first" not in caplog.text
    caplog.clear()
    data = base()
    data["lanes"]["llm"]["memory_limit_mb"] = 4000
    with caplog.at_level("INFO", logger="ris.config"):
        parse_config(data, small)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2, warned
    assert "lanes.llm.memory_limit_mb 4000 is above the machine's memory (1,536 MiB)" in warned[0]
    assert warned[1].endswith("lanes.llm.memory_limit_mb raised above the default share")
    # A ceiling written below its default share cannot be why the sum is over: no warning;
    # nor the default as `ris config` prints it (922 MiB: 60% of 1,536 is 921.6).
    caplog.clear()
    data["lanes"]["llm"]["memory_limit_mb"] = 922
    with caplog.at_level("INFO", logger="ris.config"):
        parse_config(data, small)
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    caplog.clear()
    data["lanes"]["llm"]["memory_limit_mb"] = 256
    with caplog.at_level("INFO", logger="ris.config"):
        parse_config(data, small)
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="ris.config"):
        parse_config(base(), MachineInfo(cores=(0, 1), gpus=0, memory_bytes=64 * 2**30))
    assert "within the machine's 65,536 MiB" in caplog.text
