"""The closed-loop demo (`vlmops demo`): the whole stack run once on the embedded defaults."""

from vlmops.demo.loop import DemoSizes, run_loop, write_story

__all__ = ["DemoSizes", "run_loop", "write_story"]
