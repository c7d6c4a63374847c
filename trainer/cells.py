"""Spiking neuron cells: pure step functions over typed state, thin multi-step ``nn.Module`` wrappers.

Every cell integrates an input current ``I`` into a membrane ``v``, spikes with ``s = spike_fn(v - th)``
computed from the updated membrane, and resets by subtracting the threshold in effect,
``v = v - sg(s) th``, where ``sg`` stops the gradient: the reset shapes the forward trajectory but
carries no gradient (Zenke & Vogels 2021). ExpIF and AdEx instead reset to a fixed potential as the
textbook models do, ``v = v - sg(s) (v - v_reset)``: past the rheobase their exponential term outgrows
the leak, so subtracting the threshold could leave a membrane that keeps firing with no input.
Per timestep, for each cell (defaults in ``trainer.catalog``):

- LIFCell (Lapicque 1907; Gerstner et al. 2014, ch. 1):   v = beta v + I
- IFCell:                                                  v = v + I
- ALIFCell (Bellec et al. 2018, LSNN):      v = beta v + I; th_t = th0 + b a; a = rho a + (1 - rho) s
- ExpIFCell (Fourcaud-Trocme et al. 2003):  v = beta v + (1 - beta) D (exp((v - v_rh)/D) - exp(-v_rh/D)) + I
- AdExCell (Brette & Gerstner 2005):        ExpIF with v -= w; w = rho w + a v + b s   (v_rest = 0)
- LapicqueCell (Lapicque 1907):             v = (1 - dt/tau) v + (R dt/tau) I
- AlphaCell:           i_e = alpha_e i_e + relu(I); i_i = alpha_i i_i + relu(-I); v = beta v + i_e - i_i
- SecondOrderLIFCell, SynapticCell:         a = alpha a + I; v = beta v + a   (one step, two defaults)
- RecurrentLIFCell:                         v = beta v + I + W_rec s_prev   (W_rec orthogonal * gain)

The exponential terms subtract their value at rest, so v = 0 with no input is a fixed point (silent),
and their argument is capped at ``EXP_ARG_MAX`` so nothing overflows. Adaptation (ALIF's ``a``, AdEx's
``w``) is state and keeps its gradient; only the reset is detached.

Learnable dynamics: ``learn_beta`` trains one decay per layer, stored as a logit (beta = sigmoid, so it
stays in (0, 1)); ``learn_threshold`` trains one threshold per layer, stored through softplus (> 0).
Lapicque's learnable beta is 1 - dt/tau, and its gain R dt/tau = R (1 - beta) follows it.

Shapes: a cell's ``forward`` takes the current for all timesteps, ``[T, B, *shape]`` (``shape`` is
``(N,)`` after a Linear or ``(C, H, W)`` after a Conv), and returns spikes of the same shape. Only the
recurrence loops over time; anything that does not depend on the state is done once over all T.
LIFCell, IFCell and LapicqueCell run the whole recurrence as one autograd node
(``trainer.fused.LIFSequence``, with hand-written backpropagation through time) when the spike function exposes its pseudo-derivative, as
``trainer.surrogates.SpikeFn`` does, except while ``torch.compile`` traces them (``trainer.compiled``):
then they run the per-step loop, which inductor fuses; the other cells let autograd record each step.
"""

from __future__ import annotations

import math
from typing import Callable, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from trainer import catalog
from trainer.fused import LIFSequence

SpikeFn = Callable[[Tensor], Tensor]  # trainer.surrogates.SpikeFn: step forward, surrogate backward

# exp(4) ~ 55: past threshold the upswing already fires the cell; the cap keeps v finite for any input.
EXP_ARG_MAX = 4.0


def _reset(v: Tensor, spike: Tensor, threshold: Tensor) -> Tensor:
    """v - sg(spike) threshold: subtract the threshold in effect; no gradient through the spike."""
    return torch.addcmul(v, spike.detach(), threshold, value=-1.0)


def _reset_to(v: Tensor, spike: Tensor, v_reset: float) -> Tensor:
    """v - sg(spike) (v - v_reset): a spiking neuron restarts from v_reset; no gradient through the spike."""
    return torch.addcmul(v, spike.detach(), v - v_reset, value=-1.0)


