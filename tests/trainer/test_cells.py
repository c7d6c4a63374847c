"""Neuron cells against independent scalar references (plain Python floats), in float64.

Each reference below re-states its cell's equation from ``trainer.catalog`` one neuron at a time; the
cell must match it step by step (membrane after reset, spikes), with learned and fixed parameters alike.

Changed in issue 11: ALIF's adaptation is ``a = rho a + (1 - rho) s`` (Bellec et al. 2018; before,
``a = rho a + s``, so one spike raised the threshold from 1.0 to 2.8), and ExpIF and AdEx reset to
``v_reset`` instead of subtracting the threshold (which could leave ExpIF firing forever with no input);
their references below changed with them.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer import catalog, surrogates
from trainer.cells import CELL_CLASSES, EXP_ARG_MAX, LIFCell, RecurrentLIFCell

ALL_CELLS = sorted(CELL_CLASSES)
ATAN = surrogates.get("atan_surrogate")


@pytest.fixture(autouse=True)
def float64():
    """Parameters are created in float64 too, so 0.9 is 0.9 and not float32's 0.89999998."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def run_steps(cell, current: torch.Tensor, spike_fn=ATAN):
    """Drive the cell's pure step function like forward does; returns (spikes [T, ...], states)."""
    params = cell.step_params(current)
    state = cell.initial_state(current[0])
    spikes, states = [], []
    for x in cell.prepare_input(current, params):
        spike, state = type(cell).step(x, state, params, spike_fn)
        spikes.append(spike)
        states.append(state)
    return torch.stack(spikes), states


# --- scalar references: one neuron, inputs xs, returns (membrane after reset, spikes) per step --------

def _fire(v: float, threshold: float) -> float:
    assert abs(v - threshold) > 1e-6, "input puts the membrane on the threshold: ambiguous test"
    return 1.0 if v > threshold else 0.0


def ref_lif(xs, p, gain=1.0, beta=None):
    beta = p["beta"] if beta is None else beta
    v, vs, ss = 0.0, [], []
    for x in xs:
        v = beta * v + gain * x
        s = _fire(v, p["threshold"])
        v -= s * p["threshold"]
        vs.append(v)
        ss.append(s)
    return vs, ss


def ref_if(xs, p):
    return ref_lif(xs, p, beta=1.0)


def ref_lapicque(xs, p):
    k = p["dt"] / p["tau"]
    return ref_lif(xs, p, gain=p["R"] * k, beta=1 - k)


def ref_alif(xs, p):
    v, a, vs, ss = 0.0, 0.0, [], []
    for x in xs:
        v = p["beta"] * v + x
        th = p["threshold"] + p["b"] * a
        s = _fire(v, th)
        v -= s * th
        a = p["rho"] * a + (1 - p["rho"]) * s  # Bellec et al. 2018
        vs.append(v)
        ss.append(s)
    return vs, ss


def _exp_drive(v, p):
    arg = min((v - p["v_rh"]) / p["delta"], EXP_ARG_MAX)
    return (1 - p["beta"]) * p["delta"] * (math.exp(arg) - math.exp(-p["v_rh"] / p["delta"]))


def ref_expif(xs, p):
    v, vs, ss = 0.0, [], []
    for x in xs:
        v = p["beta"] * v + _exp_drive(v, p) + x
        s = _fire(v, p["threshold"])
        v = p["v_reset"] if s else v
        vs.append(v)
        ss.append(s)
    return vs, ss


def ref_adex(xs, p):
    v, w, vs, ss = 0.0, 0.0, [], []
    for x in xs:
        v = p["beta"] * v + _exp_drive(v, p) + x - w
        s = _fire(v, p["threshold"])
        v = p["v_reset"] if s else v
        w = p["rho"] * w + p["a"] * v + p["b"] * s
        vs.append(v)
        ss.append(s)
    return vs, ss


def ref_alpha(xs, p):
    v, ie, ii, vs, ss = 0.0, 0.0, 0.0, [], []
    for x in xs:
        ie = p["alpha_e"] * ie + max(x, 0.0)
        ii = p["alpha_i"] * ii + max(-x, 0.0)
        v = p["beta"] * v + ie - ii
        s = _fire(v, p["threshold"])
        v -= s * p["threshold"]
        vs.append(v)
        ss.append(s)
    return vs, ss


def ref_synaptic(xs, p):
    v, i, vs, ss = 0.0, 0.0, [], []
    for x in xs:
        i = p["alpha"] * i + x
        v = p["beta"] * v + i
        s = _fire(v, p["threshold"])
        v -= s * p["threshold"]
        vs.append(v)
        ss.append(s)
    return vs, ss


