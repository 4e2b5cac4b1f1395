"""Typed, frozen configuration for single-model training and PBT searches.

One YAML file describes a run:

    name: chaotic-rnn-demo
    data: {path: data/chaotic_rnn.h5}
    model: {gen_dim: 100, fac_dim: 40, ...}
    training: {batch_size: 128, lr_init: 4.0e-3, ...}
    pbt: {population: 20, generation_epochs: 25, search_space: {...}}

Every section has defaults (the AutoLFADS / lfads-torch values from
shared/reference/lfads-and-pbt.md), unknown keys are errors, and every error
names the field, the bad value and what is allowed. This module imports no
torch, so the coordinator can parse configs in its small image.

Why one module of ~470 lines: the schema, its bounds and the parser that turns
pydantic's errors into one line are read together when a field is added;
split, each half would need the other open.
"""

from __future__ import annotations

import math
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from autolfads.errors import ConfigError

# The hyperparameters PBT tunes in AutoLFADS. A search space may name only these,
# and the trainer can change each of them between segments without a rebuild.
TUNABLE_HPARAMS: tuple[str, ...] = (
    "lr_init",
    "dropout_rate",
    "cd_rate",
    "l2_gen_scale",
    "l2_con_scale",
    "kl_ic_scale",
    "kl_co_scale",
)

# The one table of what each tunable hyperparameter may be, wherever a value
# enters: the config's search space, the coordinator checking a report, the
# trainer applying a lease. (low, high, whether low itself is allowed); high
# itself is never allowed (a rate of 1 drops every input; inf is no scale).
HPARAM_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "lr_init": (0.0, 1.0, False),
    "dropout_rate": (0.0, 1.0, True),
    "cd_rate": (0.0, 1.0, True),
    "l2_gen_scale": (0.0, math.inf, True),
    "l2_con_scale": (0.0, math.inf, True),
    "kl_ic_scale": (0.0, math.inf, True),
    "kl_co_scale": (0.0, math.inf, True),
}
assert set(HPARAM_BOUNDS) == set(TUNABLE_HPARAMS)


def hparam_problem(name: str, value: object) -> str | None:
    """Why `value` cannot be hyperparameter `name`, or None if it can."""
    if name not in HPARAM_BOUNDS:
        return f"unknown hyperparameter {name!r}; tunable ones are {list(TUNABLE_HPARAMS)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"hyperparameter {name}={value!r} is not a number"
    if not math.isfinite(value):
        return f"hyperparameter {name}={value!r} is not a finite number"
    low, high, low_allowed = HPARAM_BOUNDS[name]
    if value < low or (value == low and not low_allowed) or value >= high:
        interval = f"{'[' if low_allowed else '('}{low}, {high})"
        return f"hyperparameter {name}={value!r} lies outside {interval}"
    return None


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

# Hostile-input bounds. A real config is a few KB with < 200 values nested
# 4 deep; these limits are far above that but stop YAML alias bombs ("billion
# laughs": a few lines that expand to 10^9 values) before anything walks the
# expanded tree, and keep whole-file reads bounded.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_CONFIG_NODES = 10_000
MAX_CONFIG_DEPTH = 32
MAX_PATH_CHARS = 4096

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
PosFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Rate = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
# Epochs and generations travel as uint32 in the coordinator protocol
# (proto/autolfads/pbt/v1/coordinator.proto): a larger value would pass here
# and fail every lease and status reply with an internal error instead.
MAX_WIRE_COUNT = 2**32 - 1
WireCount = Annotated[int, Field(gt=0, le=MAX_WIRE_COUNT)]
# A segment's report carries one record per epoch, and the coordinator takes
# at most this many (a bound on a report's size): a segment longer than that
# would train to its end and then have its report refused.
MAX_SEGMENT_EPOCHS = 10_000
SegmentEpochs = Annotated[int, Field(gt=0, le=MAX_SEGMENT_EPOCHS)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class SynthConfig(_Frozen):
    """Generate the data file if it does not exist yet."""

    kind: Literal["chaotic-rnn", "lorenz"] = "chaotic-rnn"
    seed: NonNegInt = 0
    # Generator size arguments, e.g. {n_conditions: 100, n_replications: 10};
    # see `autolfads data synth --help` for the names and defaults.
    sizes: dict[str, Annotated[int, Field(ge=0, le=100_000)]] = Field(default_factory=dict)


class DataConfig(_Frozen):
    # Relative paths are resolved against the config file's folder.
    path: Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS)]
    synth: SynthConfig | None = None

    @field_validator("path")
    @classmethod
    def _printable_path(cls, value: str) -> str:
        # NUL and other control characters make every OS call on the path fail
        # (or worse, name a different file than the one shown in messages).
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            raise ValueError("path contains control characters")
        return value


