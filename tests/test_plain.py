"""Results as strict JSON (vslm.plain): what every result file and --json print writes."""

import json
import math

import numpy as np
import pytest

from vslm.plain import dumps, plain


def test_dumps_writes_strict_json_with_null_for_undefined_numbers_and_plain_numpy_values():
    value = {"nan": math.nan, "inf": -math.inf, "np": np.float32(np.nan), "arr": np.array([1.5, np.inf]),
             "masked": np.ma.masked_array([1.0, 2.0], mask=[0, 1]), "int": np.int64(3), "flag": np.bool_(True),
             "nested": ({"x": 0.123456789},), "text": "NaN"}
    text = dumps(value, digits=3)
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert back == {"nan": None, "inf": None, "np": None, "arr": [1.5, None], "masked": [1.0, None], "int": 3,
                    "flag": True, "nested": [{"x": 0.123}], "text": "NaN"}
    assert plain(np.float64(2.5)) == 2.5 and type(plain(np.float64(2.5))) is float
    with pytest.raises(TypeError):  # not a JSON value, said at once rather than written as garbage
        dumps({"set": {1, 2}})


def test_listed_takes_one_word_as_one_and_refuses_what_is_not_words(tmp_path):
    """A notebook's "train.steps=20" (or a Path) where a list is meant: one item, not its characters (they
    were 't', 'r', ... to run_experiment, 15 one-letter prompts to shape_run)."""
    from vslm.plain import listed

    assert listed("train.steps=20", "overrides") == ["train.steps=20"]
    assert listed(tmp_path / "a.txt", "names") == [str(tmp_path / "a.txt")]
    assert listed(["a", tmp_path], "names") == ["a", str(tmp_path)] and listed(None, "x") == []
    for bad in ([1, 2], 5):
        with pytest.raises(TypeError, match="variants: a string or a list of strings, got"):
            listed(bad, "variants")