def ref_recurrent_layer(xs_by_neuron, p, w):
    """All neurons together (they are coupled): v_n = beta v_n + x_n + sum_j w[n][j] s_prev[j]."""
    n = len(xs_by_neuron)
    v, s_prev = [0.0] * n, [0.0] * n
    vs, ss = [[] for _ in range(n)], [[] for _ in range(n)]
    for t in range(len(xs_by_neuron[0])):
        s_now = []
        for k in range(n):
            vk = p["beta"] * v[k] + xs_by_neuron[k][t] + sum(w[k][j] * s_prev[j] for j in range(n))
            s = _fire(vk, p["threshold"])
            v[k] = vk - s * p["threshold"]
            s_now.append(s)
            vs[k].append(v[k])
            ss[k].append(s)
        s_prev = s_now
    return vs, ss


REFERENCES = {
    "LIFCell": ref_lif, "IFCell": ref_if, "LapicqueCell": ref_lapicque, "ALIFCell": ref_alif,
    "ExpIFCell": ref_expif, "AdExCell": ref_adex, "AlphaCell": ref_alpha,
    "SynapticCell": ref_synaptic, "SecondOrderLIFCell": ref_synaptic,
}
# Input scale per cell so every neuron sees sub-threshold stretches, spikes and resets in 16 steps.
INPUT_SCALE = {"LapicqueCell": 1.2, "AlphaCell": 0.12, "SynapticCell": 0.2, "SecondOrderLIFCell": 0.1,
               "IFCell": 0.6}


def golden_inputs(cell_type: str, steps: int = 16) -> list[list[float]]:
    """Per neuron, a time-varying input with negative stretches: [[x_t for t] for neuron]."""
    scale = INPUT_SCALE.get(cell_type, 1.0)
    return [[scale * (base + amp * math.sin(0.7 * t + n)) for t in range(steps)]
            for n, (base, amp) in enumerate([(0.3, 0.0), (0.35, 0.3), (0.2, 0.7), (0.5, 0.5)])]


def test_lif_hand_computed_golden():
    cell = LIFCell((1,), ATAN)
    spikes, states = run_steps(cell, torch.full((5, 1, 1), 0.3))
    assert [s.v.item() for s in states] == pytest.approx([0.3, 0.57, 0.813, 0.0317, 0.32853], abs=1e-12)
    assert spikes.flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("variant", ["fixed", "learned", "overridden"])
@pytest.mark.parametrize("cell_type", ALL_CELLS)
def test_golden_trajectory_matches_scalar_reference(cell_type, variant):
    spec = catalog.CELLS_BY_NAME[cell_type]
    p = catalog.cell_param_defaults(cell_type)
    overrides = {}
    if variant == "overridden":  # away from 1.0 and 0.9, so a mixed-up threshold or decay shows
        overrides = {"threshold": 0.8, **({"beta": 0.85} if "beta" in p else {"tau": 16.0} if "tau" in p else {})}
        p.update(overrides)
    flags = {f"learn_{what}": variant == "learned" for what in spec.learnable}
    cell = CELL_CLASSES[cell_type]((4,), ATAN, **flags, **overrides)
    xs = golden_inputs(cell_type)
    current = torch.tensor(xs).T.unsqueeze(1)  # [T, 1, 4]
    if cell_type == "RecurrentLIFCell":
        ref_vs, ref_ss = ref_recurrent_layer(xs, p, cell.w_rec.tolist())
    else:
        ref_vs, ref_ss = zip(*(REFERENCES[cell_type](x, p) for x in xs))
    spikes, states = run_steps(cell, current)
    got_v = torch.stack([s.v for s in states])[:, 0].T.tolist()  # [neuron][t]
    for n in range(4):
        assert spikes[:, 0, n].tolist() == list(ref_ss[n]), f"neuron {n} spikes"
        assert got_v[n] == pytest.approx(list(ref_vs[n]), abs=1e-6), f"neuron {n} membrane"
    n_spikes = sum(map(sum, ref_ss))
    assert 4 <= n_spikes <= 0.75 * 16 * 4, "the golden input should both spike and stay quiet"
    assert torch.equal(cell(current), spikes)  # the module's loop agrees with the step function
    assert cell.last_spike_rate.item() == pytest.approx(n_spikes / 64)