class ModelConfig(_Frozen):
    """LFADS architecture. Data sizes (channels, bins) come from the data file."""

    ic_enc_dim: PosInt = 64
    ci_enc_dim: NonNegInt = 64
    con_dim: NonNegInt = 64
    co_dim: NonNegInt = 4
    ic_dim: PosInt = 64
    gen_dim: PosInt = 100
    fac_dim: PosInt = 40
    ci_lag: NonNegInt = 1
    cell_clip: PosFloat = 5.0
    ic_post_var_min: PosFloat = 1e-4
    ic_prior_var: PosFloat = 0.1
    co_prior_tau: PosFloat = 10.0
    co_prior_nvar: PosFloat = 0.1

    @property
    def has_controller(self) -> bool:
        return self.ci_enc_dim > 0 and self.con_dim > 0 and self.co_dim > 0

    @model_validator(mode="after")
    def _controller_all_or_nothing(self) -> ModelConfig:
        dims = {"ci_enc_dim": self.ci_enc_dim, "con_dim": self.con_dim, "co_dim": self.co_dim}
        if any(dims.values()) and not all(dims.values()):
            raise ValueError(
                f"controller sizes {dims} must be all > 0 (inferred inputs) or all 0 (none)"
            )
        return self


class TrainingConfig(_Frozen):
    """Optimisation, regularisation and ramps. The tunable values here are the
    defaults for `autolfads train`; a PBT search overrides them per member."""

    max_epochs: PosInt = 200
    batch_size: PosInt = 128
    # Seeds torch's generators (weights, posterior sampling), which take 64 bits.
    seed: Annotated[int, Field(ge=0, le=2**64 - 1)] = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: PosInt | None = None

    lr_init: PosFloat = 4e-3
    adam_beta1: Rate = 0.9
    adam_beta2: Rate = 0.999
    adam_eps: PosFloat = 1e-8
    weight_decay: NonNegFloat = 0.0
    max_grad_norm: PosFloat = 200.0
    loss_scale: PosFloat = 1e4

    dropout_rate: Rate = 0.3
    cd_rate: Rate = 0.3
    cd_pass_rate: Rate = 0.0
    sv_rate: Rate = 0.0
    sv_seed: NonNegInt = 0

    l2_start_epoch: int = 0
    l2_increase_epochs: NonNegInt = 80
    kl_start_epoch: int = 0
    kl_increase_epochs: NonNegInt = 80

    l2_gen_scale: NonNegFloat = 1e-4
    l2_con_scale: NonNegFloat = 1e-4
    l2_ic_enc_scale: NonNegFloat = 0.0
    l2_ci_enc_scale: NonNegFloat = 0.0
    kl_ic_scale: NonNegFloat = 1e-6
    kl_co_scale: NonNegFloat = 1e-6

    posterior_samples: PosInt = 50

    @property
    def ramp_end_epoch(self) -> int:
        """How many epochs train below full L2 or KL weight: the 0-based
        index of the first epoch at full weight (`objective.ramp`)."""
        return max(
            self.l2_start_epoch + self.l2_increase_epochs,
            self.kl_start_epoch + self.kl_increase_epochs,
        )

    def hparams(self) -> dict[str, float]:
        """The tunable hyperparameters at their configured values."""
        return {name: float(getattr(self, name)) for name in TUNABLE_HPARAMS}


class HparamSpace(_Frozen):
    """How one tunable hyperparameter is initialised and explored."""

    min: NonNegFloat
    max: NonNegFloat
    # How initial values are drawn when `init` is None ("fixed" requires `init`).
    sampling: Literal["log", "uniform", "fixed"] = "log"
    # Initial value for every member; None samples each member in [min, max].
    init: NonNegFloat | None = None
    # Explore multiplies by 1 +/- U(0.002 w, w); 0 freezes the value.
    explore_weight: NonNegFloat = 0.3
    # False: explore may carry the value beyond [min, max], which then bound
    # only the initial draw (lfads-torch lets the KL and L2 scales wander so;
    # only its rates are clamped). The hard limits of HPARAM_BOUNDS still hold.
    clamp: bool = True

    @model_validator(mode="after")
    def _check(self) -> HparamSpace:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}; swap them")
        if self.sampling == "log" and self.min <= 0:
            # "log" is the default, so a range from 0 (a rate) lands here unasked.
            raise ValueError(
                f"log sampling (the default) needs min > 0, got min {self.min}; "
                "set sampling: uniform, or a positive min"
            )
        if self.sampling == "fixed" and self.init is None:
            raise ValueError("fixed sampling needs an init value (init: VALUE in [min, max])")
        if self.init is not None and not self.min <= self.init <= self.max:
            raise ValueError(f"init {self.init} lies outside [min {self.min}, max {self.max}]")
        if self.explore_weight >= 1.0:
            raise ValueError(f"explore_weight {self.explore_weight} must be < 1")
        return self


