"""What one chat exchange's log commit costs the answer that waits for it: `PredictionLog.write_chat`
(INSERTs compiled once, run on the DBAPI cursor) against the same rows through SQLAlchemy's
``conn.execute(table.insert(), rows)`` (what it did before), interleaved, one exchange per commit.

``--gap-ms`` sleeps between commits, as a gateway at low load idles between requests: the caches are
then cold and every commit costs several times what a tight loop shows. ``--sync group`` leaves the
fsync out (SQLite ``synchronous=NORMAL``), so what remains is CPU; ``full`` (the gateway's default) adds
the disk's fsync, which on a shared machine is the noisiest part.

Run: ``python bench/log_commit.py [--sync group|full] [--n 150] [--gap-ms 50]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from vlmops.store.log import ChatExchange, PredictionLog, PredictionRow, chat_exchanges, requests


def exchange(rid: str) -> tuple[PredictionRow, ChatExchange]:
    """A proxied exchange as the gateway logs it: one image's hash and statistics, a short answer."""
    stats = {"width": 8, "height": 8, "aspect": 1.0, "brightness": 96.0, "contrast": 0.0, "bytes": 77}
    row = PredictionRow(
        rid, "chat", "fake-vlm", ["ab" * 32], 160.0, None, image_stats=[stats | {"format": "PNG"}]
    )
    chat = ChatExchange(
        rid, "upstream", "fake-vlm", [{"role": "user", "text": "Describe it"}], "a red image " * 8,
        finish_reason="stop", tokens_in=3, tokens_out=32, ttft_ms=160.0, cost_usd=0.0, params={},
    )  # fmt: skip
    return row, chat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sync", choices=["group", "full"], default="group")
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--gap-ms", type=float, default=50.0)
    args = parser.parse_args()
    log = PredictionLog(str(Path(tempfile.mkdtemp(prefix="log_commit_")) / "log.sqlite"), sync=args.sync)

    def through_sqlalchemy(pair) -> None:
        row, chat = pair
        with log._writing(), log.engine.begin() as conn:
            conn.execute(requests.insert(), [row.to_row()])
            conn.execute(chat_exchanges.insert(), [chat.to_row()])

    ways = {
        "write_chat (compiled, DBAPI cursor)": lambda p: log.write_chat([p]),
        "SQLAlchemy execute": through_sqlalchemy,
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for i in range(args.n):
        for name, write in ways.items():  # interleaved: drifting load hits both alike
            pair = exchange(f"{name[:5]}-{i}")
            time.sleep(args.gap_ms / 1000)
            start = time.perf_counter()
            write(pair)
            times[name].append((time.perf_counter() - start) * 1000)
    print(f"sync={args.sync}, {args.n} commits each, {args.gap_ms:g} ms apart (medians after 5 warm-up)")
    for name, values in times.items():
        values = values[5:]
        q1, q3 = statistics.quantiles(values, n=4)[0], statistics.quantiles(values, n=4)[2]
        print(f"  {name:38} p50 {statistics.median(values):6.3f} ms  (p25 {q1:.3f}, p75 {q3:.3f})")


if __name__ == "__main__":
    main()
