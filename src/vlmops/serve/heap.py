"""Keep the garbage collector off the start-up heap of a server process.

A worker holds ~460,000 objects once its model, libraries and app are loaded (bench/RESULTS.md, issue
15), and each full collection walks them all: ~150-450 ms on 2 cores, during which the worker's event
loop, /healthz included, answers nothing. The start-up heap lives as long as the process, so it is
collected once and frozen (`gc.freeze`): later full collections walk only what serving allocated.
"""

from __future__ import annotations

import gc

_frozen = False


def freeze_startup_heap() -> None:
    """Collect the start-up garbage once, then move every live object out of the collector's reach.

    Once per process (the first gateway start): a process that starts several apps (tests) pays the
    collection once.
    """
    global _frozen
    if _frozen:
        return
    gc.collect()
    gc.freeze()
    _frozen = True