# --- LIF, IF, Lapicque: one membrane -------------------------------------------------------------

class LIFParams(NamedTuple):
    beta: Tensor  # 0-dim, in (0, 1)
    threshold: Tensor  # 0-dim, > 0


class LIFState(NamedTuple):
    v: Tensor  # [B, *shape]


def lif_step(x: Tensor, state: LIFState, p: LIFParams, spike_fn: SpikeFn) -> tuple[Tensor, LIFState]:
    v = torch.addcmul(x, state.v, p.beta)  # beta v + I
    spike = spike_fn(v - p.threshold)
    return spike, LIFState(_reset(v, spike, p.threshold))


def if_step(x: Tensor, state: LIFState, p: LIFParams, spike_fn: SpikeFn) -> tuple[Tensor, LIFState]:
    v = state.v + x
    spike = spike_fn(v - p.threshold)
    return spike, LIFState(_reset(v, spike, p.threshold))


# --- ALIF: adaptive threshold ----------------------------------------------------------------------

class ALIFParams(NamedTuple):
    beta: Tensor
    threshold: Tensor  # baseline th0
    rho: float  # adaptation decay
    b: float  # adaptation strength


class ALIFState(NamedTuple):
    v: Tensor  # [B, *shape]
    a: Tensor  # [B, *shape] adaptation trace of past spikes, a low-pass of s in [0, 1]


def alif_step(x: Tensor, state: ALIFState, p: ALIFParams, spike_fn: SpikeFn) -> tuple[Tensor, ALIFState]:
    v = torch.addcmul(x, state.v, p.beta)
    threshold = p.threshold + p.b * state.a  # [B, *shape], the threshold in effect this step
    spike = spike_fn(v - threshold)
    v = _reset(v, spike, threshold)
    # (1 - rho) s as in Bellec et al.'s code: a steady rate r gives a = r, so th0 + b r stays within b of th0
    return spike, ALIFState(v, torch.lerp(spike, state.a, p.rho))


# --- ExpIF and AdEx: bounded exponential upswing --------------------------------------------------

class ExpIFParams(NamedTuple):
    beta: Tensor
    threshold: Tensor
    v_rh: float  # rheobase potential
    inv_delta: float  # 1 / slope factor Delta
    scale: Tensor  # (1 - beta) Delta
    exp_at_rest: float  # exp(-v_rh / Delta), so the drive is 0 at v = 0
    v_reset: float  # the membrane right after a spike


class AdExParams(NamedTuple):
    exp: ExpIFParams
    a: float  # subthreshold adaptation
    b: float  # spike-triggered adaptation
    rho: float  # adaptation decay


class AdExState(NamedTuple):
    v: Tensor  # [B, *shape]
    w: Tensor  # [B, *shape] adaptation current


def _exp_drive(v: Tensor, p: ExpIFParams) -> Tensor:
    """(1 - beta) Delta (exp((v - v_rh)/Delta) - exp(-v_rh/Delta)), the exponent capped."""
    arg = ((v - p.v_rh) * p.inv_delta).clamp(max=EXP_ARG_MAX)
    return (torch.exp(arg) - p.exp_at_rest) * p.scale


def expif_step(x: Tensor, state: LIFState, p: ExpIFParams, spike_fn: SpikeFn) -> tuple[Tensor, LIFState]:
    v = torch.addcmul(x, state.v, p.beta) + _exp_drive(state.v, p)
    spike = spike_fn(v - p.threshold)
    return spike, LIFState(_reset_to(v, spike, p.v_reset))


def adex_step(x: Tensor, state: AdExState, p: AdExParams, spike_fn: SpikeFn) -> tuple[Tensor, AdExState]:
    v = torch.addcmul(x - state.w, state.v, p.exp.beta) + _exp_drive(state.v, p.exp)
    spike = spike_fn(v - p.exp.threshold)
    v = _reset_to(v, spike, p.exp.v_reset)
    w = p.rho * state.w + p.a * v + p.b * spike  # a (v - v_rest) with v_rest = 0
    return spike, AdExState(v, w)


# --- synaptic current cells: Alpha, SecondOrderLIF, Synaptic --------------------------------------

