"""Experiment files: a typed schema, TOML loading and ``--set key=value`` overrides.

An experiment is a TOML file such as ``examples/fmnist_dirichlet.toml``::

    seed = 0
    rounds = 50

    [data]
    name = "fashion_mnist"

    [partition]
    scheme = "dirichlet"
    num_clients = 10
    beta = 0.5

    [model]
    preset = "lenet"

    [client]
    epochs = 10
    batch_size = 64
    lr = 0.01
    momentum = 0.9

    [server]
    fraction = 1.0

Unknown keys and values of the wrong type are errors, reported as one line that names the
key (:class:`fedge.errors.ConfigError`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from fedge.errors import ConfigError

__all__ = [
    "ExperimentConfig",
    "apply_overrides",
    "describe_validation_error",
    "load_config",
    "parse_config",
    "parse_section",
    "read_toml",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- data -------------------------------------------------------------------------------


class FashionMNISTData(_Section):
    """Fashion-MNIST from ``data_dir``, ``$FEDGE_DATA`` or the Debian package location."""

    name: Literal["fashion_mnist"]
    data_dir: Path | None = None
    download: bool = False


class LeafData(_Section):
    """A LEAF dataset folder with ``train/`` and ``test/`` JSON files; users are clients."""

    name: Literal["leaf"]
    path: Path
    input_shape: list[PositiveInt] | None = None


class SyntheticData(_Section):
    """Synthetic(α, β) of FedProx / LEAF; devices are clients."""

    name: Literal["synthetic"]
    alpha: NonNegativeFloat = 0.0
    beta: NonNegativeFloat = 0.0
    num_devices: PositiveInt = 30
    iid: bool = False


class DigitsData(_Section):
    """scikit-learn's 8×8 digits, for tiny fast runs."""

    name: Literal["digits"]
    test_fraction: float = Field(0.2, gt=0, lt=1)


class StoreData(_Section):
    """Version ``version`` (a number, or ``latest``) of dataset ``dataset`` in fedge's
    object store (``store``, else ``$FEDGE_STORE``, else ``./fedge-store``): the data a
    training job's ``[dataset]`` reads. A version without a test split gets the seeded
    hold-out of ``test_fraction`` of its examples that a training job makes."""

    name: Literal["store"]
    dataset: str
    version: PositiveInt | Literal["latest"] = "latest"
    store: str | None = None
    test_fraction: float = Field(0.1, gt=0, lt=1)


class CanvasesData(_Section):
    """Detection data: Fashion-MNIST items on ``size``-pixel canvases (see
    :mod:`fedge.data.canvases`), ``num_train`` of training items and ``num_test`` of test
    items, deterministic by the seed."""

    name: Literal["canvases"]
    num_train: PositiveInt = 2000
    num_test: PositiveInt = 200
    size: PositiveInt = 96
    max_items: PositiveInt = 4
    data_dir: Path | None = None


class CocoData(_Section):
    """Detection data in COCO format (see :func:`fedge.data.detection.load_coco`): the
    annotation file ``annotations`` with its images in ``images`` (default the
    ``images/`` folder beside it), and optionally a held-out ``test_annotations`` file
    with its ``test_images``."""

    name: Literal["coco"]
    annotations: Path
    images: Path | None = None
    test_annotations: Path | None = None
    test_images: Path | None = None


#: ``[data]`` sources whose targets are boxes (:func:`fedge.data.load.load_detection_data`).
DETECTION_DATA = ("canvases", "coco")

DataConfig = Annotated[
    FashionMNISTData | LeafData | SyntheticData | DigitsData | StoreData | CanvasesData | CocoData,
    Field(discriminator="name"),
]


# --- partition --------------------------------------------------------------------------


class _Partition(_Section):
    """``seed`` draws the split; by default the experiment's ``seed`` (set it to keep the
    same clients while varying model initialization and training, or the reverse)."""

    seed: int | None = None


class IIDPartition(_Partition):
    scheme: Literal["iid"]
    num_clients: PositiveInt


class DirichletPartition(_Partition):
    scheme: Literal["dirichlet"]
    num_clients: PositiveInt
    beta: PositiveFloat = 0.5
    min_size: PositiveInt = 10


