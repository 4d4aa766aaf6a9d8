"""assimbench/naming.py and errors.py: parametrized names, typed construction from YAML values, content hashes.

The names are the CLI selectors, results keys and legends; the hashes name cached datasets and shipped
artifacts, so both must stay exactly as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pytest

from assimbench.errors import ConfigError, unknown
from assimbench.naming import build, content_hash, param_name, params_of, public_fields


@dataclass
class Filter:
    name: ClassVar[str] = "Filter"
    inflation: float = 1.0
    variant: Literal["sqrt", "stochastic"] = "sqrt"
    radius: int = 0
    fields: tuple[str, ...] = ()
    seed: int | None = None
    bound: object = field(default=None, metadata={"internal": True})


def test_a_name_lists_the_non_default_fields_sorted():
    assert param_name(Filter()) == "Filter"
    assert param_name(Filter(variant="stochastic", inflation=1.05)) == "Filter[inflation=1.05,variant=stochastic]"
    assert param_name(Filter(fields=("u", "v"), radius=3)) == "Filter[fields=(u,v),radius=3]"
    assert param_name(Filter(inflation=2.0), base="F") == "F[inflation=2]"  # floats as %g


def test_internal_fields_are_not_parameters():
    assert [f.name for f in public_fields(Filter)] == ["inflation", "variant", "radius", "fields", "seed"]
    assert "bound" not in params_of(Filter(bound=object()))
    assert param_name(Filter(bound=object())) == "Filter"


def test_content_hashes_are_stable():
    """Cached datasets and shipped artifacts are found by these hashes: they never change between versions."""
    assert content_hash("lorenz96", {"dim": 40, "dt": 0.05}, 3) == "760f0e3f1e92"
    assert content_hash({"b": 1, "a": (1, 2)}, n=16) == "8759360617cd4e1f"
    assert content_hash({"a": 1, "b": 2}) == content_hash({"b": 2, "a": 1})  # key order does not matter


def test_build_converts_yaml_values_to_the_field_types():
    f = build(Filter, {"inflation": 1, "radius": 2.0, "fields": "u", "seed": None}, "method")
    assert f == Filter(inflation=1.0, radius=2, fields=("u",), seed=None)
    assert isinstance(f.inflation, float) and isinstance(f.radius, int)
    assert build(Filter, {}, "method", bound="x").bound == "x"


@pytest.mark.parametrize("params, message", [
    ({"inflaton": 1.1}, r"unknown key 'inflaton' in method Filter \(its parameters\); valid: fields, inflation, "
                        r"radius, seed, variant \(did you mean 'inflation'\?\)"),
    ({"variant": "square-root"}, "variant='square-root' is not allowed; valid: sqrt, stochastic"),
    ({"radius": 2.5}, "radius=2.5 should be an integer"),
    ({"radius": True}, "radius=True should be an integer"),
    ({"inflation": "big"}, "inflation='big' should be a number"),
    ({"fields": 3}, "fields=3 should be a list"),
    ({"seed": "x"}, "seed='x' has the wrong type"),
    ({"bound": 1}, "unknown key 'bound'"),
], ids=["misspelled", "literal", "float-for-int", "bool-for-int", "string-for-float", "scalar-for-list",
        "optional", "internal"])
def test_bad_values_name_the_problem_and_the_choices(params, message):
    with pytest.raises(ConfigError, match=message):
        build(Filter, params, "method")


def test_unknown_lists_the_valid_choices_with_a_hint():
    e = unknown("method", "EnKG", ["EnSF", "EnKF", "FreeRun"])
    assert str(e) == "unknown method 'EnKG'; valid: EnKF, EnSF, FreeRun (did you mean 'EnKF'?)"
    assert str(unknown("problem", "x", [], where="the grid")) == "unknown problem 'x' in the grid; valid: (none)"