class SynapticParams(NamedTuple):
    beta: Tensor
    threshold: Tensor
    alpha: Tensor  # current decay: 0-dim, or [2, 1, ...] for Alpha's (excitatory, inhibitory) pair


class SynapticState(NamedTuple):
    v: Tensor  # [B, *shape]
    i: Tensor  # [B, *shape], or [2, B, *shape] for Alpha


def synaptic_step(x: Tensor, state: SynapticState, p: SynapticParams,
                  spike_fn: SpikeFn) -> tuple[Tensor, SynapticState]:
    i = torch.addcmul(x, state.i, p.alpha)  # alpha i + I
    v = torch.addcmul(i, state.v, p.beta)
    spike = spike_fn(v - p.threshold)
    return spike, SynapticState(_reset(v, spike, p.threshold), i)


def alpha_step(x: Tensor, state: SynapticState, p: SynapticParams,
               spike_fn: SpikeFn) -> tuple[Tensor, SynapticState]:
    """x: [2, B, *shape] = (relu(I), relu(-I)); the state's i stacks (i_e, i_i) the same way."""
    i = torch.addcmul(x, state.i, p.alpha)
    v = torch.addcmul(i[0] - i[1], state.v, p.beta)
    spike = spike_fn(v - p.threshold)
    return spike, SynapticState(_reset(v, spike, p.threshold), i)


# --- recurrent LIF ---------------------------------------------------------------------------------

class RecurrentParams(NamedTuple):
    beta: Tensor
    threshold: Tensor
    w_rec_t: Tensor  # [N, N], W_rec transposed so that s_prev @ w_rec_t = (W_rec s_prev) per row


class RecurrentState(NamedTuple):
    v: Tensor  # [B, N]
    spike: Tensor  # [B, N], the previous step's spikes


def recurrent_lif_step(x: Tensor, state: RecurrentState, p: RecurrentParams,
                       spike_fn: SpikeFn) -> tuple[Tensor, RecurrentState]:
    drive = torch.addmm(x, state.spike, p.w_rec_t)  # I + W_rec s_prev
    v = torch.addcmul(drive, state.v, p.beta)
    spike = spike_fn(v - p.threshold)
    return spike, RecurrentState(_reset(v, spike, p.threshold), spike)


# --- modules ---------------------------------------------------------------------------------------

class ConstrainedScalar(nn.Module):
    """One scalar per layer: a trained Parameter mapped into its range, or a fixed buffer."""

    _TO_RAW = {"unit": lambda y: math.log(y / (1 - y)), "positive": lambda y: y + math.log(-math.expm1(-y))}
    _FROM_RAW = {"unit": torch.sigmoid, "positive": nn.functional.softplus}

    def __init__(self, value: float, constraint: str, learn: bool):
        super().__init__()
        self.constraint, self.learn = constraint, learn
        if learn:
            self.raw = nn.Parameter(torch.tensor(self._TO_RAW[constraint](value)))
        else:
            self.register_buffer("value", torch.tensor(float(value)), persistent=False)

    def forward(self) -> Tensor:
        return self._FROM_RAW[self.constraint](self.raw) if self.learn else self.value