class LabelKPartition(_Partition):
    scheme: Literal["label_k"]
    num_clients: PositiveInt
    k: PositiveInt = 2


class ShardsPartition(_Partition):
    scheme: Literal["shards"]
    num_clients: PositiveInt
    shards_per_client: PositiveInt = 2


class QuantitySkewPartition(_Partition):
    scheme: Literal["quantity_skew"]
    num_clients: PositiveInt
    beta: PositiveFloat = 0.5
    min_size: PositiveInt = 10


class NaturalPartition(_Section):
    scheme: Literal["natural"]


PartitionConfig = Annotated[
    IIDPartition
    | DirichletPartition
    | LabelKPartition
    | ShardsPartition
    | QuantitySkewPartition
    | NaturalPartition,
    Field(discriminator="scheme"),
]


# --- model, training, strategy ----------------------------------------------------------


class ModelConfig(_Section):
    """Exactly one of ``preset`` (logreg, mlp, lenet; centernet for detection data) or
    ``spec`` (a JSON spec file)."""

    preset: Literal["logreg", "mlp", "lenet", "centernet"] | None = None
    spec: Path | None = None
    hidden: list[PositiveInt] = [200, 200]

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.preset is None) == (self.spec is None):
            raise ValueError("give exactly one of model.preset and model.spec")
        return self


class TaskSection(_Section):
    """What a training job or a simulation learns. ``kind`` (optional) must match the
    data: a dataset version of boxes, or a ``canvases`` or ``coco`` ``[data]`` section, is
    detection; anything else classification. A detector's ``score_threshold`` (default
    0.3) and ``max_detections`` (default 100) are recorded with the model as what ``fedge
    serve`` answers with when a request sets neither."""

    kind: Literal["classification", "detection"] | None = None
    score_threshold: float = Field(0.3, ge=0, le=1)
    max_detections: int = Field(100, ge=1, le=1000)


class ClientConfig(_Section):
    """Local SGD of each client (semantics in :mod:`fedge.fl.local`)."""

    epochs: PositiveInt = 1
    batch_size: PositiveInt | None = 32
    lr: PositiveFloat = 0.01
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: NonNegativeFloat = 0.0
    drop_last: bool = False


class ServerConfig(_Section):
    """Cohort size: ``clients_per_round`` or ``fraction`` of all clients (default all)."""

    clients_per_round: PositiveInt | None = None
    fraction: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _one_size(self) -> ServerConfig:
        if self.clients_per_round is not None and self.fraction is not None:
            raise ValueError("give only one of server.clients_per_round and server.fraction")
        return self


class MeanAggregator(_Section):
    """Σ n_k Δ_k / Σ n_k (the default)."""

    name: Literal["mean"] = "mean"
    clip_norm: PositiveFloat | None = None


class MedianAggregator(_Section):
    """Coordinate-wise median."""

    name: Literal["median"]
    clip_norm: PositiveFloat | None = None


class TrimmedMeanAggregator(_Section):
    """Coordinate-wise mean without the ⌊βK⌋ largest and smallest values."""

    name: Literal["trimmed_mean"]
    beta: float = Field(0.1, ge=0, lt=0.5)
    clip_norm: PositiveFloat | None = None


class KrumAggregator(_Section):
    """Krum (``m = 1``) or Multi-Krum (``m > 1``) tolerating ``f`` attackers."""

    name: Literal["krum", "multi_krum"]
    f: NonNegativeInt = 1
    m: PositiveInt | None = None
    clip_norm: PositiveFloat | None = None

    @model_validator(mode="after")
    def _m_for_multi_krum(self) -> KrumAggregator:
        if self.name == "multi_krum" and self.m is None:
            raise ValueError("multi_krum needs m, the number of updates to average")
        if self.name == "krum" and self.m not in (None, 1):
            raise ValueError("krum selects one update: use multi_krum for m > 1")
        return self


AggregatorConfig = Annotated[
    MeanAggregator | MedianAggregator | TrimmedMeanAggregator | KrumAggregator,
    Field(discriminator="name"),
]


class _StrategyBase(_Section):
    aggregator: AggregatorConfig = MeanAggregator()


class FedAvgConfig(_StrategyBase):
    """FedAvg (McMahan et al. 2017)."""

    name: Literal["fedavg"] = "fedavg"


