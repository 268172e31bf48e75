"""Wall and CPU seconds per named stage of a job (the audit's ``timings``, the scaling benchmarks)."""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process, all its threads, and its children that have exited."""
    own = time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own + children.ru_utime + children.ru_stime


@dataclass
class StageTimer:
    """Collects ``{stage: {"wall_s", "cpu_s"}}``; a stage timed twice adds up."""

    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name` (also when it raises)."""
        wall, cpu = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            entry = self.stages.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["wall_s"] = round(entry["wall_s"] + time.perf_counter() - wall, 3)
            entry["cpu_s"] = round(entry["cpu_s"] + cpu_seconds() - cpu, 3)

    def wall(self) -> dict[str, float]:
        """Wall seconds per stage."""
        return {name: entry["wall_s"] for name, entry in self.stages.items()}