class SpikingCell(nn.Module):
    """Multi-step base: parameters from the catalog (with overrides), the loop over time, the spike rate."""

    step: ClassVar[Callable]
    has_beta: ClassVar[bool] = True

    def __init__(self, shape: tuple[int, ...], spike_fn: SpikeFn, *, learn_beta: bool = False,
                 learn_threshold: bool = False, **overrides: float):
        super().__init__()
        name = type(self).__name__
        defaults = catalog.cell_param_defaults(name)
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            raise ValueError(f"{name} has no parameter {', '.join(unknown)}; it has {', '.join(defaults)}")
        learnable = catalog.CELLS_BY_NAME[name].learnable
        for flag, what in ((learn_beta, "beta"), (learn_threshold, "threshold")):
            if flag and what not in learnable:
                raise ValueError(f"{name} has no learnable {what}")
        self.shape = tuple(shape)
        self.spike_fn = spike_fn
        self.values = {**defaults, **{k: float(v) for k, v in overrides.items()}}
        if self.has_beta:
            beta = self.initial_beta()
            if not 0 < beta < 1:
                raise ValueError(f"{name}: beta must be in (0, 1), got {beta}")
            self.beta = ConstrainedScalar(beta, "unit", learn_beta)
        if self.values["threshold"] <= 0:
            raise ValueError(f"{name}: threshold must be > 0, got {self.values['threshold']}")
        self.threshold = ConstrainedScalar(self.values["threshold"], "positive", learn_threshold)
        self.last_spike_rate = torch.zeros(())
        self.last_spike_counts = torch.zeros(self.shape)  # [*shape]: spikes per neuron, summed over T and B

    def initial_beta(self) -> float:
        return self.values["beta"]

    def step_params(self, like: Tensor) -> NamedTuple:
        return LIFParams(self.beta(), self.threshold())

    def prepare_input(self, current: Tensor, params: NamedTuple) -> Tensor:
        """The per-step input, computed once over all T (state-independent work lives here)."""
        return current

    def initial_state(self, like: Tensor) -> NamedTuple:
        return LIFState(torch.zeros_like(like))

    def forward(self, current: Tensor) -> Tensor:
        """current [T, B, *shape] -> spikes [T, B, *shape]."""
        if tuple(current.shape[2:]) != self.shape:
            raise ValueError(f"{type(self).__name__} expects [T, B, {self.shape}], got {list(current.shape)}")
        params = self.step_params(current)
        out = self.run(self.prepare_input(current, params), params, self.initial_state(current[0]))
        # kept on the device: the training loop sums them and reads them only when it reports
        self.last_spike_counts = out.detach().sum((0, 1))  # [*shape]
        self.last_spike_rate = self.last_spike_counts.sum() / out.numel()
        return out

    def run(self, inputs: Tensor, params: NamedTuple, state: NamedTuple) -> Tensor:
        """The recurrence over T from ``state``: inputs [T, ...] -> spikes [T, B, *shape]."""
        step, spike_fn = type(self).step, self.spike_fn
        spikes = []
        # unbind, not ``for x in inputs``: iterating selects one step at a time, and each select's
        # backward is a zero-filled [T, ...] tensor, so autograd (and inductor's fused backward, which
        # kept all T of them in one T x T loop) did O(T^2) work; unbind's backward is one stack
        for x in inputs.unbind(0):  # x [B, *shape] (Alpha: [2, B, *shape])
            spike, state = step(x, state, params, spike_fn)
            spikes.append(spike)
        return torch.stack(spikes)

    @torch.no_grad()
    def snapshot(self) -> dict[str, float]:
        """The constrained beta (where the cell has one) and threshold, to float32's 7 significant digits."""
        out = {"beta": self.beta()} if self.has_beta else {}
        out["threshold"] = self.threshold()
        return {name: float(f"{value.item():.7g}") for name, value in out.items()}

    def extra_repr(self) -> str:
        return f"shape={self.shape}, " + ", ".join(f"{k}={v:g}" for k, v in self.values.items())


class LIFCell(SpikingCell):
    step = staticmethod(lif_step)

    def run(self, inputs: Tensor, params: LIFParams, state: LIFState) -> Tensor:
        # A bare spike function has no hand-written BPTT: autograd per step. Under torch.compile the
        # plain loop too: dynamo breaks the graph around LIFSequence, while the unrolled steps fuse.
        if torch.compiler.is_compiling() or not hasattr(self.spike_fn, "pseudo_derivative"):
            return super().run(inputs, params, state)
        return LIFSequence.apply(inputs, state.v, params.beta if self.has_beta else None,
                                 params.threshold, self.spike_fn)


class IFCell(LIFCell):
    step = staticmethod(if_step)
    has_beta = False

    def step_params(self, like: Tensor) -> LIFParams:
        return LIFParams(like.new_ones(()), self.threshold())


class LapicqueCell(LIFCell):
    """beta = 1 - dt/tau; the input gain R dt/tau is computed as R (1 - beta) so it follows a learnt beta."""

    step = staticmethod(lif_step)

    def initial_beta(self) -> float:
        return 1 - self.values["dt"] / self.values["tau"]

    def prepare_input(self, current: Tensor, params: LIFParams) -> Tensor:
        return current * (self.values["R"] * (1 - params.beta))


