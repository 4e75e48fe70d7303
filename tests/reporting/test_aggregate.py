"""experiments/aggregate.py: mean ± sd over seeds on toy rows, checked by hand."""

import importlib.util
import math
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "experiments" / "aggregate.py"
_spec = importlib.util.spec_from_file_location("experiments_aggregate", _PATH)
agg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(agg)

ROWS = [
    {"variant": "gdka", "seed": 0, "loss": 1.0, "f1": 0.5},
    {"variant": "gdka", "seed": 1, "loss": 2.0, "f1": 0.7},
    {"variant": "gdka", "seed": 2, "loss": 4.0, "f1": None},
    {"variant": "vanilla", "seed": 0, "loss": 3.0, "f1": float("nan")},
]


def test_mean_sd_by_hand():
    t = agg.aggregate(ROWS, ["loss", "f1"])
    assert list(t) == ["gdka", "vanilla"]  # first-seen order
    # loss over 1, 2, 4: mean 7/3; sample variance ((1-7/3)^2 + (2-7/3)^2 + (4-7/3)^2) / 2 = 7/3
    assert t["gdka"]["loss"]["mean"] == pytest.approx(7 / 3, rel=1e-12)
    assert t["gdka"]["loss"]["sd"] == pytest.approx(math.sqrt(7 / 3), rel=1e-12)
    assert (t["gdka"]["loss"]["n"], t["gdka"]["loss"]["missing"]) == (3, 0)
    # f1: the None run is missing, not a zero: mean of 0.5, 0.7; sd = 0.2 / sqrt(2)
    assert t["gdka"]["f1"]["mean"] == pytest.approx(0.6, rel=1e-12)
    assert t["gdka"]["f1"]["sd"] == pytest.approx(0.2 / math.sqrt(2), rel=1e-12)
    assert (t["gdka"]["f1"]["n"], t["gdka"]["f1"]["missing"]) == (2, 1)
    # one value: sd 0; a NaN-only metric has no mean
    assert (t["vanilla"]["loss"]["mean"], t["vanilla"]["loss"]["sd"]) == (3.0, 0.0)
    assert t["vanilla"]["f1"] == {"n": 0, "missing": 1, "mean": None, "sd": None}


def test_markdown_cells_and_command():
    t = agg.aggregate(ROWS, ["loss", "f1"])
    md = agg.results_markdown("T", t, ["loss", "f1"], command="python experiments/ablations.py x", setup="s",
                              paper="p", notes=["n1"], machine={"cpu": "c"}, seconds=1.0)
    assert "| gdka | 2.333 ± 1.528 (n=3) | 0.600 ± 0.141 (n=2, 1 missing) |" in md
    assert "| vanilla | 3.000 ± 0.000 (n=1) | – |" in md
    assert "`python experiments/ablations.py x`" in md and "- n1" in md


def test_row_without_variant_is_refused():
    with pytest.raises(ValueError, match="no 'variant'"):
        agg.aggregate([{"seed": 0, "loss": 1.0}], ["loss"])


def test_finding_compares_the_spread_with_the_seed_sd():
    t = agg.aggregate([{"variant": "a", "x": 1.0}, {"variant": "a", "x": 1.2},
                       {"variant": "b", "x": 1.1}, {"variant": "b", "x": 1.3}], ["x"])
    # means 1.1 and 1.2 (span 0.1); sd of each pair 0.2/sqrt(2) = 0.1414: span <= 2 sd
    assert agg.finding(t, ["x"]) == "x: means span 0.100, largest sd 0.141, within seed noise (range <= 2 x the " \
                                    "largest sd): no ranking"
    t = agg.aggregate([{"variant": "a", "x": 1.0}, {"variant": "a", "x": 1.01},
                       {"variant": "b", "x": 2.0}, {"variant": "b", "x": 2.01}], ["x"])
    assert agg.finding(t, ["x"]).endswith("range exceeds 2 x the largest sd; highest mean: b")


def test_headline_says_whether_the_lead_is_inside_seed_noise():
    rows = [{"variant": "a", "val_loss": 1.00}, {"variant": "a", "val_loss": 1.02},
            {"variant": "b", "val_loss": 1.01}, {"variant": "b", "val_loss": 1.03},
            {"variant": "c", "val_loss": 2.00}, {"variant": "c", "val_loss": 2.02}]
    t = agg.aggregate(rows, ["val_loss"])
    h = agg.headline(t)
    # a vs b: diff 0.01, s.e. sqrt(2 * 0.0002 / 2) = 0.01414: inside; a vs c: diff 1.0: outside
    assert h.startswith("a has the lowest val_loss (1.0100 ± 0.0141)")
    assert "over b (+0.0100) is inside seed noise (<= 2 s.e. = 0.0283)" in h
    assert "c (+1.0000), outside seed noise" in h and h.endswith(".")
    # one seed each: no verdict is given
    one = agg.aggregate([{"variant": "a", "val_loss": 1.0}, {"variant": "b", "val_loss": 1.1}], ["val_loss"])
    assert "(too few seeds to judge)" in agg.headline(one)
