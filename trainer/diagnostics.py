"""Warnings about a run that goes on but is probably going nowhere: the data of ``warning`` events.

Checked once per epoch, after its epoch event; each warning is ``{"kind", "layer"?, "message", "epoch"}``
and the job keeps running. Two kinds:

- ``silent_layer``: a layer's mean firing rate was under ``SILENT_RATE`` or more than
  ``SILENT_NEURON_FRACTION`` of its neurons never fired in the epoch. Nothing flows through a silent
  layer, so the surrogate gradient of everything before it is (nearly) zero: typical of a threshold set
  too high, too few timesteps or an adaptation that shuts the cell down (AdEx at chance for 25 epochs).
  Reported when a layer turns silent, not again every epoch it stays so; again if it recovers and falls
  silent once more.
- ``val_loss_plateau``: the validation loss has not improved on its best for ``PLATEAU_EPOCHS`` epochs.
  Reported once per plateau; an improvement starts the count again.
"""

from __future__ import annotations

import math

SILENT_RATE = 0.001  # under 0.1% of the steps, on average over the layer's neurons
SILENT_NEURON_FRACTION = 0.95
PLATEAU_EPOCHS = 5


class RunDiagnostics:
    """Remembers what it has already reported, so each condition is reported when it starts."""

    def __init__(self):
        self.silent_layers: set[str] = set()
        self.best_val_loss = math.inf
        self.epochs_without_improvement = 0

    def check_epoch(self, epoch: int, layer_stats: dict[str, dict], val_loss: float) -> list[dict]:
        """The warnings for one finished epoch (often none)."""
        warnings = []
        for key, stats in layer_stats.items():
            silent = stats["rate"] < SILENT_RATE or stats["silent_fraction"] > SILENT_NEURON_FRACTION
            if silent and key not in self.silent_layers:
                warnings.append({
                    "kind": "silent_layer", "layer": key, "epoch": epoch,
                    "message": (f"layer {key} is silent: firing rate {stats['rate']:.2%}, "
                                f"{stats['silent_fraction']:.0%} of its neurons never fired in epoch {epoch}; "
                                "try a lower threshold or more timesteps"),
                })
            (self.silent_layers.add if silent else self.silent_layers.discard)(key)
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.epochs_without_improvement = val_loss, 0
        else:
            self.epochs_without_improvement += 1
            if self.epochs_without_improvement == PLATEAU_EPOCHS:
                warnings.append({
                    "kind": "val_loss_plateau", "epoch": epoch,
                    "message": (f"validation loss has not improved for {PLATEAU_EPOCHS} epochs "
                                f"(best {self.best_val_loss:.4g}); try a lower learning rate or stop the run"),
                })
        return warnings
