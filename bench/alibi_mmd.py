"""Runs alibi-detect's MMDDrift (PyTorch backend) on windows saved by bench/drift.py; prints JSON.

Runs inside the separate virtual environment that bench/drift.py builds (alibi-detect pins an older
numpy and transformers than vlmops), so it imports nothing from vlmops.

    python bench/alibi_mmd.py windows.npz N_PERMUTATIONS
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from alibi_detect.cd import MMDDrift


def main() -> None:
    path, n_permutations = sys.argv[1], int(sys.argv[2])
    data = np.load(path)
    reference, windows = data["reference"], data["windows"]
    torch.manual_seed(0)
    start = time.perf_counter()
    detector = MMDDrift(reference, backend="pytorch", p_val=0.05, n_permutations=n_permutations, device="cpu")
    fit_s = time.perf_counter() - start
    p_values, distances, seconds = [], [], []
    for window in windows:
        start = time.perf_counter()
        result = detector.predict(window)["data"]
        seconds.append(time.perf_counter() - start)
        p_values.append(float(result["p_val"]))
        distances.append(float(result["distance"]))
    sigma = float(detector._detector.kernel.sigma.detach().cpu().numpy().ravel()[0])
    print(
        json.dumps(
            {"p_values": p_values, "distances": distances, "seconds": seconds, "fit_s": fit_s, "sigma": sigma}
        )
    )


if __name__ == "__main__":
    main()