@pytest.mark.parametrize("cell_type", ALL_CELLS)
def test_silent_at_rest_and_fires_under_strong_input(cell_type):
    cell = CELL_CLASSES[cell_type]((3,), ATAN)
    rest_spikes, rest_states = run_steps(cell, torch.zeros(100, 2, 3))
    assert rest_spikes.sum().item() == 0
    assert all(t.abs().max().item() < 1e-12 for t in rest_states[-1])  # every state variable stays at 0
    driven = cell(torch.full((50, 2, 3), 5.0))
    assert driven.sum().item() > 0
    assert 0 < cell.last_spike_rate.item() <= 1


@pytest.mark.parametrize("cell_type", ["ExpIFCell", "AdExCell"])
def test_exponential_term_stays_bounded(cell_type):
    cell = CELL_CLASSES[cell_type]((2,), ATAN)
    _, states = run_steps(cell, torch.full((100, 1, 2), 1e6).requires_grad_())
    assert all(torch.isfinite(t).all() for s in states for t in s)


@pytest.mark.parametrize("cell_type", ALL_CELLS)
def test_gradients_reach_every_parameter_and_the_input(cell_type):
    learnable = catalog.CELLS_BY_NAME[cell_type].learnable
    cell = CELL_CLASSES[cell_type]((6,), ATAN, **{f"learn_{w}": True for w in learnable})
    torch.manual_seed(0)
    current = (torch.rand(12, 3, 6) * 0.8).requires_grad_()
    (cell(current) * torch.randn(12, 3, 6)).sum().backward()
    params = dict(cell.named_parameters())
    expected = {f"{w}.raw" for w in learnable} | ({"w_rec"} if cell_type == "RecurrentLIFCell" else set())
    assert set(params) == expected
    for name, param in params.items():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    assert current.grad.abs().sum() > 0


class _StepWithoutGradient:
    """The same forward step, with no gradient at all through the spike."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype).detach()


def _membrane_grads(cell, current, spike_fn):
    current = current.clone().requires_grad_()
    _, states = run_steps(cell, current, spike_fn)
    params = [p for p in cell.parameters()]
    return torch.autograd.grad(states[-1].v.sum(), [current, *params], allow_unused=True)


@pytest.mark.parametrize("cell_type", ALL_CELLS)
def test_reset_carries_no_gradient(cell_type):
    """One spiking step from rest: the membrane's gradient must not see the spike's surrogate."""
    learnable = catalog.CELLS_BY_NAME[cell_type].learnable
    cell = CELL_CLASSES[cell_type]((3,), ATAN, **{f"learn_{w}": True for w in learnable})
    strong = {"LapicqueCell": 3.0}.get(cell_type, 1.4)
    current = torch.tensor([[[strong, 0.5 * strong, -strong]]])  # [T=1, B=1, 3]: spike, rest, negative
    spikes, _ = run_steps(cell, current)
    assert spikes[0, 0, 0].item() == 1.0
    with_surrogate = _membrane_grads(cell, current, ATAN)
    without = _membrane_grads(cell, current, _StepWithoutGradient())
    for a, b in zip(with_surrogate, without):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell_type", ["LIFCell", "IFCell", "LapicqueCell", "ExpIFCell", "AlphaCell",
                                       "SynapticCell", "SecondOrderLIFCell"])
def test_reset_carries_no_gradient_over_many_steps(cell_type):
    """Cells whose spikes feed back only through the reset: the whole trajectory's gradient ignores it."""
    cell = CELL_CLASSES[cell_type]((4,), ATAN, learn_threshold=True)
    current = torch.tensor(golden_inputs(cell_type)).T.unsqueeze(1)
    assert run_steps(cell, current)[0].sum() > 0
    for a, b in zip(_membrane_grads(cell, current, ATAN), _membrane_grads(cell, current, _StepWithoutGradient())):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_learned_parameters_stay_in_range_and_snapshot_reports_constrained_values():
    cell = LIFCell((2,), ATAN, learn_beta=True, learn_threshold=True)
    assert cell.snapshot() == {"beta": 0.9, "threshold": 1.0}
    assert cell.beta().item() == pytest.approx(0.9, abs=1e-12)
    with torch.no_grad():
        for raw in (-50.0, 50.0):
            cell.beta.raw.fill_(raw)
            cell.threshold.raw.fill_(raw)
            assert 0 < cell.beta().item() <= 1 and cell.threshold().item() > 0
    cell.beta.raw.data.fill_(0.0)
    assert cell.snapshot()["beta"] == 0.5


def test_snapshot_keys_per_cell():
    assert set(CELL_CLASSES["IFCell"]((2,), ATAN).snapshot()) == {"threshold"}
    assert CELL_CLASSES["LapicqueCell"]((2,), ATAN).snapshot() == {"beta": 0.95, "threshold": 1.0}
    for name in set(ALL_CELLS) - {"IFCell"}:
        assert set(CELL_CLASSES[name]((2,), ATAN).snapshot()) == {"beta", "threshold"}


