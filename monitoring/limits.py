"""Container-aware limits: the memory budget, CPU capacity and pressure files.

The memory budget is resolved in a fixed order and the winner is reported:
``VIGIL_GOVERNOR_MEMORY_LIMIT_MB`` -> cgroup v2 ``memory.max`` -> cgroup v1
``memory.limit_in_bytes`` (>= 2**62 means unlimited) -> ``MemTotal``. A cgroup
limit larger than the machine's memory loses to ``MemTotal``. Every reader
takes the ``/proc`` and cgroup roots as parameters so tests run against fake
trees in tmp dirs (the prometheus/client_python habit).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

UNLIMITED_BYTES = 2**62
MB = 1024 * 1024
PROC_ROOT = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class MemoryBudget:
    """How many MB Vigil may use, and where that number came from."""

    mb: float
    source: str  # "setting" | "cgroup_v2" | "cgroup_v1" | "meminfo" | "unknown"
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CpuCapacity:
    """How many CPUs Vigil may use (a cgroup quota may make it fractional)."""

    cores: float
    source: str  # "cgroup_v2" | "cgroup_v1" | "affinity" | "cpu_count"


@dataclass(frozen=True, slots=True)
class PressureFiles:
    """Where PSI numbers come from; ``scope`` is "cgroup", "host" or "none"."""

    cpu: Path | None
    memory: Path | None
    scope: str


def cgroup_membership(proc_root: Path = PROC_ROOT, pid: str = "self") -> dict[str, str]:
    """Parse ``/proc/<pid>/cgroup``: {"v2": path, "<controller>": path}."""
    try:
        text = (proc_root / pid / "cgroup").read_text(encoding="utf-8")
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            found["v2"] = path or "/"
        for name in controllers.split(","):
            if name:
                found[name] = path or "/"
    return found


def _walk_up(base: Path, rel: str) -> list[Path]:
    """``base/a/b``, ``base/a``, ``base``: the cgroup and its ancestors.

    In a container the mount is often the container's own cgroup while
    ``/proc/self/cgroup`` still names the host path, so the walk ends at the
    mount root.
    """
    parts = [p for p in rel.strip("/").split("/") if p and p != ".."]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def read_small(path: str | Path) -> bytes | None:
    """One small /proc or cgroup file in one read (no buffered-IO objects: it is hot)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_text(path: Path) -> str | None:
    data = read_small(path)
    return None if data is None else data.decode("utf-8", "replace").strip()


def _smallest_limit(files: list[Path], *, unlimited: str | None = None) -> tuple[int, Path] | None:
    best: tuple[int, Path] | None = None
    for path in files:
        text = _read_text(path)
        if text is None or text == unlimited:
            continue
        try:
            value = int(text)
        except ValueError:
            continue
        if 0 < value < UNLIMITED_BYTES and (best is None or value < best[0]):
            best = (value, path)
    return best


def cgroup_v2_memory_limit(proc_root: Path, cgroup_root: Path) -> tuple[int, Path] | None:
    rel = cgroup_membership(proc_root).get("v2")
    if rel is None:
        return None
    files = [d / "memory.max" for d in _walk_up(cgroup_root, rel)]
    files += [d / "memory.max" for d in _walk_up(cgroup_root / "unified", rel)]
    return _smallest_limit(files, unlimited="max")


def cgroup_v1_memory_limit(proc_root: Path, cgroup_root: Path) -> tuple[int, Path] | None:
    rel = cgroup_membership(proc_root).get("memory")
    if rel is None:
        return None
    files = [d / "memory.limit_in_bytes" for d in _walk_up(cgroup_root / "memory", rel)]
    return _smallest_limit(files)


def meminfo_total_bytes(proc_root: Path = PROC_ROOT) -> int | None:
    text = _read_text(proc_root / "meminfo")
    for line in (text or "").splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            try:
                return int(fields[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None


def resolve_memory_budget(
    limit_mb: float | None,
    *,
    proc_root: Path = PROC_ROOT,
    cgroup_root: Path = CGROUP_ROOT,
) -> MemoryBudget:
    """The memory budget in the documented order of precedence."""
    if limit_mb is not None:
        return MemoryBudget(float(limit_mb), "setting", "VIGIL_GOVERNOR_MEMORY_LIMIT_MB")
    total = meminfo_total_bytes(proc_root)
    for source, reader in (
        ("cgroup_v2", cgroup_v2_memory_limit),
        ("cgroup_v1", cgroup_v1_memory_limit),
    ):
        found = reader(proc_root, cgroup_root)
        if found is not None and (total is None or found[0] < total):
            return MemoryBudget(found[0] / MB, source, str(found[1]))
    if total is not None:
        return MemoryBudget(total / MB, "meminfo", str(proc_root / "meminfo"))
    log.warning("no memory limit found (no cgroup limit, no %s/meminfo)", proc_root)
    return MemoryBudget(1024.0, "unknown", "assumed 1024 MB")


def _quota_cores(text: str | None) -> float | None:
    """``"50000 100000"`` (cgroup v2 cpu.max) -> 0.5; ``"max ..."`` -> None."""
    if not text:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def resolve_cpu_capacity(
    *, proc_root: Path = PROC_ROOT, cgroup_root: Path = CGROUP_ROOT
) -> CpuCapacity:
    """CPUs available to Vigil: cgroup quota, else affinity, else cpu_count."""
    member = cgroup_membership(proc_root)
    if "v2" in member:
        for directory in _walk_up(cgroup_root, member["v2"]):
            cores = _quota_cores(_read_text(directory / "cpu.max"))
            if cores:
                return CpuCapacity(cores, "cgroup_v2")
    if "cpu" in member:
        for mount in ("cpu", "cpu,cpuacct"):
            for directory in _walk_up(cgroup_root / mount, member["cpu"]):
                quota = _read_text(directory / "cpu.cfs_quota_us")
                period = _read_text(directory / "cpu.cfs_period_us")
                cores = _quota_cores(f"{quota} {period}" if quota and period else None)
                if cores:
                    return CpuCapacity(cores, "cgroup_v1")
    if hasattr(os, "sched_getaffinity") and proc_root == PROC_ROOT:
        return CpuCapacity(float(len(os.sched_getaffinity(0))), "affinity")
    return CpuCapacity(float(os.cpu_count() or 1), "cpu_count")


def resolve_pressure_files(
    *, proc_root: Path = PROC_ROOT, cgroup_root: Path = CGROUP_ROOT
) -> PressureFiles:
    """Our cgroup's PSI files when we are in a non-root v2 cgroup, else the host's."""
    rel = cgroup_membership(proc_root).get("v2", "/")
    if rel.strip("/"):
        for base in (cgroup_root, cgroup_root / "unified"):
            directory = _walk_up(base, rel)[0]
            if (directory / "cpu.pressure").exists():
                memory = directory / "memory.pressure"
                return PressureFiles(
                    directory / "cpu.pressure", memory if memory.exists() else None, "cgroup"
                )
    host = proc_root / "pressure"
    if (host / "cpu").exists():
        memory = host / "memory"
        return PressureFiles(host / "cpu", memory if memory.exists() else None, "host")
    return PressureFiles(None, None, "none")


def read_pressure(path: Path | None) -> float | None:
    """The ``some avg10`` percentage of a PSI file, or None."""
    if path is None:
        return None
    text = _read_text(path)
    for line in (text or "").splitlines():
        if line.startswith("some "):
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "avg10":
                    try:
                        return float(value)
                    except ValueError:
                        return None
    return None