class ALIFCell(SpikingCell):
    step = staticmethod(alif_step)

    def step_params(self, like: Tensor) -> ALIFParams:
        return ALIFParams(self.beta(), self.threshold(), self.values["rho"], self.values["b"])

    def initial_state(self, like: Tensor) -> ALIFState:
        return ALIFState(torch.zeros_like(like), torch.zeros_like(like))


class ExpIFCell(SpikingCell):
    step = staticmethod(expif_step)

    def step_params(self, like: Tensor) -> ExpIFParams:
        beta, delta, v_rh = self.beta(), self.values["delta"], self.values["v_rh"]
        return ExpIFParams(beta, self.threshold(), v_rh, 1 / delta, (1 - beta) * delta, math.exp(-v_rh / delta),
                           self.values["v_reset"])


class AdExCell(ExpIFCell):
    step = staticmethod(adex_step)

    def step_params(self, like: Tensor) -> AdExParams:
        return AdExParams(super().step_params(like), self.values["a"], self.values["b"], self.values["rho"])

    def initial_state(self, like: Tensor) -> AdExState:
        return AdExState(torch.zeros_like(like), torch.zeros_like(like))


class SynapticCell(SpikingCell):
    step = staticmethod(synaptic_step)

    def step_params(self, like: Tensor) -> SynapticParams:
        # new_full, not new_tensor: a fill on the device, no host copy (CUDA graph capture forbids one)
        return SynapticParams(self.beta(), self.threshold(), like.new_full((), self.values["alpha"]))

    def initial_state(self, like: Tensor) -> SynapticState:
        return SynapticState(torch.zeros_like(like), torch.zeros_like(like))


class SecondOrderLIFCell(SynapticCell):
    """Same step as SynapticCell; the catalog gives it a slower current and faster membrane."""


class AlphaCell(SpikingCell):
    step = staticmethod(alpha_step)

    def step_params(self, like: Tensor) -> SynapticParams:
        # [2, 1, ...]: broadcasts the (excitatory, inhibitory) decays over [2, B, *shape]
        alpha = torch.stack((like.new_full((), self.values["alpha_e"]), like.new_full((), self.values["alpha_i"])))
        return SynapticParams(self.beta(), self.threshold(), alpha.view(2, *[1] * (like.dim() - 1)))

    def prepare_input(self, current: Tensor, params: SynapticParams) -> Tensor:
        return torch.stack((current.clamp(min=0), (-current).clamp(min=0)), dim=1)  # [T, 2, B, *shape]

    def initial_state(self, like: Tensor) -> SynapticState:
        return SynapticState(torch.zeros_like(like), like.new_zeros((2, *like.shape)))


class RecurrentLIFCell(SpikingCell):
    """Fully connected layers only: shape (N,), with a trained [N, N] recurrent weight."""

    step = staticmethod(recurrent_lif_step)

    def __init__(self, shape: tuple[int, ...], spike_fn: SpikeFn, **kwargs):
        super().__init__(shape, spike_fn, **kwargs)
        if len(self.shape) != 1:
            raise ValueError(f"RecurrentLIFCell needs a flat layer shape (N,), got {self.shape}")
        self.w_rec = nn.Parameter(torch.empty(self.shape[0], self.shape[0]))
        nn.init.orthogonal_(self.w_rec, gain=self.values["gain"])

    def step_params(self, like: Tensor) -> RecurrentParams:
        return RecurrentParams(self.beta(), self.threshold(), self.w_rec.t())

    def initial_state(self, like: Tensor) -> RecurrentState:
        return RecurrentState(torch.zeros_like(like), torch.zeros_like(like))


CELL_CLASSES: dict[str, type[SpikingCell]] = {
    cls.__name__: cls
    for cls in (LIFCell, IFCell, ALIFCell, ExpIFCell, AdExCell, LapicqueCell, AlphaCell,
                SecondOrderLIFCell, RecurrentLIFCell, SynapticCell)
}
assert set(CELL_CLASSES) == set(catalog.CELLS_BY_NAME), "cell implementations and catalog disagree"
