"""The one table of surrogates, neuron cells, networks and datasets (standard library only).

Everything user-facing reads this module: config validation, ``GET /api/training/surrogates`` and
``/cell-types``, the config schema's dataset choices, the CLI's help, the web form and ``docs/``. The torch implementations in
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
        "v = beta v + I; threshold_t = th0 + b a; a = rho a + s",
    ),
    CellSpec(
        "ExpIFCell", "cell", "Exponential integrate-and-fire (bounded exponential, silent at rest)",
        (_BETA, _THRESHOLD, Param("delta", 0.5, "slope factor Delta"),
         Param("v_rh", 0.8, "rheobase potential")),
        ("beta", "threshold"),
        "v = beta v + (1 - beta) Delta (exp((v - v_rh)/Delta) - exp(-v_rh/Delta)) + I",
    ),
    CellSpec(
        "AdExCell", "cell", "Adaptive exponential integrate-and-fire",
        (_BETA, _THRESHOLD, Param("delta", 0.5, "slope factor Delta"),
         Param("v_rh", 0.8, "rheobase potential"), Param("a", 0.01, "subthreshold adaptation"),
         Param("b", 0.1, "spike-triggered adaptation"), Param("rho", 0.99, "adaptation decay")),
        ("beta", "threshold"),
        "ExpIF with v -= w; w = rho w + a (v - v_rest) + b s",
    ),
    CellSpec(
        "LapicqueCell", "cell", "Lapicque's RC neuron; decay and gain follow from tau, R and dt",
        (Param("tau", 20.0, "membrane time constant"), Param("R", 1.0, "membrane resistance"),
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


# --- datasets --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataFile:
    """One published file: its name as stored (without ``.gz``), and checksums where known."""
    name: str
    records: int  # images or labels the published file holds
    gz_sha256: str = ""  # of the published .gz as downloaded
    gz_bytes: int = 0
    content_sha256: str = ""  # of the decompressed IDX content, where it is known


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    kind: str  # "generated" (in memory), "idx" (four IDX files) or "events" (N-MNIST .bin recordings)
    input_shape: tuple[int, int, int]  # (C, H, W) of one image or one time bin
    n_classes: int
    n_train: int  # as published (the synthetic set: as generated)
    n_val: int  # the official test split, used for validation
    description: str
    reference: str = ""
    folders: tuple[str, ...] = ()  # under the data directory, searched in order ("" is the directory itself)
    files: tuple[DataFile, ...] = ()
    torchvision_class: str = ""  # the torchvision dataset that downloads it, where one does
    source: str = ""  # where a user gets the files

    def as_dict(self) -> dict:
        return {
            "name": self.name, "title": self.title, "kind": self.kind,
            "input_shape": list(self.input_shape), "n_classes": self.n_classes,
            "n_train": self.n_train, "n_val": self.n_val, "description": self.description,
            "reference": self.reference, "folders": list(self.folders), "source": self.source,
        }


def _idx_files(sizes_and_sums: tuple[tuple[int, str, str], ...]) -> tuple[DataFile, ...]:
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    records = (60000, 60000, 10000, 10000)
    return tuple(DataFile(name, n, gz_sha256=gz_sha, gz_bytes=gz_size, content_sha256=content_sha)
                 for name, n, (gz_size, gz_sha, content_sha) in zip(names, records, sizes_and_sums))


# The .gz sizes and sha256 are those of the files as published (TensorFlow Datasets lists them; they are
# the files torchvision downloads and checks by md5). MNIST's content sha256 is measured on the IDX files,
# so a re-compressed .gz still verifies.
DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "synthetic", "Synthetic patterns", "generated", (1, 28, 28), 10, 6000, 1000,
        "Ten classes of shifted blob-and-stroke patterns with noise, generated in memory (no files)",
    ),
    DatasetSpec(
        "mnist", "MNIST", "idx", (1, 28, 28), 10, 60000, 10000,
        "Handwritten digits 0-9, 28x28 grey levels", "LeCun et al. 1998",
        ("", "mnist", "MNIST/raw"),
        _idx_files((
            (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
             "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
            (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
             "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
            (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
             "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
            (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
             "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
        )),
        "MNIST", "the four .gz files of MNIST (torchvision's mirror, or any copy)",
    ),
    DatasetSpec(
        "fashion_mnist", "Fashion-MNIST", "idx", (1, 28, 28), 10, 60000, 10000,
        "Zalando article images in ten classes (T-shirt/top .. ankle boot), 28x28 grey levels",
        "Xiao et al. 2017", ("fashion_mnist", "FashionMNIST/raw"),
        _idx_files((
            (26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", ""),
            (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", ""),
            (4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", ""),
            (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", ""),
        )),
        "FashionMNIST", "the four .gz files from github.com/zalandoresearch/fashion-mnist",
    ),
    DatasetSpec(
        "kmnist", "Kuzushiji-MNIST", "idx", (1, 28, 28), 10, 60000, 10000,
        "Ten classes of cursive Japanese (Kuzushiji) hiragana, 28x28 grey levels",
        "Clanuwat et al. 2018", ("kmnist", "KMNIST/raw"),
        _idx_files((
            (18165135, "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4", ""),
            (29497, "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17", ""),
            (3041136, "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5", ""),
            (5120, "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c", ""),
        )),
        "KMNIST", "the four .gz files (MNIST format) from github.com/rois-codh/kmnist",
    ),
    DatasetSpec(
        "nmnist", "N-MNIST", "events", (2, 34, 34), 10, 60000, 10000,
        "MNIST digits recorded by an event camera (ATIS) during three saccades; on/off events on "
        "34x34 pixels, binned into `timesteps` frames of 2x34x34 over the first 300 ms",
        "Orchard et al. 2015", ("nmnist", "NMNIST"),
        source="Train and Test folders (or train.zip and test.zip) from "
               "www.garrickorchard.com/datasets/n-mnist, or tonic's NMNIST download",
    ),
)
DATASETS_BY_NAME: dict[str, DatasetSpec] = {spec.name: spec for spec in DATASETS}


def datasets_markdown() -> str:
    """The dataset table as docs/datasets.md shows it (a test keeps the page in step)."""
    rows = ["| dataset | input (C x H x W) | classes | train / val | what it is | files from |",
            "| --- | --- | --- | --- | --- | --- |"]
    for spec in DATASETS:
        shape = "x".join(map(str, spec.input_shape))
        rows.append(f"| `{spec.name}` | {shape} | {spec.n_classes} | {spec.n_train} / {spec.n_val} | "
                    f"{spec.description} | {spec.source or 'no files'} |")
    return "\n".join(rows)
