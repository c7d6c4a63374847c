"""Surrogates: forward is exactly the step; backward equals its closed form (not the derivative of the
forward, so no gradcheck), and integrates to a primitive where one exists."""

import math

import pytest
import torch

from trainer import catalog, surrogates

POINTS = [-2.0, -0.75, -0.25, 0.0, 0.25, 0.75, 2.0]


def closed_form(name: str, x: float, p: float) -> float:
    """The design's table, written independently in plain Python floats."""
    if name == "atan_surrogate":
        return p / (2 * (1 + (math.pi * p * x / 2) ** 2))
    if name == "fast_sigmoid":
        return p / (1 + p * abs(x)) ** 2
    if name == "superspike":
        return 1 / (1 + p * abs(x)) ** 2
    if name == "sigmoid_surrogate":
        s = 1 / (1 + math.exp(-p * x))
        return p * s * (1 - s)
    if name == "straight_through":
        return 1.0
    if name == "triangular":
        return max(0.0, 1 - abs(x) / p) / p
    raise KeyError(name)


NON_DEFAULT = {"atan_surrogate": 5.0, "fast_sigmoid": 3.0, "superspike": 2.5, "sigmoid_surrogate": 1.5,
               "straight_through": None, "triangular": 0.5}


def test_registry_matches_catalog():
    assert set(surrogates.FUNCTIONS) == {s.name for s in catalog.SURROGATES}


@pytest.mark.parametrize("name", list(surrogates.FUNCTIONS))
def test_forward_is_exactly_the_step(name):
    x = torch.tensor([-1.0, -1e-7, 0.0, 1e-7, 1.0, 3.0], dtype=torch.float64)
    assert surrogates.get(name)(x).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("use_default", [True, False])
@pytest.mark.parametrize("name", list(surrogates.FUNCTIONS))
def test_backward_equals_closed_form(name, use_default):
    spec = surrogates.SPECS[name]
    param = None if use_default else NON_DEFAULT[name]
    fn = surrogates.get(name, param)
    expected_param = (spec.params[0].default if spec.params else 0.0) if param is None else param
    x = torch.tensor(POINTS, dtype=torch.float64, requires_grad=True)
    fn(x).backward(torch.ones_like(x))
    want = [closed_form(name, v, expected_param) for v in POINTS]
    assert x.grad.tolist() == pytest.approx(want, rel=1e-12, abs=1e-12)


PRIMITIVES = {  # antiderivatives F with F' = the pseudo-derivative; the backward should match F'
    "atan_surrogate": lambda x, a: math.atan(math.pi * a * x / 2) / math.pi,
    "sigmoid_surrogate": lambda x, s: 1 / (1 + math.exp(-s * x)),
    "fast_sigmoid": lambda x, s: x * s / (1 + s * abs(x)),
    "superspike": lambda x, b: x / (1 + b * abs(x)),
}


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_backward_is_the_derivative_of_its_primitive(name):
    fn = surrogates.get(name)
    x = torch.tensor([-0.6, -0.1, 0.3, 0.9], dtype=torch.float64, requires_grad=True)
    fn(x).sum().backward()
    h = 1e-6
    for xi, gi in zip(x.detach().tolist(), x.grad.tolist()):
        numeric = (PRIMITIVES[name](xi + h, fn.param) - PRIMITIVES[name](xi - h, fn.param)) / (2 * h)
        assert gi == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize("alias", [a for s in catalog.SURROGATES for a in s.aliases])
def test_aliases(alias):
    assert surrogates.get(alias).name == catalog.canonical_surrogate(alias)


def test_unknown_surrogate():
    with pytest.raises(KeyError):
        surrogates.get("nope")
