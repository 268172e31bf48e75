"""Balance: group counts, imbalance ratio and normalised entropy against closed forms; intersections."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from vlmops.audit.balance import balance_check, distribution_stats
from vlmops.errors import DataError


def test_distribution_stats_closed_form() -> None:
    stats = distribution_stats([50, 30, 20])
    entropy = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert stats["imbalance_ratio"] == 2.5 and stats["min"] == 20 and stats["max"] == 50
    assert stats["normalised_entropy"] == pytest.approx(entropy / math.log(3))
    assert distribution_stats([7, 7, 7, 7])["normalised_entropy"] == pytest.approx(1.0)
    assert distribution_stats([9])["normalised_entropy"] is None
    assert distribution_stats([])["n_values"] == 0


def crossed(cells: dict[tuple[str, str], int], names: tuple[str, str] = ("sex", "region")) -> pd.DataFrame:
    rows = [{names[0]: a, names[1]: b} for (a, b), n in cells.items() for _ in range(n)]
    frame = pd.DataFrame(rows)
    frame["id"] = [f"r{i}" for i in range(len(frame))]
    frame["label"] = None
    return frame


def test_balance_numbers_and_thin_intersections() -> None:
    cells = {("A", "x"): 70, ("A", "y"): 45, ("A", "z"): 5, ("B", "x"): 30, ("B", "y"): 15, ("B", "z"): 35}
    frame = crossed(cells)
    frame.loc[:3, "region"] = None  # 4 missing values: 66 A-x remain
    result = balance_check(frame, ["sex", "region"], min_n=30)
    region = result.details["fields"]["region"]
    assert region["counts"] == {"x": 96, "y": 60, "z": 40} and region["missing"] == 4
    p = [96 / 196, 60 / 196, 40 / 196]
    assert region["normalised_entropy"] == pytest.approx(-sum(q * math.log(q) for q in p) / math.log(3))
    assert result.metrics["max_imbalance_ratio"] == pytest.approx(2.4)  # region 96 / 40 beats sex 120 / 80
    assert result.metrics["min_group_n"] == 40
    thin = [f for f in result.findings if f.kind == "thin_intersection"]
    assert [f.record_id for f in thin] == ["group:sex=A&region=z", "group:sex=B&region=y"]
    assert thin[0].evidence["n"] == 5 and thin[0].evidence["expected"] == pytest.approx(116 * 40 / 196)
    assert thin[0].severity == "info" and result.metrics["under_represented_groups"] == 2


def test_small_groups_are_findings_and_output_is_bounded() -> None:
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(300)], "vendor": ["big"] * 200 + ["small"] * 100})
    frame["label"] = [f"cat{i % 2}/sub{i % 80}/concept{i}" for i in range(300)]
    result = balance_check(frame, ["vendor"], ["category", "subcategory", "concept"], min_n=30, max_listed=10)
    fields = result.details["fields"]
    assert fields["label.category"]["counts"] == {"cat0": 150, "cat1": 150}
    assert fields["label.subcategory"]["n_values"] == 80 and fields["label.concept"]["n_values"] == 300
    assert "counts" not in fields["label.concept"]  # too many values to list
    small = [f for f in result.findings if f.kind == "under_represented"]
    assert all(f.severity == "warning" and f.evidence["n"] < 30 for f in small)
    assert len([f for f in small if "label.concept=" in f.record_id]) == 10
    assert any("label.concept: 290 more" in note for note in result.notes)
    assert result.metrics["under_represented_groups"] == 80 + 300
    assert result.metrics["min_group_n"] == 1 and result.metrics["max_imbalance_ratio"] == pytest.approx(
        2.0
    )  # vendor 200 / 100


def test_absent_combinations_only_when_informative() -> None:
    cells = {(p, q): 40 for p in ("p1", "p2", "p3", "p4") for q in ("q1", "q2", "q3", "q4")}
    cells[("p1", "q1")] = 0  # q1 occurs with every other p, p1 with every other q: a real gap
    cells[("p4", "q5")] = 40  # q5 exists only with p4: its gaps are structural
    frame = crossed(cells, ("p", "q"))
    result = balance_check(frame, ["p", "q"], min_n=30)
    absent = [f for f in result.findings if f.kind == "absent_combination"]
    assert [f.record_id for f in absent] == ["group:p=p1&q=q1"] and absent[0].evidence["n"] == 0
    assert result.details["absent_combinations"] == 1


def test_unknown_field_names_the_columns() -> None:
    with pytest.raises(DataError, match="skin_tone"):
        balance_check(crossed({("A", "x"): 3}), ["skin_tone"])
