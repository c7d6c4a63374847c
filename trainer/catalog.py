"""The one table of surrogates, neuron cells and networks (standard library only).

Everything user-facing reads this module: config validation, ``GET /api/training/surrogates`` and
``/cell-types``, the CLI's help, the web form and ``docs/``. The torch implementations in
``trainer.surrogates``, ``trainer.cells`` and ``trainer.models`` register under the same names, and a
test checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Param:
    name: str
    default: float
    meaning: str

    def as_dict(self) -> dict:
        return {"name": self.name, "default": self.default, "meaning": self.meaning}


@dataclass(frozen=True)
class SurrogateSpec:
    name: str
    aliases: tuple[str, ...]
    reference: str
    formula: str  # backward, with x = v - threshold
    params: tuple[Param, ...] = ()

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "reference": self.reference,
            "formula": self.formula,
            "params": [p.as_dict() for p in self.params],
        }


@dataclass(frozen=True)
class CellSpec:
    name: str
    kind: str  # "cell" or "network"
    description: str
    params: tuple[Param, ...] = ()
    learnable: tuple[str, ...] = ()  # which of "beta", "threshold" the learn_* flags may train
    equation: str = ""

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "equation": self.equation,
            "params": [p.as_dict() for p in self.params],
            "learnable": list(self.learnable),
        }


SURROGATES: tuple[SurrogateSpec, ...] = (
    SurrogateSpec(
        "atan_surrogate", ("atan",), "Fang et al. 2021",
        "alpha / (2 (1 + (pi alpha x / 2)^2))", (Param("alpha", 2.0, "sharpness"),),
    ),
    SurrogateSpec(
        "fast_sigmoid", (), "Zenke & Vogels 2021",
        "slope / (1 + slope abs(x))^2", (Param("slope", 25.0, "sharpness"),),
    ),
    SurrogateSpec(
        "superspike", (), "Zenke & Ganguli 2018",
        "1 / (1 + beta abs(x))^2", (Param("beta", 10.0, "sharpness"),),
    ),
    SurrogateSpec(
        "sigmoid_surrogate", ("sigmoid",), "standard",
        "slope s(slope x) (1 - s(slope x))", (Param("slope", 5.0, "sharpness"),),
    ),
    SurrogateSpec("straight_through", ("ste",), "Bengio et al. 2013", "1 (identity)"),
    SurrogateSpec(
        "triangular", (), "Esser et al. 2016",
        "max(0, 1 - abs(x) / width) / width", (Param("width", 1.0, "half-width of the triangle"),),
    ),
)

_BETA = Param("beta", 0.9, "membrane decay per timestep, in (0, 1)")
_THRESHOLD = Param("threshold", 1.0, "firing threshold, > 0")
# Below the rheobase, so with no input the membrane falls back to rest (the textbook reset; subtracting
# the threshold left ExpIF above the point where the exponential outgrows the leak, firing forever).
_V_RESET = Param("v_reset", 0.0, "membrane right after a spike (ExpIF/AdEx reset to it), below v_rh")

CELLS: tuple[CellSpec, ...] = (
    CellSpec(
        "LIFCell", "cell", "Leaky integrate-and-fire", (_BETA, _THRESHOLD), ("beta", "threshold"),
        "v = beta v + I",
    ),
    CellSpec(
        "IFCell", "cell", "Integrate-and-fire, no leak", (_THRESHOLD,), ("threshold",),
        "v = v + I",
    ),
    CellSpec(
        "ALIFCell", "cell", "Adaptive LIF: each spike raises the threshold, which relaxes back",
        (_BETA, Param("threshold", 1.0, "baseline threshold th0, > 0"),
         Param("rho", 0.99, "adaptation decay"), Param("b", 1.8, "adaptation strength")),
        ("beta", "threshold"),
        "v = beta v + I; threshold_t = th0 + b a; a = rho a + (1 - rho) s (Bellec et al. 2018)",
    ),
    CellSpec(
        "ExpIFCell", "cell", "Exponential integrate-and-fire (bounded exponential, silent at rest)",
        (_BETA, _THRESHOLD, Param("delta", 0.5, "slope factor Delta"),
         Param("v_rh", 0.8, "rheobase potential"), _V_RESET),
        ("beta", "threshold"),
        "v = beta v + (1 - beta) Delta (exp((v - v_rh)/Delta) - exp(-v_rh/Delta)) + I; on a spike v = v_reset",
    ),
    CellSpec(
        "AdExCell", "cell", "Adaptive exponential integrate-and-fire",
        (_BETA, _THRESHOLD, Param("delta", 0.5, "slope factor Delta"),
         Param("v_rh", 0.8, "rheobase potential"), _V_RESET, Param("a", 0.01, "subthreshold adaptation"),
         Param("b", 0.1, "spike-triggered adaptation"), Param("rho", 0.99, "adaptation decay")),
        ("beta", "threshold"),
        "ExpIF with v -= w; w = rho w + a (v - v_rest) + b s",
    ),
    CellSpec(
        "LapicqueCell", "cell", "Lapicque's RC neuron; decay and gain follow from tau, R and dt",
        # R = 10 (was 1): the steady membrane under a constant input is R I, against I / (1 - beta) = 10 I
        # for LIF; with R = 1 a SpikingNet's Linear outputs hardly reached threshold within T and it sat
        # at 18% after one epoch on the synthetic set (issue 11).
        (Param("tau", 20.0, "membrane time constant"), Param("R", 10.0, "membrane resistance"),
         Param("dt", 1.0, "timestep"), _THRESHOLD),
        ("beta", "threshold"),
        "v = (1 - dt/tau) v + (R dt/tau) I",
    ),
    CellSpec(
        "AlphaCell", "cell", "Excitatory and inhibitory synaptic currents feeding a leaky membrane",
        (Param("alpha_e", 0.9, "excitatory current decay"),
         Param("alpha_i", 0.85, "inhibitory current decay"), _BETA, _THRESHOLD),
        ("beta", "threshold"),
        "i_e = alpha_e i_e + relu(I); i_i = alpha_i i_i + relu(-I); v = beta v + i_e - i_i",
    ),
    CellSpec(
        "SecondOrderLIFCell", "cell", "Second-order LIF: input filtered into a current that feeds v",
        (Param("alpha", 0.95, "current decay"), _BETA, _THRESHOLD), ("beta", "threshold"),
        "a = alpha a + I; v = beta v + a",
    ),
    CellSpec(
        "RecurrentLIFCell", "cell", "LIF with recurrent input from its own previous spikes",
        (_BETA, _THRESHOLD, Param("gain", 0.5, "gain of the orthogonal W_rec init")),
        ("beta", "threshold"),
        "v = beta v + I + W_rec s_prev",
    ),
    CellSpec(
        "SynapticCell", "cell", "LIF with a first-order synaptic current",
        (Param("alpha", 0.9, "synaptic current decay"), Param("beta", 0.8, "membrane decay"),
         _THRESHOLD),
        ("beta", "threshold"),
        "i = alpha i + I; v = beta v + i",
    ),
)

NETWORKS: tuple[CellSpec, ...] = (
    CellSpec(
        "SpikingNet", "network",
        "Fully connected: input, hidden layers, 10 outputs, a spiking cell after each linear layer",
        (), (), "layer keys lifs.0, lifs.1, ...",
    ),
    CellSpec(
        "ConvSpikingNet", "network",
        "conv 5x5 32, cell, pool, conv 5x5 64, cell, pool, fc 128, cell, fc 10, cell",
        (), (), "layer keys lif1 .. lif4",
    ),
)

SURROGATE_ALIASES: dict[str, str] = {
    alias: spec.name for spec in SURROGATES for alias in (spec.name, *spec.aliases)
}
CELLS_BY_NAME: dict[str, CellSpec] = {spec.name: spec for spec in CELLS}
NETWORKS_BY_NAME: dict[str, CellSpec] = {spec.name: spec for spec in NETWORKS}


def canonical_surrogate(name: str) -> str:
    """Full surrogate name for a name or alias; KeyError if unknown."""
    return SURROGATE_ALIASES[name]


def cell_param_defaults(cell_type: str) -> dict[str, float]:
    return {p.name: p.default for p in CELLS_BY_NAME[cell_type].params}