def default_search_space() -> dict[str, HparamSpace]:
    """The AutoLFADS search space (MC_Maze / NLB settings). As in lfads-torch,
    only the rates are clamped to their range: the KL and L2 scales start in
    theirs and may wander beyond it (within `HPARAM_BOUNDS`)."""

    def scale(low: float, high: float) -> HparamSpace:
        return HparamSpace(min=low, max=high, sampling="log", explore_weight=0.8, clamp=False)

    return {
        "lr_init": HparamSpace(min=1e-5, max=5e-3, sampling="log", init=4e-3, explore_weight=0.3),
        "dropout_rate": HparamSpace(min=0.0, max=0.6, sampling="uniform", explore_weight=0.3),
        "cd_rate": HparamSpace(min=0.01, max=0.7, sampling="uniform", init=0.5, explore_weight=0.3),
        "l2_gen_scale": scale(1e-4, 1.0),
        "l2_con_scale": scale(1e-4, 1.0),
        "kl_ic_scale": scale(1e-6, 1e-3),
        "kl_co_scale": scale(1e-6, 1e-4),
    }


class PbtConfig(_Frozen):
    """Population-based training, AutoLFADS defaults."""

    population: Annotated[int, Field(ge=2, le=1024)] = 20
    generation_epochs: SegmentEpochs = 25
    # Epochs of generation 0; must cover the KL/L2 ramps (80 + 25 in lfads-torch).
    burn_in_epochs: SegmentEpochs = 105
    max_generations: WireCount = 50
    exploit: Literal["binary_tournament", "truncation"] = "binary_tournament"
    truncation_fraction: Annotated[float, Field(gt=0.0, le=0.5)] = 0.25
    resample_probability: Rate = 0.0
    mode: Literal["sync", "async"] = "sync"
    # Stop when the best metric improved by at most this fraction over
    # `stop_patience_generations` generations.
    stop_improvement: NonNegFloat = 5e-4
    stop_patience_generations: Annotated[int, Field(ge=2)] = 4
    seed: NonNegInt = 0
    # What members are ranked by (lower is better), smoothed over epochs:
    # valid_recon_smth, the NLL of every reconstructed element (lfads-torch's
    # valid/recon_smth), or valid_heldout_recon_smth, the NLL of only the
    # held-out neurons in the observed bins (what co-bps scores; the encoder
    # never sees them); it needs data with held-out neurons.
    fitness: Literal["valid_recon_smth", "valid_heldout_recon_smth"] = "valid_recon_smth"
    # How member m000 starts: "sampled" like every other member (AutoLFADS), or
    # "training": at the `training:` values of the searched hyperparameters, so
    # a hand-tuned configuration is one of the starting points the search
    # improves on (the others are still sampled).
    first_member: Literal["sampled", "training"] = "sampled"
    # Each member's newest checkpoints kept; older ones are deleted unless a
    # segment may still start from them, one is the best, or (async) its
    # generation is still open. The best member's lineage is not kept.
    keep_generations: PosInt = 2
    # Given in the YAML, it replaces this default whole: a hyperparameter it
    # does not name is not searched and keeps its `training:` value.
    search_space: dict[str, HparamSpace] = Field(default_factory=default_search_space)

    @model_validator(mode="after")
    def _known_hparams(self) -> PbtConfig:
        unknown = sorted(set(self.search_space) - set(TUNABLE_HPARAMS))
        if unknown:
            raise ValueError(
                f"unknown hyperparameter(s) {unknown} in search_space; "
                f"tunable ones are {list(TUNABLE_HPARAMS)}"
            )
        for name, spec in sorted(self.search_space.items()):
            for bound in ("min", "max", "init"):
                value = getattr(spec, bound)
                problem = None if value is None else hparam_problem(name, value)
                if problem:
                    raise ValueError(f"search_space.{name}.{bound}: {problem}")
        return self


