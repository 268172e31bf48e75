"""Slice metrics against closed forms (Wald, design effect), a naive bootstrap loop and Fisher's exact."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact

from vlmops.evaluate.resampling import _bootstrap_means, _cluster_tables, _draw_cluster_weights
from vlmops.evaluate.slices import default_slice_fields, slice_metrics

Z95 = 1.959964


def binary(n_ones: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """A shuffled 0/1 outcome vector with exactly n_ones ones."""
    y = np.zeros(n)
    y[:n_ones] = 1.0
    return rng.permutation(y)


def test_default_slice_fields_picks_scalar_low_cardinality_columns() -> None:
    n = 60
    frame = pd.DataFrame(
        {
            "vendor": ["apple", "google", "twitter"] * 20,
            "skin_tone": ["none", "dark", None, "light"] * 15,
            "constant": ["x"] * n,
            "id": [f"e{i}" for i in range(n)],
            "tags": [["a", "b"]] * n,
            "category": ["smileys", "food"] * 30,
        }
    )
    candidates = ["vendor", "skin_tone", "constant", "id", "tags", "category", "not_a_column"]
    assert default_slice_fields(frame, candidates) == ["vendor", "skin_tone", "category"]
    assert default_slice_fields(frame, candidates, max_values=2) == ["category"]


def test_iid_bootstrap_ci_matches_wald_interval() -> None:
    n, p = 2000, 0.3
    frame = pd.DataFrame({"all": ["all"] * n, "vendor": ["apple"] * 1000 + ["google"] * 1000})
    y = binary(int(p * n), n, np.random.default_rng(1))
    whole, vendor = slice_metrics(y, frame, ["all", "vendor"], n_boot=2000, n_perm=0, seed=3).fields
    stat = whole.slices[0]
    half = Z95 * math.sqrt(p * (1 - p) / n)
    assert stat.mean == pytest.approx(p)
    assert stat.ci_low == pytest.approx(p - half, abs=0.004)
    assert stat.ci_high == pytest.approx(p + half, abs=0.004)
    # Width to 5 %: a 90 % interval (a wrong tail split) would be 16 % narrower.
    assert stat.ci_high - stat.ci_low == pytest.approx(2 * half, rel=0.05)
    for s in vendor.slices:  # 1000 items each
        half_s = Z95 * math.sqrt(s.mean * (1 - s.mean) / s.n)
        assert s.ci_low == pytest.approx(s.mean - half_s, abs=0.01)
        assert s.ci_high == pytest.approx(s.mean + half_s, abs=0.01)
        assert s.n_clusters == s.n == 1000 and s.warning is None and s.n_boot_used is None


def test_cluster_bootstrap_widens_by_the_design_effect() -> None:
    # 200 clusters of m = 9 items that share one outcome: intra-cluster correlation 1, design effect m.
    n_clusters, m = 200, 9
    rng = np.random.default_rng(2)
    cluster_y = binary(70, n_clusters, rng)
    y = np.repeat(cluster_y, m)
    clusters = np.repeat(np.arange(n_clusters), m)
    frame = pd.DataFrame({"all": ["all"] * len(y)})
    iid = slice_metrics(y, frame, ["all"], n_boot=2000, n_perm=0).fields[0].slices[0]
    clu = slice_metrics(y, frame, ["all"], clusters=clusters, n_boot=2000, n_perm=0).fields[0].slices[0]
    p = 70 / n_clusters
    assert iid.mean == clu.mean == pytest.approx(p)
    assert clu.n == 1800 and clu.n_clusters == n_clusters and iid.n_clusters == 1800
    width_iid, width_clu = iid.ci_high - iid.ci_low, clu.ci_high - clu.ci_low
    assert width_clu / width_iid == pytest.approx(math.sqrt(m), rel=0.1)
    # Closed form: the cluster-level proportion has standard error sqrt(p(1-p)/C) (deff = 1 + (m-1)*1 = m).
    assert width_clu == pytest.approx(2 * Z95 * math.sqrt(p * (1 - p) / n_clusters), rel=0.1)


def test_vectorised_bootstrap_equals_naive_loop() -> None:
    rng = np.random.default_rng(4)
    n, n_clusters, n_slices, n_boot = 150, 25, 4, 60
    y = rng.uniform(size=n)
    clusters = rng.integers(0, n_clusters, size=n)
    clusters[:5] = 0
    codes = rng.integers(0, n_slices - 1, size=n)
    codes[clusters == 0] = n_slices - 1  # the last slice is cluster 0 alone: absent from some replicates
    weights = _draw_cluster_weights(rng, n_clusters, n_boot)
    sums, counts = _cluster_tables(y, codes, clusters, n_slices, n_clusters)
    fast = _bootstrap_means(sums, counts, weights)
    naive = np.full((n_boot, n_slices), np.nan)
    for b in range(n_boot):
        for j in range(n_slices):
            num = den = 0.0
            for i in range(n):
                if codes[i] == j:
                    num += weights[b, clusters[i]] * y[i]
                    den += weights[b, clusters[i]]
            if den > 0:
                naive[b, j] = num / den
    assert weights.shape == (n_boot, n_clusters) and np.all(weights.sum(axis=1) == n_clusters)
    assert np.isnan(fast).any(), "the test should exercise replicates in which a slice is absent"
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(naive))
    np.testing.assert_allclose(fast, naive, rtol=1e-12, atol=1e-12)


def test_dropped_replicates_are_reported() -> None:
    rng = np.random.default_rng(5)
    clusters = np.repeat(np.arange(40), 5)
    tone = np.where(clusters == 0, "dark", "none")  # "dark" lives in a single cluster
    frame = pd.DataFrame({"skin_tone": tone})
    y = rng.integers(0, 2, size=200).astype(float)
    rep = slice_metrics(y, frame, ["skin_tone"], clusters=clusters, n_boot=500, n_perm=0)
    dark, none = rep.fields[0].stat("dark"), rep.fields[0].stat("none")
    # A given cluster is missed by a replicate with probability (1 - 1/40)^40 ~ 0.36.
    assert dark.n_boot_used is not None and 250 < dark.n_boot_used < 400
    assert f"CI from {dark.n_boot_used} of 500 bootstrap replicates" in dark.warning
    assert none.n_boot_used is None


@pytest.mark.parametrize("clustered", [False, True])
def test_permutation_p_value_is_calibrated_under_the_null(clustered: bool) -> None:
    n = 300
    clusters = np.repeat(np.arange(60), 5) if clustered else None
    p_values = []
    for seed in range(50):
        rng = np.random.default_rng(100 + seed)
        frame = pd.DataFrame({"vendor": rng.choice(["apple", "google", "twitter"], size=n)})
        y = rng.integers(0, 2, size=n).astype(float)
        rep = slice_metrics(y, frame, ["vendor"], clusters=clusters, n_boot=0, n_perm=200, seed=seed)
        assert rep.fields[0].permutation == ("within-cluster" if clustered else "item")
        p_values.append(rep.fields[0].p_value)
    p_values = np.array(p_values)
    # Binomial(50, 0.05): P(>= 9 rejections) < 0.001; a roughly uniform p has mean 1/2 (sd of mean ~0.04).
    assert np.sum(p_values < 0.05) <= 8
    assert 0.35 < p_values.mean() < 0.65


def test_strong_gap_reaches_the_minimum_p_value() -> None:
    rng = np.random.default_rng(6)
    frame = pd.DataFrame({"skin_tone": ["light"] * 200 + ["dark"] * 200})
    y = np.concatenate([rng.uniform(size=200) < 0.9, rng.uniform(size=200) < 0.4]).astype(float)
    rep = slice_metrics(y, frame, ["skin_tone"], n_boot=100, n_perm=199)
    f = rep.fields[0]
    assert f.p_value == pytest.approx(1 / 200)
    assert (f.worst, f.best) == ("dark", "light")
    assert f.max_gap == pytest.approx(f.stat("light").mean - f.stat("dark").mean)


def test_two_slice_permutation_approximates_fisher_exact() -> None:
    rng = np.random.default_rng(7)
    a, b = binary(40, 60, rng), binary(28, 60, rng)
    frame = pd.DataFrame({"vendor": ["apple"] * 60 + ["google"] * 60})
    rep = slice_metrics(np.concatenate([a, b]), frame, ["vendor"], n_boot=0, n_perm=4000, seed=1)
    fisher = fisher_exact([[40, 20], [28, 32]]).pvalue  # ~0.042
    assert rep.fields[0].p_value == pytest.approx(fisher, abs=0.03)
    assert rep.fields[0].max_gap == pytest.approx(12 / 60)


def test_whole_cluster_permutation_when_field_is_constant_within_clusters() -> None:
    # Six concepts of 50 items; category A's three concepts are all right, category B's all wrong.
    clusters = np.repeat(np.arange(6), 50)
    frame = pd.DataFrame({"category": np.where(clusters < 3, "A", "B"), "concept": clusters})
    y = (clusters < 3).astype(float)
    clu = slice_metrics(y, frame, ["category"], clusters=frame["concept"], n_boot=0, n_perm=2000)
    f = clu.fields[0]
    assert f.permutation == "whole-cluster" and f.max_gap == 1.0
    # Only 2 of the C(6, 3) = 20 ways to give three concepts the label A reach a gap of 1.
    assert f.p_value == pytest.approx(0.1, abs=0.03)
    item = slice_metrics(y, frame, ["category"], n_boot=0, n_perm=2000).fields[0]
    assert item.permutation == "item" and item.p_value == pytest.approx(1 / 2001)


def test_within_cluster_permutation_when_field_varies_within_clusters() -> None:
    # Half the concepts are easy (all right), half hard (all wrong); tone "a" is over-represented among the
    # easy ones. Within a concept the tone makes no difference, so the stratified test must not reject.
    n_clusters, m = 40, 6
    clusters = np.repeat(np.arange(n_clusters), m)
    easy = clusters % 2 == 0
    position = np.tile(np.arange(m), n_clusters)
    tone = np.where(easy, np.where(position < 5, "a", "b"), np.where(position < 1, "a", "b"))
    frame = pd.DataFrame({"skin_tone": tone})
    y = easy.astype(float)
    f = slice_metrics(y, frame, ["skin_tone"], clusters=clusters, n_boot=0, n_perm=300).fields[0]
    assert f.permutation == "within-cluster"
    assert f.max_gap == pytest.approx(100 / 120 - 20 / 120)
    assert f.p_value == 1.0
    # Ignoring the clusters, the confounded gap looks highly significant.
    naive = slice_metrics(y, frame, ["skin_tone"], n_boot=0, n_perm=300).fields[0]
    assert naive.p_value == pytest.approx(1 / 301)


def test_mixed_field_uses_within_cluster_permutation() -> None:
    # Constant within most clusters but varying in one is still "within-cluster".
    clusters = np.repeat(np.arange(10), 4)
    tone = np.array(["none"] * 40, dtype=object)
    tone[:4] = ["none", "light", "medium", "dark"]
    frame = pd.DataFrame({"skin_tone": tone})
    y = np.random.default_rng(8).integers(0, 2, size=40).astype(float)
    f = slice_metrics(y, frame, ["skin_tone"], clusters=clusters, n_boot=0, n_perm=50, min_n=1).fields[0]
    assert f.permutation == "within-cluster"
    assert 0 < f.p_value <= 1


def test_intersections_missing_values_and_counts() -> None:
    rng = np.random.default_rng(9)
    n = 400
    tone = rng.choice(["dark", "light", None], size=n)
    gender = rng.choice(["female", "male"], size=n)
    frame = pd.DataFrame({"skin_tone": tone, "gender": gender})
    y = rng.integers(0, 2, size=n).astype(float)
    rep = slice_metrics(y, frame, [("skin_tone", "gender"), "skin_tone"], n_boot=50, n_perm=50)
    inter, single = rep.fields
    assert inter.field == "skin_tone×gender"
    values = [s.value for s in inter.slices]
    assert values == [
        "dark×female",
        "dark×male",
        "light×female",
        "light×male",
        "missing×female",
        "missing×male",
    ]
    assert sum(s.n for s in inter.slices) == n
    for s in inter.slices:
        t, g = s.value.split("×")
        mask = (frame["gender"] == g) & (
            frame["skin_tone"].isna() if t == "missing" else frame["skin_tone"] == t
        )
        assert s.n == int(mask.sum())
        assert s.mean == pytest.approx(y[mask.to_numpy()].mean())
    assert [s.value for s in single.slices] == ["dark", "light", "missing"]
    assert single.stat("missing").n == int(pd.isna(tone).sum())


def test_min_n_warning_and_worst_slice_ignores_tiny_slices() -> None:
    rng = np.random.default_rng(10)
    vendor = ["apple"] * 100 + ["google"] * 100 + ["tiny"] * 12
    y = np.concatenate([binary(80, 100, rng), binary(60, 100, rng), np.zeros(12)])
    frame = pd.DataFrame({"vendor": vendor})
    rep = slice_metrics(y, frame, ["vendor"], n_boot=100, n_perm=100)
    f = rep.fields[0]
    tiny = f.stat("tiny")
    assert tiny.warning.startswith("only n=12 items (< min_n=30): treat this slice's numbers as anecdotal")
    assert f.stat("apple").warning is None
    assert (f.worst, f.best) == ("google", "apple")
    assert f.max_gap == pytest.approx(0.2)
    assert rep.worst_slice == ("vendor", "google", pytest.approx(0.6))
    assert rep.max_gap == pytest.approx(0.2)
    # When no slice is large enough, everything falls back to all slices, with a note.
    small = slice_metrics(y, frame, ["vendor"], n_boot=0, n_perm=20, min_n=500).fields[0]
    assert small.worst == "tiny" and small.max_gap == pytest.approx(0.8)
    assert "no slice has n >= min_n=500" in small.note


def test_single_slice_field_has_zero_gap_and_p_one() -> None:
    frame = pd.DataFrame({"vendor": ["apple"] * 50})
    y = np.random.default_rng(11).integers(0, 2, size=50).astype(float)
    f = slice_metrics(y, frame, ["vendor"], n_boot=50, n_perm=50).fields[0]
    assert f.max_gap == 0.0 and f.p_value == 1.0 and f.permutation == "none"
    assert "only one slice" in f.note
    assert f.worst == f.best == "apple"


def test_to_dict_is_json_ready_and_nan_becomes_none() -> None:
    frame = pd.DataFrame({"vendor": ["apple", "google"] * 40, "gender": ["female"] * 80})
    y = np.random.default_rng(12).uniform(size=80)
    rep = slice_metrics(y, frame, ["vendor", "gender"], n_boot=0, n_perm=0, metric="coverage")
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert d["metric"] == "coverage" and d["n_boot"] == 0 and d["min_n"] == 30
    vendor = d["fields"][0]
    assert vendor["slices"][0]["ci_low"] is None and vendor["p_value"] is None
    assert vendor["slices"][0]["n"] == 40 and isinstance(vendor["slices"][0]["mean"], float)
    assert d["worst_slice"]["field"] in {"vendor", "gender"}
    assert rep.fields[1].to_dict()["p_value"] == 1.0


def test_results_are_reproducible_and_independent_of_field_order() -> None:
    rng = np.random.default_rng(13)
    frame = pd.DataFrame({"vendor": rng.choice(["a", "b"], 200), "gender": rng.choice(["f", "m"], 200)})
    y = rng.integers(0, 2, size=200).astype(float)
    one = slice_metrics(y, frame, ["vendor", "gender"], n_boot=100, n_perm=100, seed=5)
    two = slice_metrics(y, frame, ["gender", "vendor"], n_boot=100, n_perm=100, seed=5)
    assert one.fields[0] == two.fields[1] and one.fields[1] == two.fields[0]
    other = slice_metrics(y, frame, ["vendor"], n_boot=100, n_perm=100, seed=6)
    assert other.fields[0].slices[0].ci_low != one.fields[0].slices[0].ci_low


def test_empty_report_properties() -> None:
    frame = pd.DataFrame({"vendor": ["a", "b"]})
    rep = slice_metrics(np.array([1.0, 0.0]), frame, [])
    assert rep.fields == [] and rep.max_gap == 0.0 and rep.worst_slice is None


@pytest.mark.parametrize(
    ("outcome", "frame", "fields", "kwargs", "match"),
    [
        (np.array([]), pd.DataFrame({"vendor": []}), ["vendor"], {}, "frame is empty"),
        (np.ones(3), pd.DataFrame({"vendor": ["a", "b"]}), ["vendor"], {}, "one outcome per frame row"),
        (
            np.ones(2),
            pd.DataFrame({"vendor": ["a", "b"]}),
            ["vendr"],
            {},
            r"available columns are \['vendor'\]",
        ),
        (np.ones(2), pd.DataFrame({"vendor": ["a", "b"]}), [("vendor", "x")], {}, "unknown slice field 'x'"),
        (np.array([0.5, 2.0]), pd.DataFrame({"vendor": ["a", "b"]}), ["vendor"], {}, r"lie in \[0, 1\]"),
        (np.array([-0.1, 1.0]), pd.DataFrame({"vendor": ["a", "b"]}), ["vendor"], {}, "outcome_range"),
        (np.array([np.nan, 1.0]), pd.DataFrame({"vendor": ["a", "b"]}), ["vendor"], {}, "1 NaN/inf"),
        (np.ones(2), pd.DataFrame({"tags": [["x"], ["y"]]}), ["tags"], {}, "non-scalar values"),
        (np.ones(2), pd.DataFrame({"vendor": ["a", "b"]}), ["vendor"], {"clusters": [1]}, "one cluster id"),
        (
            np.ones(2),
            pd.DataFrame({"vendor": ["a", "b"]}),
            ["vendor"],
            {"clusters": [1, None]},
            "missing ids",
        ),
        (np.ones(2), pd.DataFrame({"vendor": ["a", "b"]}), ["vendor"], {"level": 95}, "level must"),
        (np.ones(2), pd.DataFrame({"vendor": ["a", "b"]}), ["vendor"], {"min_n": 0}, "min_n must"),
        (np.ones(2), pd.DataFrame({"vendor": ["a", "b"]}), ["vendor"], {"n_boot": -1}, "n_boot must"),
    ],
)
def test_bad_inputs_raise_with_a_fix(outcome, frame, fields, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        slice_metrics(outcome, frame, fields, **kwargs)


def test_a_bounded_score_may_touch_its_bound_up_to_rounding():
    frame = pd.DataFrame({"vendor": ["a", "a", "b", "b"]})
    report = slice_metrics(np.array([10.0 + 1e-12, 9.0, 0.0, 1.0]), frame, ["vendor"], min_n=1,
                           outcome_range=(0.0, 10.0))  # fmt: skip
    assert report.fields[0].max_gap == pytest.approx(9.0)  # 9.5 - 0.5
    with pytest.raises(ValueError, match=r"\[0, 10\]"):
        slice_metrics(np.array([10.01, 0.0]), frame.iloc[:2], ["vendor"], outcome_range=(0.0, 10.0))
