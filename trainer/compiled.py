"""The training step through ``torch.compile``, and when a job is worth compiling (``config.compile``).

Why it is faster: while dynamo traces, the LIF family runs its plain per-step loop instead of the
hand-written ``trainer.fused.LIFSequence`` (``LIFCell.run``), so inductor sees the whole unrolled
forward and its backward (T steps of [B, N] elementwise work between two matmuls) and fuses them into a
few C++ loops; on the CPU with Adam or AdamW the optimiser's update joins the same graph, so one call
per step replaces the autograd engine, AOTAutograd's wrappers and the optimiser's Python
(``CompiledStep``). What it costs: tens of seconds of compiling before the first compiled step (less with a
warm inductor cache), during which the job does not train. Hence ``compile``:

- ``off``: the eager step (``trainer.step.EagerStep``), always;
- ``on``: the compiled step from the first batch;
- ``auto`` (CPU jobs; elsewhere it means eager here): the first ``PROBE_SKIP + PROBE_STEPS`` steps run
  eagerly and the last ``PROBE_STEPS`` of them are timed (their median is ``t_eager``); the job then
  compiles when ``remaining_steps x t_eager x (1 - compiled_fraction) > expected_compile_s``, i.e. when
  the time the remaining steps would save is more than the compile is expected to take. The expected
  compile is its CPU seconds times the wall seconds per CPU second this process gets right now (so a
  busy machine, which slows the eager steps, does not make a compile look cheap). The fraction and the
  CPU seconds come from this server's own measurements of the same network shape (``CompileRecords``),
  or from the defaults below for a shape it has never compiled.

Only full batches go through the compiled graph: the epoch's last, smaller batch runs eagerly, so the
graph is traced for one fixed shape (``dynamic=False``) and never recompiled. Validation calls the
model directly under ``no_grad``, eagerly (the fused Function's forward is already cheap there).

The inductor cache lives in the data directory (``<data_dir>/compile-cache``), so the jobs of one server
compile each network shape once, and later jobs of that shape load the compiled kernels from disk. The
loop checks for a stop between batches only, so a compile polls for one and is cut short by it.
Each epoch event's ``train_step`` (``CompilingStep.report``) says which step ran, why, and how long the
compile took. The same goes to the ``snnmon.compile`` logger at INFO, which a worker leaves unconfigured:
its stderr is the server's log, whose lines may have to be JSON.
"""

from __future__ import annotations

import _weakrefset
import json
import os
import logging
import resource
import signal
import statistics
import threading
import time
import weakref
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value
from torch.nn import functional as F

from trainer.config import TrainConfig
from trainer.optim import AdamInGraph, clip_gradients
from trainer.step import EagerStep

CACHE_FOLDER = "compile-cache"
RECORDS_FILE = "compile-times.json"
PROBE_SKIP = 3  # the first eager steps warm the allocator and kernels: not timed
PROBE_STEPS = 10  # eager steps timed before ``auto`` decides; a median of 10 shrugs off a busy moment
# For a shape this server has not compiled yet (docs/benchmarks.md, "The compiled training step"): a cold
# compile of the default network's whole step took 59 s on a quiet 2-core machine (14 s warm), and
# 1,021 s of wall time at a load average of 20 (an older, forward-only compile); 60 CPU seconds. The
# compiled step of the default network took 0.40 of the eager step's time (6,879 vs 17,325 samples/s,
# quiet, interleaved).
DEFAULT_COMPILE_CPU_S = 60.0
DEFAULT_COMPILED_FRACTION = 0.40
# A compile that finds the shape's kernels in the cache still traces the graph: the tiny test network
# took 148 s warm vs 345 s cold on the busy machine; 0.3 errs towards eager.
WARM_COMPILE_FRACTION = 0.3
# A compile is mostly single-threaded Python, and on a shared machine it gets a share of a core: the
# wall time it will take is its CPU time times the wall seconds per CPU second of a small Python loop
# run just before deciding (1 on an idle core, 20 when the process gets 5% of one).
SHARE_PROBE_LOOP = 100_000
SHARE_PROBE_ROUNDS = 10
# The defaults above were measured on SpikingNet with these cells (one membrane, the fused Function's
# family); auto compiles anything else only after a job with compile on has measured its shape.
MEASURED_CELLS = ("LIFCell", "IFCell", "LapicqueCell")
COMPILED_TIMED_STEPS = 10  # compiled steps timed after the compile, for the record
STOP_POLL_S = 0.05  # how often a compile checks for a stop: the loop's own reaction time between batches

