"""Memory budget, CPU capacity and PSI files from fake /proc and cgroup trees."""

from __future__ import annotations

from pathlib import Path

from monitoring.limits import (
    read_pressure,
    resolve_cpu_capacity,
    resolve_memory_budget,
    resolve_pressure_files,
)

GB = 1024**3


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def fake_tree(tmp_path: Path, cgroup_lines: str, mem_total_kb: int | None = 4 * 1024 * 1024):
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    write(proc / "self" / "cgroup", cgroup_lines)
    if mem_total_kb is not None:
        write(proc / "meminfo", f"MemTotal:       {mem_total_kb} kB\nMemFree: 1 kB\n")
    cgroup.mkdir(parents=True, exist_ok=True)
    return proc, cgroup


def test_cgroup_v2_memory_max_wins_and_the_smallest_ancestor_counts(tmp_path: Path) -> None:
    proc, cg = fake_tree(tmp_path, "0::/vigil.slice/app.service\n")
    write(cg / "vigil.slice" / "app.service" / "memory.max", "max\n")
    write(cg / "vigil.slice" / "memory.max", str(512 * 1024 * 1024))
    budget = resolve_memory_budget(None, proc_root=proc, cgroup_root=cg)
    assert (budget.mb, budget.source) == (512.0, "cgroup_v2")
    assert budget.detail.endswith("vigil.slice/memory.max")


def test_cgroup_v2_unlimited_falls_back_to_memtotal(tmp_path: Path) -> None:
    proc, cg = fake_tree(tmp_path, "0::/\n")
    write(cg / "memory.max", "max\n")
    budget = resolve_memory_budget(None, proc_root=proc, cgroup_root=cg)
    assert (budget.mb, budget.source) == (4096.0, "meminfo")


def test_cgroup_v1_limit_in_a_container_mount(tmp_path: Path) -> None:
    # /proc/self/cgroup names the host path; the mount is the container's own cgroup
    proc, cg = fake_tree(tmp_path, "4:memory:/docker/abc123\n3:cpu,cpuacct:/docker/abc123\n")
    write(cg / "memory" / "memory.limit_in_bytes", str(256 * 1024 * 1024))
    budget = resolve_memory_budget(None, proc_root=proc, cgroup_root=cg)
    assert (budget.mb, budget.source) == (256.0, "cgroup_v1")


def test_cgroup_v1_huge_value_means_unlimited(tmp_path: Path) -> None:
    proc, cg = fake_tree(tmp_path, "4:memory:/user.slice\n")
    write(cg / "memory" / "user.slice" / "memory.limit_in_bytes", "9223372036854771712")
    write(cg / "memory" / "memory.limit_in_bytes", "9223372036854771712")
    budget = resolve_memory_budget(None, proc_root=proc, cgroup_root=cg)
    assert budget.source == "meminfo"


def test_a_cgroup_limit_above_the_ram_loses_to_memtotal(tmp_path: Path) -> None:
    proc, cg = fake_tree(tmp_path, "0::/app\n")
    write(cg / "app" / "memory.max", str(64 * GB))
    budget = resolve_memory_budget(None, proc_root=proc, cgroup_root=cg)
    assert budget.source == "meminfo"


def test_no_cgroup_at_all_uses_memtotal_and_nothing_at_all_is_reported(tmp_path: Path) -> None:
    proc, cg = fake_tree(tmp_path, "")
    assert resolve_memory_budget(None, proc_root=proc, cgroup_root=cg).source == "meminfo"
    proc, cg = fake_tree(tmp_path / "bare", "", mem_total_kb=None)
    budget = resolve_memory_budget(None, proc_root=proc, cgroup_root=cg)
    assert budget.source == "unknown" and budget.mb > 0


def test_the_setting_beats_every_cgroup(tmp_path: Path) -> None:
    proc, cg = fake_tree(tmp_path, "0::/app\n")
    write(cg / "app" / "memory.max", str(512 * 1024 * 1024))
    budget = resolve_memory_budget(300.0, proc_root=proc, cgroup_root=cg)
    assert (budget.mb, budget.source) == (300.0, "setting")


def test_hybrid_v2_without_memory_controller_uses_v1(tmp_path: Path) -> None:
    proc, cg = fake_tree(tmp_path, "4:memory:/job\n0::/\n")
    write(cg / "unified" / "cgroup.controllers", "")
    write(cg / "memory" / "job" / "memory.limit_in_bytes", str(1 * GB))
    budget = resolve_memory_budget(None, proc_root=proc, cgroup_root=cg)
    assert (budget.mb, budget.source) == (1024.0, "cgroup_v1")


def test_cpu_capacity_from_quotas(tmp_path: Path) -> None:
    proc, cg = fake_tree(tmp_path, "0::/app\n")
    write(cg / "app" / "cpu.max", "150000 100000\n")
    cpu = resolve_cpu_capacity(proc_root=proc, cgroup_root=cg)
    assert (cpu.cores, cpu.source) == (1.5, "cgroup_v2")
    proc, cg = fake_tree(tmp_path / "v1", "3:cpu,cpuacct:/job\n")
    write(cg / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "50000")
    write(cg / "cpu,cpuacct" / "job" / "cpu.cfs_period_us", "100000")
    cpu = resolve_cpu_capacity(proc_root=proc, cgroup_root=cg)
    assert (cpu.cores, cpu.source) == (0.5, "cgroup_v1")
    proc, cg = fake_tree(tmp_path / "none", "0::/app\n")
    write(cg / "app" / "cpu.max", "max 100000\n")
    assert resolve_cpu_capacity(proc_root=proc, cgroup_root=cg).source == "cpu_count"


def test_pressure_prefers_our_cgroup_then_the_host(tmp_path: Path) -> None:
    psi = (
        "some avg10=12.50 avg60=3.00 avg300=1.00 total=1\n"
        "full avg10=1.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    proc, cg = fake_tree(tmp_path, "0::/app\n")
    write(cg / "app" / "cpu.pressure", psi)
    write(proc / "pressure" / "cpu", psi.replace("12.50", "99.00"))
    files = resolve_pressure_files(proc_root=proc, cgroup_root=cg)
    assert files.scope == "cgroup" and read_pressure(files.cpu) == 12.5
    assert files.memory is None and read_pressure(files.memory) is None
    proc, cg = fake_tree(tmp_path / "host", "0::/\n")
    write(proc / "pressure" / "cpu", psi)
    write(proc / "pressure" / "memory", psi.replace("12.50", "2.25"))
    files = resolve_pressure_files(proc_root=proc, cgroup_root=cg)
    assert files.scope == "host" and read_pressure(files.memory) == 2.25
    proc, cg = fake_tree(tmp_path / "none", "")
    assert resolve_pressure_files(proc_root=proc, cgroup_root=cg).scope == "none"
