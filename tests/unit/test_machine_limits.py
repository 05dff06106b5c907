"""A container's limits are the machine's: its cgroup CPU quota (docker --cpus) and memory limit
(docker --memory), read from cgroup v2 and v1 files as the kernel writes them."""

from __future__ import annotations

from pathlib import Path

from ris.config.defaults import default_config
from ris.machine import MachineInfo, cpu_quota, limiting_quota, memory_limit


def _files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return root


def test_cgroup_v2_quota_and_memory_in_a_container(tmp_path: Path) -> None:
    root = _files(tmp_path, {"cpu.max": "200000 100000", "memory.max": "8589934592"})
    assert cpu_quota(root, "0::/") == 2.0 and memory_limit(root, "0::/") == 8 * 2**30
    unlimited = _files(tmp_path / "none", {"cpu.max": "max 100000", "memory.max": "max"})
    assert cpu_quota(unlimited, "0::/") is None and memory_limit(unlimited, "0::/") is None


def test_cgroup_v2_the_processs_own_group_first(tmp_path: Path) -> None:
    """A service under systemd (CPUQuota=150%, MemoryMax=4G): its own group's files."""
    root = _files(
        tmp_path,
        {
            "system.slice/ris.service/cpu.max": "150000 100000",
            "system.slice/ris.service/memory.max": "4294967296",
            "cpu.max": "max 100000",
        },
    )
    own = "0::/system.slice/ris.service"
    assert cpu_quota(root, own) == 1.5 and memory_limit(root, own) == 4 * 2**30


def test_cgroup_v1_quota_and_memory(tmp_path: Path) -> None:
    root = _files(
        tmp_path,
        {
            "cpu,cpuacct/cpu.cfs_quota_us": "50000",
            "cpu,cpuacct/cpu.cfs_period_us": "100000",
            "memory/memory.limit_in_bytes": "9223372036854771712",  # v1's "no limit"
        },
    )
    own = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n"
    assert cpu_quota(root, own) == 0.5 and memory_limit(root, own) is None
    none = _files(tmp_path / "n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert cpu_quota(none, "1:cpu:/") is None
    assert cpu_quota(tmp_path / "missing", "0::/") is None  # no cgroup files: no limit


def test_a_quota_of_two_cpus_lays_out_two_cores_and_any_core_may_still_be_named() -> None:
    """64 cores of affinity under --cpus=2: the default layout is a 2-core machine's (1 LLM
    thread, 1 TTS thread), where it was 48 + 16 threads on 2 CPUs of time; a quota limits time,
    not which cores run, so a config naming cores 8-11 still starts, its lanes at 2 threads."""
    from ris.config.load import parse_config

    cores = tuple(range(64))
    assert limiting_quota(cores, 2.0) == 2.0 and limiting_quota(tuple(range(8)), 16.0) is None
    machine = MachineInfo(cores=cores, gpus=0, cpu_quota=2.5)
    assert machine.cpus == 3 and machine.layout_cores == (0, 1, 2)  # a part of a CPU: a core's worth
    machine = MachineInfo(cores=cores, gpus=0, cpu_quota=2.0)
    cfg = default_config(machine)
    assert cfg.lane("llm").cores == (0,) and cfg.lane("tts").cores == (1,)
    named = {
        "lanes": {
            "llm": {"cores": [8, 9, 10, 11], "default_model": "n", "models": {"n": {"backend": "noop"}}},
            "tts": {"cores": [12], "default_model": "e", "models": {"e": {"backend": "espeak"}}},
            "image": {"enabled": False, "priority_class": "batch"},
        }
    }
    llm = parse_config(named, machine).lane("llm")
    assert llm.cores == (8, 9, 10, 11) and llm.effective_threads(machine) == 2