log = logging.getLogger("snnmon.compile")  # the host decides where it goes; a worker sends it nowhere


class CompileInterrupted(BaseException):
    """Raised in the main thread by SIGUSR1 when a stop comes during a compile; a BaseException, so
    torch's compiler (which turns ordinary exceptions into fallbacks) lets it through."""


def _drops_exceptions(frame) -> bool:
    """Python is running a weakref callback or a finaliser (garbage collection mid-compile): an exception
    raised there is printed as "Exception ignored" and dropped, not propagated to the compile."""
    code = frame.f_code if frame is not None else None
    return code is not None and (code.co_name == "__del__" or code.co_filename in _WEAKREF_FILES)


_WEAKREF_FILES = frozenset({weakref.__file__, _weakrefset.__file__})


def cache_dir_for(data_dir: str | os.PathLike | None) -> Path:
    """``<data_dir>/compile-cache``, the data directory defaulting as ``snnmon`` defaults it."""
    if data_dir is None:
        from trainer.mnist import default_data_dir

        data_dir = default_data_dir()
    return Path(data_dir).expanduser() / CACHE_FOLDER


def use_cache_dir(path: Path) -> None:
    """Point inductor's on-disk cache at ``path``; created only when a job is about to compile."""
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)  # read by inductor at each cache lookup


def shape_key(config: TrainConfig, device: str) -> str:
    """What the compiled graph depends on: a job with the same key reuses the cached kernels."""
    fields = ("dataset", "network", "cell_type", "surrogate", "timesteps", "hidden", "batch_size",
              "learn_beta", "learn_threshold", "encoding")
    parts = [f"{name}={getattr(config, name)}" for name in fields]
    return ",".join([*parts, f"device={device.split(':')[0]}", f"threads={torch.get_num_threads()}",
                     f"torch={torch.__version__}"])


def wall_per_cpu_second() -> float:
    """Wall-clock seconds per CPU second this process gets now, from a short pure-Python loop."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(SHARE_PROBE_ROUNDS):  # about 25 ms of CPU time: longer than a scheduler's time slice
        sum(range(SHARE_PROBE_LOOP))
    return max(1.0, (time.perf_counter() - wall) / max(time.process_time() - cpu, 1e-6))


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (inductor's C++ compiler runs)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def compile_pays(remaining_steps: int, eager_step_s: float, compiled_fraction: float,
                 expected_compile_s: float) -> bool:
    """``auto``'s rule: the remaining steps would save more time than the compile takes."""
    return remaining_steps * eager_step_s * (1 - compiled_fraction) > expected_compile_s


class CompileRecords:
    """Measured compile and step times per shape key, a small JSON file next to inductor's cache.

    Last write wins: two jobs finishing a compile at once may keep only one record, which costs at
    most one more estimate from the defaults."""

    def __init__(self, cache_dir: Path):
        self.cache_dir, self.path = cache_dir, cache_dir / RECORDS_FILE

    def read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> dict | None:
        return self.read().get(key)

    def put(self, key: str, record: dict) -> None:
        records = self.read()
        records[key] = record
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(records, indent=1, sort_keys=True))
        os.replace(temporary, self.path)


