"""Surrogate gradients for the spike nonlinearity (Neftci, Mostafa & Zenke 2019).

Forward is exactly the Heaviside step ``x > 0`` with ``x = v - threshold``; backward replaces its
derivative (zero almost everywhere) with a smooth pseudo-derivative. The backward is deliberately not
the derivative of the forward, so tests compare it with its closed form instead of using gradcheck.
Names, aliases, references and defaults live in ``trainer.catalog``; this module only implements them.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from trainer import catalog

# backward pseudo-derivative d spike / d x as a function of (x, param); x is any shape.
_PseudoDerivative = Callable[[torch.Tensor, float], torch.Tensor]


def _atan(x: torch.Tensor, alpha: float) -> torch.Tensor:
    # alpha / (2 (1 + (pi alpha x / 2)^2)), with the constants folded: four passes over x instead of six
    return (alpha / 2) / (1 + (x * (math.pi * alpha / 2)) ** 2)


def _fast_sigmoid(x: torch.Tensor, slope: float) -> torch.Tensor:
    return slope / (1 + slope * x.abs()) ** 2


def _superspike(x: torch.Tensor, beta: float) -> torch.Tensor:
    return 1 / (1 + beta * x.abs()) ** 2


def _sigmoid(x: torch.Tensor, slope: float) -> torch.Tensor:
    s = torch.sigmoid(slope * x)
    return slope * s * (1 - s)


def _straight_through(x: torch.Tensor, _: float) -> torch.Tensor:
    return torch.ones_like(x)


def _triangular(x: torch.Tensor, width: float) -> torch.Tensor:
    return torch.clamp(1 - x.abs() / width, min=0) / width


_PSEUDO_DERIVATIVES: dict[str, _PseudoDerivative] = {
    "atan_surrogate": _atan,
    "fast_sigmoid": _fast_sigmoid,
    "superspike": _superspike,
    "sigmoid_surrogate": _sigmoid,
    "straight_through": _straight_through,
    "triangular": _triangular,
}


def _make_function(name: str, pseudo: _PseudoDerivative) -> type[torch.autograd.Function]:
    class Spike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: torch.Tensor, param: float) -> torch.Tensor:
            ctx.save_for_backward(x)
            ctx.param = param
            return (x > 0).to(x.dtype)

        @staticmethod
        def backward(ctx, grad_output: torch.Tensor):
            (x,) = ctx.saved_tensors
            return grad_output * pseudo(x, ctx.param), None

    Spike.__name__ = Spike.__qualname__ = "".join(p.title() for p in name.split("_"))
    return Spike


FUNCTIONS: dict[str, type[torch.autograd.Function]] = {
    name: _make_function(name, fn) for name, fn in _PSEUDO_DERIVATIVES.items()
}
SPECS: dict[str, catalog.SurrogateSpec] = {spec.name: spec for spec in catalog.SURROGATES}
assert set(FUNCTIONS) == set(SPECS), "surrogate implementations and catalog disagree"


class SpikeFn:
    """A spike function ``x -> step(x)`` with the named surrogate backward.

    ``param`` overrides the surrogate's default (alpha, slope, beta or width); straight_through has none.
    """

    def __init__(self, name: str = "atan_surrogate", param: float | None = None):
        self.name = catalog.canonical_surrogate(name)
        spec = SPECS[self.name]
        default = spec.params[0].default if spec.params else 0.0
        self.param = float(default if param is None else param)
        self._fn = FUNCTIONS[self.name]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn.apply(x, self.param)

    def pseudo_derivative(self, x: torch.Tensor) -> torch.Tensor:
        return _PSEUDO_DERIVATIVES[self.name](x, self.param)

    def __repr__(self) -> str:
        return f"SpikeFn({self.name!r}, param={self.param})"


def get(name: str, param: float | None = None) -> SpikeFn:
    """The spike function for a surrogate name or alias."""
    return SpikeFn(name, param)