class FedAvgMConfig(_StrategyBase):
    """FedAvg with server momentum (Hsu et al. 2019)."""

    name: Literal["fedavgm"]
    server_lr: PositiveFloat = 1.0
    server_momentum: float = Field(0.9, ge=0, lt=1)


class FedOptConfig(_StrategyBase):
    """Adaptive server optimizers (Reddi et al. 2021)."""

    name: Literal["fedadagrad", "fedadam", "fedyogi"]
    server_lr: PositiveFloat = 0.01
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: PositiveFloat = 1e-3


class FedProxConfig(_StrategyBase):
    """FedProx's proximal term μ/2·‖w − w_global‖² (Li et al. 2020)."""

    name: Literal["fedprox"]
    mu: NonNegativeFloat = 0.01


class ScaffoldConfig(_StrategyBase):
    """SCAFFOLD with option II control variates (Karimireddy et al. 2020)."""

    name: Literal["scaffold"]
    server_lr: PositiveFloat = 1.0


class FedNovaConfig(_StrategyBase):
    """FedNova's normalized averaging (Wang et al. 2020)."""

    name: Literal["fednova"]


StrategyConfig = Annotated[
    FedAvgConfig | FedAvgMConfig | FedOptConfig | FedProxConfig | ScaffoldConfig | FedNovaConfig,
    Field(discriminator="name"),
]


class AttackConfig(_Section):
    """Malicious clients, for robustness evaluation in simulation only.

    A fixed ``fraction`` of the clients (chosen by seed) attack whenever sampled:
    ``label_flip`` trains on label C−1−y; ``sign_flip`` reports −scale·Δ (scale 1 by
    default); ``scale`` reports scale·Δ (model replacement, default 10); ``gaussian``
    reports Δ ~ N(0, std²).
    """

    kind: Literal["label_flip", "sign_flip", "scale", "gaussian"]
    fraction: float = Field(0.2, gt=0, lt=1)
    scale: PositiveFloat | None = None
    std: PositiveFloat = 1.0


class SystemConfig(_Section):
    """System heterogeneity: in each round a ``stragglers`` fraction of the sampled
    clients cannot finish; with ``policy = "partial"`` they run a uniform random number
    of local steps in [1, S) (S being the full local work) and report, with ``"drop"``
    they report nothing. ``"auto"``
    picks partial for strategies that accept partial work (FedProx, SCAFFOLD, FedNova)
    and drop for the others, as in the FedProx paper."""

    stragglers: float = Field(0.0, ge=0, lt=1)
    policy: Literal["auto", "drop", "partial"] = "auto"


class EvalConfig(_Section):
    """Server-side evaluation on the test set every ``every`` rounds (and after the last);
    optional client-side evaluation of the global model on each sampled client's data."""

    every: PositiveInt = 1
    batch_size: PositiveInt = 512
    client_eval: bool = False


class DeployConfig(_Section):
    """The deployment server (``fedge server``): who may join and how rounds run.

    ``enrollment_secret`` is what a device must present to enroll (the environment
    variable ``FEDGE_ENROLLMENT_SECRET`` overrides it, so that it need not sit in a file).
    Each round hands out ``ceil(target · over_selection)`` tasks, the target being the
    experiment's cohort (``server.clients_per_round``, or ``server.fraction`` of
    ``num_devices``); it closes on ``target`` updates, or ``deadline_seconds`` after its
    first task with at least ``quorum`` of them (default: the target), and is abandoned
    otherwise (the model does not change). ``num_devices`` is the fleet size N that
    fraction-based cohorts and SCAFFOLD's 1/N use (default: the partition's
    ``num_clients``). An update claiming more than ``max_samples`` examples is refused.
    ``evaluate``: test the global model on the data's test split after every round, when
    the server can load it. Devices told to wait are given a jittered delay between
    ``min_poll_seconds`` and ``max_poll_seconds`` (pace steering)."""

    enrollment_secret: str | None = Field(None, min_length=8)
    num_devices: PositiveInt | None = None
    over_selection: float = Field(1.3, ge=1, le=10)
    quorum: PositiveInt | None = None
    deadline_seconds: PositiveFloat | None = 600.0
    max_samples: PositiveInt = 1_000_000
    max_devices: PositiveInt = 100_000
    evaluate: bool = True
    min_poll_seconds: PositiveFloat = 0.5
    max_poll_seconds: PositiveFloat = 60.0


