"""What each actor of a Ray embedding job did: its start-up, its batches, its CPU, and how much of the
job's time every actor was busy at once; the numbers that say whether adding actors can speed a job up,
whatever else the machine is running.

Each `EmbedActor` batch reports its process id, wall start and end (``time.time``, comparable across
the processes of one node) and the process CPU seconds it used; `RayJobStats.from_batches` sums them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ActorStats:
    """One actor: its start-up (process, imports, model load) and its share of the batches."""

    pid: int
    startup_wall_s: float
    startup_cpu_s: float
    startup_imports: int  # modules its worker imported after the preload, up to the model (-1: no preload)
    batches: int
    images: int
    busy_s: float  # wall seconds inside batches
    cpu_s: float  # process CPU seconds inside batches (every thread of the actor)

    @property
    def cpu_ms_per_image(self) -> float:
        """Process CPU milliseconds per image embedded (decode + model)."""
        return 1000 * self.cpu_s / self.images if self.images else 0.0


@dataclass(frozen=True)
class RayJobStats:
    """Per-actor stats of one job and the fraction of its busy time that every actor was busy at once."""

    actors: list[ActorStats] = field(default_factory=list)
    all_busy_fraction: float = 0.0  # of the time at least one actor was inside a batch
    busy_span_s: float = 0.0  # first batch start to last batch end

    @classmethod
    def from_batches(cls, rows: list[tuple]) -> RayJobStats:
        """`rows`: (pid, start, end, cpu_s, images, startup_wall_s, startup_cpu_s, startup_imports) of
        each batch."""
        if not rows:
            return cls()
        per: dict[int, dict] = {}
        for pid, start, end, cpu, images, boot_wall, boot_cpu, boot_imports in rows:
            boot = (boot_wall, boot_cpu, int(boot_imports))
            actor = per.setdefault(int(pid), {"boot": boot, "spans": [], "images": 0, "cpu": 0.0})
            actor["spans"].append((start, end))
            actor["images"] += int(images)
            actor["cpu"] += cpu
        actors = [
            ActorStats(
                pid=pid,
                startup_wall_s=round(a["boot"][0], 3),
                startup_cpu_s=round(a["boot"][1], 3),
                startup_imports=a["boot"][2],
                batches=len(a["spans"]),
                images=a["images"],
                busy_s=round(sum(end - start for start, end in a["spans"]), 3),
                cpu_s=round(a["cpu"], 3),
            )
            for pid, a in sorted(per.items())
        ]
        spans = [sorted(a["spans"]) for a in per.values()]
        every = [s for actor in spans for s in actor]
        any_s = _length(_union(every))
        all_s = _length(_intersection([_union(actor) for actor in spans]))
        span = max(end for _, end in every) - min(start for start, _ in every)
        return cls(actors, round(all_s / any_s, 3) if any_s else 0.0, round(span, 3))

    def to_dict(self) -> dict:
        """JSON-ready, with each actor's CPU ms per image."""
        return {
            "actors": [{**asdict(a), "cpu_ms_per_image": round(a.cpu_ms_per_image, 3)} for a in self.actors],
            "all_busy_fraction": self.all_busy_fraction,
            "busy_span_s": self.busy_span_s,
        }


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _intersection(unions: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    common = unions[0]
    for other in unions[1:]:
        common = [(max(a, c), min(b, d)) for a, b in common for c, d in other if max(a, c) < min(b, d)]
    return common


def _length(spans: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in spans)