def test_overrides_and_invalid_construction():
    assert LIFCell((2,), ATAN, beta=0.5).snapshot()["beta"] == 0.5
    with pytest.raises(ValueError, match="no parameter"):
        LIFCell((2,), ATAN, tau=3.0)
    with pytest.raises(ValueError, match="no learnable beta"):
        CELL_CLASSES["IFCell"]((2,), ATAN, learn_beta=True)
    with pytest.raises(ValueError, match="beta must be in"):
        CELL_CLASSES["LapicqueCell"]((2,), ATAN, tau=1.0)
    with pytest.raises(ValueError, match="threshold must be > 0"):
        LIFCell((2,), ATAN, threshold=0.0)
    with pytest.raises(ValueError, match="flat layer shape"):
        RecurrentLIFCell((2, 3, 3), ATAN)
    with pytest.raises(ValueError, match="expects"):
        LIFCell((2,), ATAN)(torch.zeros(3, 1, 5))


@pytest.mark.parametrize("cell_type", sorted(set(ALL_CELLS) - {"RecurrentLIFCell"}))
def test_conv_shaped_layers(cell_type):
    cell = CELL_CLASSES[cell_type]((2, 3, 3), ATAN)
    out = cell(torch.full((6, 2, 2, 3, 3), 5.0))
    assert out.shape == (6, 2, 2, 3, 3) and out.sum() > 0


def test_recurrent_weight_is_orthogonal_times_gain():
    cell = RecurrentLIFCell((8,), ATAN)
    gain = catalog.cell_param_defaults("RecurrentLIFCell")["gain"]
    torch.testing.assert_close(cell.w_rec @ cell.w_rec.T, gain**2 * torch.eye(8), atol=1e-10, rtol=0)


def test_every_catalog_cell_is_implemented():
    assert set(CELL_CLASSES) == {spec.name for spec in catalog.CELLS}


@pytest.mark.parametrize("surrogate", [s.name for s in catalog.SURROGATES])
@pytest.mark.parametrize("cell_type", ["LIFCell", "IFCell", "LapicqueCell"])
def test_fused_lif_recurrence_matches_autograd_through_the_step_function(cell_type, surrogate):
    """forward() runs LIFSequence (hand-written BPTT); its gradients equal autograd's through lif_step."""
    learnable = catalog.CELLS_BY_NAME[cell_type].learnable
    spike_fn = surrogates.get(surrogate)
    cell = CELL_CLASSES[cell_type]((5,), spike_fn, **{f"learn_{w}": True for w in learnable})
    torch.manual_seed(0)
    current = torch.rand(15, 3, 5) * {"LapicqueCell": 1.2}.get(cell_type, 0.6)
    weights = torch.randn(15, 3, 5)  # a loss that weighs each spike differently
    params = [current.requires_grad_(), *cell.parameters()]

    fused = cell(current)
    fused_grads = torch.autograd.grad((fused * weights).sum(), params)
    stepped, _ = run_steps(cell, current, spike_fn)
    stepped_grads = torch.autograd.grad((stepped * weights).sum(), params)

    assert torch.equal(fused, stepped) and 0 < fused.mean() < 1
    assert type(fused.grad_fn).__name__ == "LIFSequenceBackward"
    for fused_grad, stepped_grad in zip(fused_grads, stepped_grads):
        torch.testing.assert_close(fused_grad, stepped_grad, rtol=1e-9, atol=1e-12)
        assert fused_grad.abs().sum() > 0


def test_fused_recurrence_accepts_a_broadcast_current_and_a_bare_spike_function():
    cell = LIFCell((4,), ATAN)
    once = torch.rand(2, 4) * 0.6
    broadcast = once.expand(12, 2, 4)  # direct encoding: the same current every step, no copy
    torch.testing.assert_close(cell(broadcast), cell(broadcast.contiguous()))
    bare = LIFCell((4,), _StepWithoutGradient())  # no pseudo_derivative: the per-step autograd path
    torch.testing.assert_close(bare(broadcast), cell(broadcast))


