"""The feature-query language: pandas-compatible where it matters, and never code."""

from __future__ import annotations

import numpy as np
import pytest

from popseg_dask.segmenters.query import QuerySyntaxError, parse_query

TABLE = {
    "area": np.array([10.0, 50.0, 100.0, 400.0]),
    "eccentricity": np.array([0.1, 0.95, 0.5, 0.99]),
    "nuclei_mean": np.array([np.nan, 200.0, 300.0, 50.0]),
    "intensity_mean-0": np.array([1.0, 2.0, 3.0, 4.0]),
}


@pytest.mark.parametrize("text, expected", [
    ("area < 80", [True, True, False, False]),
    ("area<=50", [True, True, False, False]),
    ("not area < 80", [False, False, True, True]),
    ("~(area < 80)", [False, False, True, True]),
    ("area < 80 and eccentricity > 0.9", [False, True, False, False]),
    ("area < 80 & eccentricity > 0.9", [False, True, False, False]),
    ("area > 300 or eccentricity > 0.9", [False, True, False, True]),
    ("area < 20 or area > 80 and eccentricity < 0.6", [True, False, True, False]),  # and binds tighter
    ("(area < 20 or area > 80) and eccentricity < 0.6", [True, False, True, False]),
    ("20 < area < 200", [False, True, True, False]),
    ("area / 2 >= 50", [False, False, True, True]),
    ("-area < -60", [False, False, True, True]),
    ("nuclei_mean > 100", [False, True, True, False]),      # NaN compares false
    ("not nuclei_mean > 100", [True, False, False, True]),
    ("`intensity_mean-0` == 2", [False, True, False, False]),
    ("area < 1e2", [True, True, False, False]),
    ("area != 50", [True, False, True, True]),
])
def test_queries_select_like_pandas(text, expected):
    assert parse_query(text).matches(TABLE, 4).tolist() == expected


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')",
    "area < 80; import os",
    "area.__class__",
    "area < ",
    "(area < 3",
    "",
    "area < 80 80",
    "lambda: 1",
])
def test_code_and_malformed_queries_are_rejected(text):
    with pytest.raises(QuerySyntaxError):
        q = parse_query(text)
        q.matches(TABLE, 4)


def test_a_value_is_not_a_condition():
    with pytest.raises(QuerySyntaxError):
        parse_query("area + 1").matches(TABLE, 4)


def test_unknown_feature_is_named():
    with pytest.raises(KeyError, match="perimeterr"):
        parse_query("perimeterr > 3").matches(TABLE, 4)


def test_names_lists_the_features_read():
    assert parse_query("area < 3 or `intensity_mean-0` > nuclei_mean").names == {"area", "intensity_mean-0", "nuclei_mean"}