class SecureAggregationConfig(_Section):
    """SecAgg+ (:mod:`fedge.privacy.secagg`): the server sees only the sum of each round's
    updates. The graph degree k and the Shamir threshold t follow from the cohort size,
    the tolerated ``dropout`` fraction and the fraction ``corrupt`` of clients that may
    collude with a ``adversary`` server (2^-40 security, 2^-20 failure); ``degree`` and
    ``threshold`` override them. Summands are clipped to [-``clip_range``, ``clip_range``]
    per coordinate (clipped values are counted and reported, never silently) and
    quantized modulo 2^``modulus_bits``. ``weighting = "samples"`` weighs a client by
    min(n_k, ``max_weight``)/``max_weight`` (default in simulation: the largest client);
    ``"uniform"`` weighs all clients alike. In simulation, ``simulated_dropout`` of each
    cohort vanishes after sharing keys. On a deployment server each stage after the
    training ends after ``stage_seconds`` at the latest."""

    dropout: float = Field(0.3, ge=0, lt=1)
    corrupt: float = Field(0.05, ge=0, lt=1)
    adversary: Literal["curious", "semi-malicious"] = "curious"
    modulus_bits: int = Field(32, ge=16, le=64)
    clip_range: PositiveFloat = 1.0
    weighting: Literal["samples", "uniform"] = "samples"
    max_weight: PositiveInt | None = None
    degree: PositiveInt | None = None
    threshold: int | None = Field(None, ge=2)
    simulated_dropout: float = Field(0.0, ge=0, lt=1)
    stage_seconds: PositiveFloat = 60.0


class PrivacyConfig(_Section):
    """Privacy (:mod:`fedge.privacy`, ``docs/privacy.md``): user-level differential privacy
    and secure aggregation, each optional.

    ``dp = "central"``: DP-FedAvg with the server adding the noise. Every client delta is
    clipped to L2 norm ``clip_norm`` S, the clipped deltas are summed with equal weights,
    Gaussian noise of std z·S is added and the sum is divided by the cohort size. Give
    ``noise_multiplier`` z, ``target_epsilon``, or both: with only the target, z is
    calibrated so that all ``rounds`` fit in it; with both, training stops at the last
    round whose ε fits. ``delta`` defaults to min(1e-5, N^-1.1), which stays below 1/N for
    any number of clients N. ``adaptive_clipping`` moves the norm towards the
    ``target_quantile`` γ (0.5) of the update norms with step ``clip_lr`` η (0.2), starting
    at ``clip_norm`` (0.1), with noise of std ``count_noise`` σ_b (cohort/20) on the count
    of unclipped updates (Andrew et al. 2021). ``dp = "local"``: each client clips its own
    delta to ``clip_norm`` and adds the noise itself (:mod:`fedge.privacy.local`); ε is a
    client's against everyone, the server included, with no amplification by sampling.
    ``dp = "distributed"`` (needs ``[privacy.secure_aggregation]``): each client clips its
    delta to ``clip_norm``, rounds it to integers and adds its share of Skellam noise
    before masking, so that the server only unmasks a noisy sum
    (:mod:`fedge.privacy.distributed`); ``noise_multiplier`` and ``target_epsilon`` work as
    for central DP, accounted without amplification by sampling.
    ``dp = "none"``: no differential privacy (only secure aggregation).

    ``[privacy.secure_aggregation]`` turns SecAgg+ on (:class:`SecureAggregationConfig`);
    with central DP, clients clip their own deltas and the server adds the noise to the
    unmasked sum."""

    dp: Literal["central", "local", "distributed", "none"] = "central"
    clip_norm: PositiveFloat | None = None
    adaptive_clipping: bool = False
    target_quantile: float | None = Field(None, gt=0, lt=1)
    clip_lr: PositiveFloat | None = None
    count_noise: PositiveFloat | None = None
    noise_multiplier: PositiveFloat | None = None
    target_epsilon: PositiveFloat | None = None
    delta: float | None = Field(None, gt=0, lt=1)
    secure_aggregation: SecureAggregationConfig | None = None

    @model_validator(mode="after")
    def _complete(self) -> PrivacyConfig:
        dp_keys = (
            "clip_norm",
            "target_quantile",
            "clip_lr",
            "count_noise",
            "noise_multiplier",
            "target_epsilon",
            "delta",
        )
        if self.dp == "none":
            given = [k for k in dp_keys if getattr(self, k) is not None]
            if given or self.adaptive_clipping:
                raise ValueError(f'privacy.dp = "none" takes no DP settings, got {given}')
            if self.secure_aggregation is None:
                raise ValueError(
                    'privacy.dp = "none" without [privacy.secure_aggregation] protects nothing'
                )
            return self
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("give privacy.noise_multiplier, privacy.target_epsilon or both")
        if self.dp == "distributed" and self.secure_aggregation is None:
            raise ValueError(
                'privacy.dp = "distributed" needs [privacy.secure_aggregation]: the clients '
                "noise the vectors it masks, so that the server only unmasks a noisy sum"
            )
        if self.dp in ("local", "distributed") and self.adaptive_clipping:
            raise ValueError(
                'adaptive clipping needs the server\'s noisy count: use dp = "central"'
            )
        if not self.adaptive_clipping:
            if self.clip_norm is None:
                raise ValueError("fixed clipping needs privacy.clip_norm")
            for key in ("target_quantile", "clip_lr", "count_noise"):
                if getattr(self, key) is not None:
                    raise ValueError(f"privacy.{key} needs adaptive_clipping = true")
        return self


