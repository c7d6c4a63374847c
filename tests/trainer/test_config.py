"""TrainConfig validation: defaults, inclusive bounds, types, aliases, every bad field named at once."""

import pytest

from trainer import catalog
from trainer.config import FIELDS, FIELDS_BY_NAME, ConfigError, TrainConfig, schema

DESIGN_DEFAULTS = {
    "dataset": "synthetic", "epochs": 10, "batch_size": 64, "lr": 0.001, "timesteps": 25,
    "hidden": (128,), "surrogate": "atan_surrogate", "learn_beta": False, "learn_threshold": False,
    "cell_type": "LIFCell", "network": "SpikingNet", "seed": None, "device": "auto",
    "encoding": "direct", "mnist_fallback": "none",
    # issue 11's training recipe: Adam at a constant rate, no weight decay, no clipping, as before
    "optimizer": "adam", "weight_decay": 0.0, "lr_schedule": "constant", "warmup_epochs": 0, "grad_clip": 0.0,
    # issue 14: compile only where the job earns the compile time back
    "compile": "auto",
}
BOUNDS = {  # field: (low, high) from the design's table
    "epochs": (1, 100), "batch_size": (8, 512), "lr": (0.0001, 0.1), "timesteps": (5, 100),
    "weight_decay": (0.0, 0.5), "grad_clip": (0.0, 100.0),
}


def reasons(data) -> dict:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(data)
    return info.value.fields


def test_every_default_matches_the_design():
    config = TrainConfig.from_dict({})
    assert {k: getattr(config, k) for k in DESIGN_DEFAULTS} == DESIGN_DEFAULTS
    assert set(DESIGN_DEFAULTS) == set(FIELDS_BY_NAME)
    for f in FIELDS:  # the schema's defaults are the dataclass defaults
        default = getattr(TrainConfig(), f.name)
        assert (list(default) if isinstance(default, tuple) else default) == f.default


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_bounds_are_inclusive_and_one_past_is_rejected(name):
    low, high = BOUNDS[name]
    assert getattr(TrainConfig.from_dict({name: low}), name) == low
    assert getattr(TrainConfig.from_dict({name: high}), name) == high
    step = 1 if isinstance(low, int) else (low / 10 or 0.01)
    for bad in (low - step, high + step):
        assert "between" in reasons({name: bad})[name]


def test_hidden_layers_bounds():
    assert TrainConfig.from_dict({"hidden": [1, 4096, 2, 3]}).hidden == (1, 4096, 2, 3)
    assert "layers" in reasons({"hidden": []})["hidden"]
    assert "layers" in reasons({"hidden": [8] * 5})["hidden"]
    assert "layer 1" in reasons({"hidden": [8, 4097]})["hidden"]
    assert "layer 0" in reasons({"hidden": [0]})["hidden"]
    assert "list" in reasons({"hidden": 128})["hidden"]


def test_booleans_are_not_integers_and_strings_are_not_numbers():
    got = reasons({"epochs": True, "batch_size": "64", "learn_beta": 1, "lr": "0.01", "seed": 1.5})
    assert set(got) == {"epochs", "batch_size", "learn_beta", "lr", "seed"}
    assert "got boolean" in got["epochs"]
    assert "got string" in got["batch_size"]
    assert "boolean" in got["learn_beta"]


def test_float_field_accepts_integers_but_not_nan():
    assert TrainConfig.from_dict({"lr": 0.01}).lr == 0.01
    assert "between" in reasons({"lr": float("nan")})["lr"]
    assert "between" in reasons({"lr": 1})["lr"]


def test_unknown_field_and_unknown_names_list_the_allowed_values():
    got = reasons({"epoch": 3, "surrogate": "nope", "cell_type": "LIF", "network": "ResNet"})
    assert "unknown field" in got["epoch"] and "epochs" in got["epoch"]
    for spec in catalog.SURROGATES:
        assert spec.name in got["surrogate"]
    for spec in catalog.CELLS:
        assert spec.name in got["cell_type"]
    assert "ConvSpikingNet" in got["network"]


@pytest.mark.parametrize("alias,name", [(a, s.name) for s in catalog.SURROGATES for a in s.aliases])
def test_surrogate_aliases_resolve_to_full_names(alias, name):
    assert TrainConfig.from_dict({"surrogate": alias}).surrogate == name


def test_device_forms():
    for ok in ("auto", "cpu", "cuda", "cuda:0", "cuda:7"):
        assert TrainConfig.from_dict({"device": ok}).device == ok
    for bad in ("gpu", "cuda:", "cuda:x", "CPU", "tpu:0"):
        assert "cuda:N" in reasons({"device": bad})["device"]


def test_error_names_every_bad_field_at_once():
    got = reasons({"epochs": 0, "batch_size": 7, "lr": 1.0, "timesteps": 101, "hidden": [0],
                   "surrogate": "x", "learn_beta": "yes", "cell_type": "x", "network": "x",
                   "seed": -1, "device": "x", "dataset": "cifar", "bogus": 1})
    assert set(got) == {"epochs", "batch_size", "lr", "timesteps", "hidden", "surrogate", "learn_beta",
                        "cell_type", "network", "seed", "device", "dataset", "bogus"}


def test_learn_flags_that_mean_nothing_for_the_cell_are_rejected():
    got = reasons({"cell_type": "IFCell", "learn_beta": True})
    assert "IFCell has no learnable beta" in got["learn_beta"]
    assert TrainConfig.from_dict({"cell_type": "IFCell", "learn_threshold": True}).learn_threshold


def test_non_object_body_is_rejected():
    assert "JSON object" in reasons([1, 2])["body"]


def test_round_trip_and_seed_resolution():
    config = TrainConfig.from_dict({"hidden": [64, 32], "seed": 7})
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.with_seed().seed == 7
    resolved = TrainConfig().with_seed()
    assert isinstance(resolved.seed, int) and 0 <= resolved.seed < 2**32


def test_schema_lists_every_field_with_bounds_and_choices():
    fields = {f["name"]: f for f in schema()["fields"]}
    assert set(fields) == set(DESIGN_DEFAULTS)
    assert (fields["epochs"]["min"], fields["epochs"]["max"]) == (1, 100)
    assert fields["surrogate"]["aliases"]["atan"] == "atan_surrogate"
    assert fields["cell_type"]["choices"] == [c.name for c in catalog.CELLS]


def test_training_recipe_fields():
    config = TrainConfig.from_dict({"optimizer": "sgd", "weight_decay": 0.01, "lr_schedule": "onecycle",
                                    "warmup_epochs": 2, "epochs": 3, "grad_clip": 1})
    assert (config.optimizer, config.lr_schedule, config.warmup_epochs, config.grad_clip) == ("sgd", "onecycle", 2, 1.0)
    got = reasons({"optimizer": "rmsprop", "lr_schedule": "linear", "warmup_epochs": 21})
    assert "adam, adamw, sgd" in got["optimizer"]
    assert "constant, cosine, step, onecycle" in got["lr_schedule"]
    assert "between 0 and 20" in got["warmup_epochs"]
    assert "fewer than epochs (10)" in reasons({"warmup_epochs": 10})["warmup_epochs"]
    assert "fewer than epochs (3)" in reasons({"warmup_epochs": 3, "epochs": 3})["warmup_epochs"]
    assert TrainConfig.from_dict({"encoding": "latency"}).encoding == "latency"