def test_alif_adaptation_keeps_its_gradient():
    """Unlike the reset, the adaptation passes gradient on: with a spike at t=0 and a = (1 - rho) s_0,
    ds_1/dx_0 = f'(h_1) (beta - b (1 - rho) f'(h_0)), the second term through th_1 = th0 + b a."""
    cell = CELL_CLASSES["ALIFCell"]((1,), ATAN)
    p = catalog.cell_param_defaults("ALIFCell")
    current = torch.tensor([[[1.4]], [[0.5]]]).requires_grad_()
    spikes, states = run_steps(cell, current)
    assert spikes.flatten().tolist() == [1.0, 0.0]
    (grad,) = torch.autograd.grad(spikes[1].sum(), current)
    h0 = 1.4 - p["threshold"]
    a_1 = 1 - p["rho"]
    h1 = p["beta"] * (1.4 - p["threshold"]) + 0.5 - (p["threshold"] + p["b"] * a_1)
    f = ATAN.pseudo_derivative
    expected = f(torch.tensor(h1)) * (p["beta"] - p["b"] * a_1 * f(torch.tensor(h0)))
    assert grad[0].item() == pytest.approx(expected.item(), rel=1e-9)


def test_adex_adaptation_keeps_its_gradient():
    """w = rho w + a v + b s: the b s term carries the spike's surrogate gradient into later membranes."""
    cell = CELL_CLASSES["AdExCell"]((1,), ATAN)
    current = torch.tensor([[[1.4]], [[0.5]]])
    assert run_steps(cell, current)[0].flatten().tolist() == [1.0, 0.0]
    with_surrogate = _membrane_grads(cell, current, ATAN)[0]
    without = _membrane_grads(cell, current, _StepWithoutGradient())[0]
    b = catalog.cell_param_defaults("AdExCell")["b"]
    f0 = ATAN.pseudo_derivative(torch.tensor(1.4 - 1.0)).item()
    assert (with_surrogate - without)[0].item() == pytest.approx(-b * f0, rel=1e-9)


# --- return to rest: after any input, zero input brings every cell back to rest and silence -------------

REST_STEPS = 1000  # ALIF's and AdEx's adaptation decay with rho = 0.99: 0.99^1000 ~ 4e-5
REST_TOLERANCE = 1e-3


@pytest.mark.parametrize("cell_type", ALL_CELLS)
@settings(max_examples=8, deadline=None, database=None)
@given(seed=st.integers(0, 2**31 - 1), length=st.integers(1, 40), scale=st.floats(0.1, 50.0),
       bias=st.floats(-1.0, 1.0))
def test_every_cell_returns_to_rest_and_stops_firing_after_its_input_ends(cell_type, seed, length, scale, bias):
    """Any input (here 32 random sequences per example, both signs, up to 50 times the threshold) followed
    by zero input: the cell stops firing and every state variable returns to 0.

    IF has no leak: reset by subtraction, it fires out the charge it holds above the threshold, one spike
    per threshold, then keeps the sub-threshold rest of it unchanged."""
    cell = CELL_CLASSES[cell_type]((8,), ATAN)
    gen = torch.Generator().manual_seed(seed)
    gain = {"LapicqueCell": 2.0}.get(cell_type, 1.0)  # its input gain R dt / tau is 1/2
    drive = gain * scale * (torch.randn(length, 4, 8, generator=gen) + bias)
    rest_steps = REST_STEPS
    if cell_type == "IFCell":
        held = torch.cumsum(drive, 0).max().item()  # at most the charge it can hold at the input's end
        rest_steps += max(0, math.ceil(held))
    with torch.no_grad():
        spikes, states = run_steps(cell, torch.cat([drive, torch.zeros(rest_steps, 4, 8)]))
    quiet_from = length + rest_steps - REST_STEPS // 2
    assert spikes[quiet_from:].sum().item() == 0, f"still firing {rest_steps - REST_STEPS // 2} steps after the input"
    if cell_type == "IFCell":
        assert torch.equal(states[-1].v, states[quiet_from].v) and states[-1].v.max().item() <= 1.0
    else:
        for name, value in states[-1]._asdict().items():
            assert value.abs().max().item() < REST_TOLERANCE, f"{name} did not return to rest"


@pytest.mark.parametrize("cell_type", ["ExpIFCell", "AdExCell"])
def test_exponential_cells_do_not_lock_into_firing(cell_type):
    """Issue 11's case: one step of 3.5 then 59 zero steps fired 59 times when ExpIF reset by subtraction
    (v - th stayed past the point where the exponential outgrows the leak); with the reset to v_reset it
    fires once."""
    cell = CELL_CLASSES[cell_type]((1,), ATAN)
    current = torch.zeros(60, 1, 1)
    current[0] = 3.5
    spikes, states = run_steps(cell, current)
    assert spikes.flatten().tolist() == [1.0] + [0.0] * 59
    assert states[0].v.item() == catalog.cell_param_defaults(cell_type)["v_reset"]