class ExperimentConfig(_Section):
    """A whole federated simulation.

    ``engine`` picks how clients run: ``vectorized`` (the default: stacked chunks of
    clients in one model, split over ``threads`` worker threads; ``max_memory_mb`` bounds
    a chunk), ``sequential`` (the reference, one client after another) or ``ray`` (Ray
    worker actors: a local runtime, or the running cluster at ``ray_address`` such as
    ``"auto"`` or ``"ray://host:port"``; ``ray_workers`` actors, default one per CPU Ray
    reports). All give the same model for the same seed.

    ``max_seconds`` (optional) is a wall-clock limit: the run ends after the round during
    which that many seconds have passed (evaluating it), or after ``rounds``."""

    name: str = "experiment"
    seed: int = 0
    rounds: PositiveInt
    max_seconds: PositiveFloat | None = None
    engine: Literal["sequential", "vectorized", "ray"] = "vectorized"
    ray_address: str | None = None
    ray_workers: PositiveInt | None = None
    max_memory_mb: PositiveInt = 2048
    threads: PositiveInt | None = None
    data: DataConfig
    partition: PartitionConfig | None = None
    model: ModelConfig
    client: ClientConfig = ClientConfig()
    server: ServerConfig = ServerConfig()
    strategy: StrategyConfig = FedAvgConfig()
    eval: EvalConfig = EvalConfig()
    attack: AttackConfig | None = None
    system: SystemConfig = SystemConfig()
    deploy: DeployConfig = DeployConfig()
    privacy: PrivacyConfig | None = None
    task: TaskSection | None = None


# --- loading ----------------------------------------------------------------------------


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each invalid key and what is wrong with it."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "union_tag_invalid":
            ctx = err["ctx"]
            msg = f"unknown choice {ctx['tag']!r} (expected one of {ctx['expected_tags']})"
        elif "input" in err and not isinstance(err["input"], dict):
            msg += f" (got {err['input']!r})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_config(data: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """Validate a parsed config dict; raises :class:`ConfigError` with one line."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}: {describe_validation_error(exc)}") from None


def parse_section(name: str, value: Any) -> Any:
    """Validate one section (``"data"`` or ``"partition"``) on its own."""
    adapter = TypeAdapter(DataConfig if name == "data" else PartitionConfig)
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise ConfigError(f"invalid [{name}]: {describe_validation_error(exc)}") from None


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as TOML, else taken as strings)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a table")
            node = child
        node[leaf] = _parse_value(value.strip())
    return data


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed TOML file at ``path``; raises :class:`ConfigError` with one line."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a TOML experiment file, apply overrides and validate it."""
    return parse_config(apply_overrides(read_toml(path), overrides or []), str(path))