class RunConfig(_Frozen):
    name: Annotated[str, Field(pattern=NAME_PATTERN)] = "autolfads"
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    pbt: PbtConfig = Field(default_factory=PbtConfig)

    @model_validator(mode="after")
    def _burn_in_covers_ramps(self) -> RunConfig:
        # Every epoch after burn-in trains at full weight: no generation's
        # ranking mixes members at different points of the ramps.
        ramped = self.training.ramp_end_epoch
        if self.pbt.burn_in_epochs < ramped:
            raise ValueError(
                f"pbt.burn_in_epochs {self.pbt.burn_in_epochs} is shorter than the KL/L2 "
                f"ramps ({ramped} epochs below full weight); raise it to at least {ramped} "
                "or shorten the ramps"
            )
        return self

    @model_validator(mode="after")
    def _first_member_in_space(self) -> RunConfig:
        if self.pbt.first_member != "training":
            return self
        for name, spec in sorted(self.pbt.search_space.items()):
            value = getattr(self.training, name)
            if not spec.min <= value <= spec.max:
                raise ValueError(
                    f"pbt.first_member training starts a member at training.{name} {value}, "
                    f"outside pbt.search_space.{name} [{spec.min}, {spec.max}]; "
                    "move the value or the bounds"
                )
        return self

    def initial_hparams(self) -> dict[str, float]:
        return self.training.hparams()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# repr() with small limits: an offending value is shown, never a megabyte of it.
def _make_repr() -> reprlib.Repr:
    shower = reprlib.Repr()  # keyword arguments need Python 3.12
    shower.maxlevel, shower.maxstring, shower.maxother, shower.maxlong = 2, 60, 60, 40
    shower.maxlist = shower.maxtuple = shower.maxdict = shower.maxset = 4
    return shower


_SHOW = _make_repr()


def _show(value: Any) -> str:
    text = _SHOW.repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _check_shape(raw: Any, source: str) -> None:
    """Refuse a parsed document that is too big or too deep *as a tree*.

    YAML aliases share objects, so a small file can stand for an exponentially
    large tree; this walk stops after MAX_CONFIG_NODES visits, so its cost is
    bounded whatever the document expands to.
    """
    stack: list[tuple[Any, int]] = [(raw, 0)]
    visited = 0
    while stack:
        node, depth = stack.pop()
        visited += 1
        if visited > MAX_CONFIG_NODES:
            raise ConfigError(
                f"{source}: more than {MAX_CONFIG_NODES} values (YAML aliases expanding "
                "too far?); a run config needs a few hundred at most"
            )
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{source}: nested more than {MAX_CONFIG_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for pair in node.items() for child in pair)
        elif isinstance(node, list | tuple | set | frozenset):
            stack.extend((child, depth + 1) for child in node)


def _loc_part(part: Any) -> str:
    # Keys come from the user's file: show odd ones quoted and escaped, so a
    # key holding a newline or a megabyte of text cannot break the one line.
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text) else _show(part)


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(_loc_part(p) for p in first["loc"]) or "(top level)"
    msg = " ".join(str(first["msg"]).split())  # one line, even if a value held newlines
    msg = msg if len(msg) <= 300 else msg[:297] + "..."
    if first["type"] == "extra_forbidden":
        msg = "unknown key; check the spelling against the documented fields"
    value = first.get("input")
    shown = (
        "" if isinstance(value, dict) or first["type"] == "missing" else f" (got {_show(value)})"
    )
    more = len(err.errors()) - 1
    tail = f" [+{more} more problem(s)]" if more else ""
    return f"{source}: {loc}: {msg}{shown}{tail}"


def parse_config(raw: Any, source: str = "config") -> RunConfig:
    """Validate a parsed YAML mapping; raise ConfigError with one clear line."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    _check_shape(raw, source)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None
    except (RecursionError, OverflowError) as err:
        raise ConfigError(f"{source}: unusable value ({type(err).__name__})") from None


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML config; relative data paths become absolute."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            blob = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        raise ConfigError(f"{path}: cannot read config ({_os_reason(err)})") from None
    if len(blob) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; not a run config")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (bad byte at offset {err.start})") from None
    return loads_config(text, source=str(path), base_dir=path.parent)


def _os_reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err)


def loads_config(text: str, source: str = "config", base_dir: Path | None = None) -> RunConfig:
    """Parse and validate config text; raise ConfigError (one line) for any bad input."""
    if not isinstance(text, str):
        raise ConfigError(f"{source}: expected config text, got {type(text).__name__}")
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES // 1024} KiB; not a run config")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    except (ValueError, OverflowError):
        # PyYAML converts numbers itself: an integer of > 4300 digits trips
        # Python's int-conversion limit.
        raise ConfigError(f"{source}: a number in the YAML is too large to use") from None
    cfg = parse_config(raw, source)
    if base_dir is not None and not Path(cfg.data.path).is_absolute():
        data = cfg.data.model_copy(update={"path": str((base_dir / cfg.data.path).resolve())})
        cfg = cfg.model_copy(update={"data": data})
    return cfg


def check_finite(name: str, value: float) -> float:
    """Internal helper for hyperparameter dicts arriving from the network."""
    if not math.isfinite(value):
        raise ConfigError(f"{name}: value {value!r} is not a finite number")
    return value


def is_valid_name(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None