class CompiledStep:
    """The training step through ``torch.compile``. Returns what ``EagerStep`` returns.

    On the CPU with Adam or AdamW and no gradient clipping (the defaults), the whole step is one graph:
    ``torch.func.grad_and_value`` gives the loss and the gradients, and ``AdamInGraph`` updates the
    optimiser's parameters and state in the same graph. One call per step then pays dynamo's guards
    once, and no autograd engine, AOTAutograd wrappers or optimiser Python run around the kernels
    (docs/benchmarks.md: about a third of the step). Elsewhere the forward and the loss are compiled
    (inductor also compiles their backward) and the clipping and ``optimizer.step()`` stay eager."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig):
        self.model, self.optimizer, self.grad_clip = model, optimizer, config.grad_clip
        self.batch_size = config.batch_size
        self.cells = list(model.spiking_layers().values())
        self.eager = EagerStep(model, optimizer, config)  # the last, smaller batch of an epoch
        # dynamo caches compiled code per code object, with guards on the model it saw, and gives up
        # after a few models (recompile_limit): a process that runs job after job starts afresh each time
        torch._dynamo.reset()
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        # On the CPU, inductor's C++ wrapper calls each graph's kernels and matmuls from C++ rather than
        # from generated Python
        options = {"cpp_wrapper": True} if on_cpu else None
        self.adam = AdamInGraph(optimizer) if on_cpu and AdamInGraph.supports(optimizer) and not self.grad_clip else None
        if self.adam:
            names = {id(p): name for name, p in model.named_parameters()}
            self.param_names = [names[id(p)] for p in self.adam.params]
            self._compiled = torch.compile(self._whole_step, dynamic=False, options=options)
        else:
            self._compiled = torch.compile(self._forward_loss, dynamic=False, options=options)
        self.compile_s: float | None = None  # the first compiled call, compile included
        self.compile_cpu_s: float | None = None  # its CPU seconds, C++ compiler runs included

    def _forward_loss(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        counts = self.model(inputs).sum(0)  # [B, classes] spike counts over T
        return F.cross_entropy(counts, labels), counts, *self._spike_counts_and_rates()

    def _spike_counts_and_rates(self) -> tuple[list[Tensor], list[Tensor]]:
        """What each cell's forward left in ``last_spike_counts`` ([*shape]) and ``last_spike_rate`` ([]),
        returned so that they leave the graph as outputs (``trainer.activity`` sums the counts)."""
        return [cell.last_spike_counts for cell in self.cells], [cell.last_spike_rate for cell in self.cells]

    def _whole_step(self, inputs: Tensor, labels: Tensor, lr: Tensor, params: list[Tensor],
                    exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], steps: list[Tensor]):
        def loss_of(weights: list[Tensor]):
            counts = functional_call(self.model, dict(zip(self.param_names, weights)), (inputs,)).sum(0)
            return F.cross_entropy(counts, labels), (counts.detach(), *self._spike_counts_and_rates())

        grads, (loss, (counts, spike_counts, spike_rates)) = grad_and_value(loss_of, has_aux=True)(params)
        for cell, cell_counts, rate in zip(self.cells, spike_counts, spike_rates):
            # the forward left grad_and_value's wrapped tensors there; its unwrapped outputs replace them
            cell.last_spike_counts, cell.last_spike_rate = cell_counts, rate
        self.adam.update_(grads, lr, params, exp_avgs, exp_avg_sqs, steps)
        return loss.detach(), counts, spike_counts, spike_rates

    def __call__(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if labels.shape[0] != self.batch_size:
            return self.eager(inputs, labels)
        started, cpu_started = (time.perf_counter(), cpu_seconds()) if self.compile_s is None else (None, None)
        args = (inputs, labels, *self.adam.tensors()) if self.adam else (inputs, labels)
        if started is not None:
            loss, counts, spike_counts, spike_rates = self._compiled(*args)
        else:
            # After the first call dynamo's guards (about 450 checks on the model, the optimiser state
            # and the inputs: 0.3 to 0.4 ms, a tenth of a CPU step) can only pass: every call comes from
            # this loop with a full batch of the traced shape, in training mode with gradients on, and
            # the same model, optimiser and hyperparameters; tensors are inputs, read afresh each call.
            with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                loss, counts, spike_counts, spike_rates = self._compiled(*args)
        for cell, cell_counts, rate in zip(self.cells, spike_counts, spike_rates):  # as SpikingCell.forward
            cell.last_spike_counts, cell.last_spike_rate = cell_counts, rate
        if self.adam:
            # torch's LR scheduler warns when it steps before the optimiser's step() has been called
            # (the flag its wrapper of step() sets); the update did happen, in the graph
            self.optimizer._opt_called = True
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(self.model, self.grad_clip)
            self.optimizer.step()
        if started is not None:
            self.compile_s, self.compile_cpu_s = time.perf_counter() - started, cpu_seconds() - cpu_started
        return loss.detach(), counts.detach()


class CompilingStep:
    """The step of a job with ``compile`` on, or auto on the CPU: eager or ``CompiledStep``, as decided.

    ``report()`` says which runs, why, and how long the compile took (``None`` until it has run); the
    epoch events carry it. Nothing of torch's compiler is imported unless the job compiles."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, *,
                 remaining_steps: int, key: str, records: CompileRecords,
                 should_stop: Callable[[], bool] = lambda: False):
        self.model, self.optimizer, self.config = model, optimizer, config
        self.remaining, self.key, self.records, self.should_stop = remaining_steps, key, records, should_stop
        self.record = records.get(key)  # this server's measurements of the shape, or None
        self.eager = EagerStep(model, optimizer, config)
        self.compiled: CompiledStep | None = None
        self.current: EagerStep | CompiledStep | None = None  # None while auto times eager steps
        self.reason = ""
        self.steps = 0
        self.eager_times: list[float] = []  # auto's timed eager steps
        self.compiled_times: list[float] = []  # full-batch compiled steps after the compiling one
        if config.compile == "on":
            self._choose("compiled", "compile on")
        elif remaining_steps <= PROBE_SKIP + PROBE_STEPS:
            self._choose("eager", f"compile auto: {remaining_steps} steps are too few to win back a compile")
        elif self.record is None and not (config.network == "SpikingNet" and config.cell_type in MEASURED_CELLS):
            self._choose("eager", f"compile auto: no measured gain for {config.network} with "
                                  f"{config.cell_type} yet (a job with compile on measures it)")

    def __call__(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        self.steps += 1
        step = self.current or self.eager
        full = labels.shape[0] == self.config.batch_size
        compiling = step is self.compiled and step.compile_s is None and full
        started = time.perf_counter()
        out = self._compile(inputs, labels) if compiling else step(inputs, labels)
        elapsed = time.perf_counter() - started
        if self.current is None:
            if self.steps > PROBE_SKIP:
                self.eager_times.append(elapsed)
            if len(self.eager_times) == PROBE_STEPS:
                self._decide()
        elif step is self.compiled and full and not compiling:
            self._time_compiled(elapsed)
        return out

    def report(self) -> dict:
        """{"mode", "kind": "compiled" | "eager" | "timing", "reason", "compile_s"}: the epoch event's
        ``train_step``."""
        kind = "timing" if self.current is None else "compiled" if self.current is self.compiled else "eager"
        compile_s = self.compiled.compile_s if self.compiled else None
        return {"mode": self.config.compile, "kind": kind, "reason": self.reason, "compile_s": compile_s}

    def _decide(self) -> None:
        eager_s = statistics.median(self.eager_times)
        record = self.record or {}
        fraction = record.get("compiled_fraction", DEFAULT_COMPILED_FRACTION)
        compile_cpu_s = record.get("compile_cpu_s", DEFAULT_COMPILE_CPU_S)
        if record.get("cold"):  # that compile filled the cache: this one reads it
            compile_cpu_s *= WARM_COMPILE_FRACTION
        share = wall_per_cpu_second()
        compile_s = compile_cpu_s * share
        remaining = self.remaining - self.steps
        figures = (f"{remaining} steps x {eager_s * 1000:.2f} ms x (1 - {fraction:.2f}) = "
                   f"{remaining * eager_s * (1 - fraction):.1f} s saved vs {compile_cpu_s:.1f} CPU s x "
                   f"{share:.1f} = {compile_s:.1f} s to compile "
                   f"({'as measured here before' if self.record else 'defaults'})")
        if compile_pays(remaining, eager_s, fraction, compile_s):
            self._choose("compiled", f"compile auto: compiles, {figures}")
        else:
            self._choose("eager", f"compile auto: stays eager, {figures}")

    def _choose(self, kind: str, reason: str) -> None:
        if kind == "compiled" and self.compiled is None:
            self.compiled = CompiledStep(self.model, self.optimizer, self.config)
        self.current = self.compiled if kind == "compiled" else self.eager
        self.reason = reason
        log.info("train step: %s", reason)

    def _compile(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The first compiled step, cut short by a stop: a compile takes seconds to minutes, and the loop
        only checks ``should_stop`` between batches. A watcher thread polls it and interrupts the main
        thread with SIGUSR1; the interrupted batch then runs eagerly and the loop stops after it."""
        use_cache_dir(self.records.cache_dir)
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            return self.compiled(inputs, labels)
        lock, done, interrupted, raised = threading.Lock(), threading.Event(), threading.Event(), threading.Event()

        def watch() -> None:
            # once a stop is seen, signal again every poll until the compile is over: a signal whose
            # handler ran where its exception is dropped (below) must not leave the compile running
            while not done.wait(STOP_POLL_S):
                if interrupted.is_set() or self.should_stop():
                    with lock:
                        if not done.is_set():
                            interrupted.set()
                            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

        def on_interrupt(signum, frame) -> None:
            if raised.is_set() or _drops_exceptions(frame):
                return  # raised already, or it would be dropped here: the watcher's next signal lands elsewhere
            raised.set()
            raise CompileInterrupted()

        previous = signal.signal(signal.SIGUSR1, on_interrupt)
        watcher = threading.Thread(target=watch, name="compile-stop-watch", daemon=True)
        out = None
        try:
            watcher.start()
            try:
                out = self.compiled(inputs, labels)
            finally:
                with lock:
                    done.set()
            if interrupted.is_set():
                time.sleep(1)  # the signal is on its way: let it land here, inside the try
        except CompileInterrupted:
            if out is None:  # cut short: this batch runs eagerly, and the loop stops after it
                self._choose("eager", f"{self.reason}; the compile was cut short by a stop")
                return self.eager(inputs, labels)
        finally:
            watcher.join()
            signal.signal(signal.SIGUSR1, previous)
        return out

    def _time_compiled(self, elapsed: float) -> None:
        """Time a few compiled steps after the compiling one, then record the shape's figures once."""
        if len(self.compiled_times) == COMPILED_TIMED_STEPS:
            return
        self.compiled_times.append(elapsed)
        if len(self.compiled_times) < COMPILED_TIMED_STEPS:
            return
        compiled_s = statistics.median(self.compiled_times)
        record = {"compile_s": self.compiled.compile_s, "compile_cpu_s": self.compiled.compile_cpu_s,
                  "cold": self.record is None, "compiled_step_s": compiled_s}
        eager_s = statistics.median(self.eager_times) if self.eager_times else (self.record or {}).get("eager_step_s")
        if eager_s:
            record.update(eager_step_s=eager_s, compiled_fraction=min(compiled_s / eager_s, 1.0))
        self.records.put(self.key, record)
