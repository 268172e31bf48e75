"""Wall and CPU seconds and peak memory per named stage of a job (the audit's ``timings``, the scaling
benchmarks)."""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process, all its threads, and its children that have exited."""
    own = time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + children.ru_utime + children.ru_stime


def _status_mib(key: str) -> float | None:
    """A ``kB`` line of /proc/self/status (VmHWM, VmRSS) in MiB; None where there is no procfs."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS mark (VmHWM) at the current RSS; False where that is unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB since the last `reset_peak_rss` (or since it started)."""
    peak = _status_mib("VmHWM")
    if peak is None:  # no procfs: the lifetime peak, an upper bound of any stage's
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak


def rss_mib() -> float | None:
    """Resident memory of this process now, in MiB (None without procfs)."""
    return _status_mib("VmRSS")


@dataclass
class StageTimer:
    """Collects ``{stage: {"wall_s", "cpu_s", "peak_rss_mib", "rss_end_mib"}}`` (a stage timed twice adds
    up its seconds and keeps the larger peak and the last end).

    ``peak_rss_mib`` is the process's peak resident memory during the stage: the kernel's high-water mark
    is reset as the stage starts (``/proc/self/clear_refs``), so it is the stage's own peak, not the
    process's lifetime one; where it cannot be reset it is the lifetime peak (an upper bound). A stage
    inside another one passes its peak on to the outer one. ``rss_end_mib`` is what the process holds
    when the stage ends, i.e. what the stage kept.
    """

    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    _open: list[list[float]] = field(default_factory=list, repr=False)  # peak so far of each open stage

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name` and record its peak RSS (also when it raises)."""
        if self._open:  # the outer stage's peak up to here, before the reset loses it
            self._open[-1][0] = max(self._open[-1][0], peak_rss_mib())
        reset_peak_rss()
        mark = [0.0]
        self._open.append(mark)
        wall, cpu = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            self._open.pop()
            peak = max(mark[0], peak_rss_mib())
            if self._open:
                self._open[-1][0] = max(self._open[-1][0], peak)
            entry = self.stages.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "peak_rss_mib": 0.0})
            entry["wall_s"] = round(entry["wall_s"] + time.perf_counter() - wall, 3)
            entry["cpu_s"] = round(entry["cpu_s"] + cpu_seconds() - cpu, 3)
            entry["peak_rss_mib"] = round(max(entry["peak_rss_mib"], peak), 1)
            end = rss_mib()
            entry["rss_end_mib"] = round(end if end is not None else peak, 1)

    def wall(self) -> dict[str, float]:
        """Wall seconds per stage."""
        return {name: entry["wall_s"] for name, entry in self.stages.items()}
