"""Typed pipeline configuration, parsed once from YAML; unknown keys are errors.

One frozen dataclass per scope, the trainer's sections included, all built by the one
strict builder (trainer/typed_config.py), so a typo anywhere fails when a run starts. ``load_config(path)`` returns a ``PipelineConfig``;
relative paths in it are resolved against the repository root (the directory that
holds ``configs/``), so commands work from any working directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import yaml

from serving import features as F
from trainer.hparams import TrainerConfig
from trainer.splits import SplitConfig
from trainer.typed_config import ConfigError, build

__all__ = ["ConfigError", "PipelineConfig", "load_config", "parse_config", "config_from_json", "resolve_path",
           "resolve_location", "is_uri"]

REPO_ROOT = Path(__file__).resolve().parent.parent
# data.fetch: the built-in sources (tfx_pipeline/data/datasets.py), or none.
MAX_SEQUENCE_LENGTH = 1000  # examples.sequence_length: a user's stored state is this many ids at most
FETCH_KINDS = ("none", "movielens_100k", "movielens_1m", "synthetic_implicit")
ID_WHITESPACE = ("error", "keep")  # data.id_whitespace


@dataclasses.dataclass(frozen=True)
class EventsTable:
    path: str
    # Canonical role -> column name in the user's table. Required: user, item, timestamp.
    # Optional: rating, weight, event_type.
    columns: dict[str, str]
    format: str = ""  # csv | parquet; empty: from the file extension
    # Optional event_type -> label weight (implicit feedback with typed events).
    event_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    # Timestamps in the table: "unix_seconds" (int/float) or "iso8601" strings.
    timestamp_format: str = "unix_seconds"
    # Event times later than now + this many seconds are an error (a unit or clock
    # mistake, e.g. milliseconds read as seconds). Raise it for logs stamped ahead on purpose.
    max_future_seconds: int = 86_400


@dataclasses.dataclass(frozen=True)
class SideTable:
    path: str
    id_column: str
    # column -> kind (categorical | numeric | text | multi_valued)
    features: dict[str, str]
    format: str = ""
    multi_value_separator: str = "|"


@dataclasses.dataclass(frozen=True)
class SpansConfig:
    """Dated spans (tfx_pipeline/data/spans.py): one directory of tables per span."""

    base: str  # directory holding the span directories
    pattern: str = "span-{SPAN}"  # TFX span spec: {SPAN}, {YYYY}/{MM}/{DD}, optional {VERSION}
    window: int = 0  # most recent spans read by a run (0 = every span up to the selected one)
    span: int = -1  # the span a run is for; -1 = the latest one present


@dataclasses.dataclass(frozen=True)
class DataConfig:
    events: EventsTable
    users: Optional[SideTable] = None
    items: Optional[SideTable] = None
    # When set, the table paths above are file names inside each span directory.
    spans: Optional[SpansConfig] = None
    # How to materialize the tables when they are missing: movielens_100k, movielens_1m,
    # synthetic_implicit, or none (the user provides them; configs/movielens_1m_sparse.yaml
    # names the command that makes its tables).
    fetch: str = "none"
    # Ids with leading or trailing whitespace ("u1 " next to "u1"): "error" (the default)
    # stops the run naming the rows; "keep" reads them as written, as ids distinct from
    # the trimmed spelling. Ids are never trimmed, so two spellings are never merged.
    id_whitespace: str = "error"


@dataclasses.dataclass(frozen=True)
class ExamplesConfig:
    history_length: int = 20  # ML-100K users have >= 20 ratings; longer adds little
    # Items kept in each user's stored state (the history a served query gets when the
    # request sends none) and the window of trainer.retrieval.objective: sequence; 0 =
    # history_length. Longer than history_length costs only the state rows: the per-event
    # rows (ranking, the in_batch objective) keep history_length items.
    sequence_length: int = 0
    split: SplitConfig = SplitConfig()
    engagement_threshold: float = 4.0  # rating >= 4 is "liked" on a 1-5 scale
    num_shards: int = 2

    @property
    def state_length(self) -> int:
        """The items of a user's stored state: the longer of the per-event history and sequence_length."""
        return max(self.history_length, self.sequence_length)


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    # TFDV thresholds; train/eval skew uses L-infinity for categorical features and
    # Jensen-Shannon for numeric ones; drift compares with the previous run's stats.
    skew_linf: float = 0.3
    skew_jsd: float = 0.3
    drift_linf: float = 0.3
    drift_jsd: float = 0.3
    # Features left out of the skew/drift checks (ids and time change by design).
    exclude_from_drift: tuple[str, ...] = (F.USER_ID, F.ITEM_ID, F.HISTORY_ITEM_IDS, F.TIMESTAMP)


@dataclasses.dataclass(frozen=True)
class KubeflowConfig:
    """Read by ``recsys pipeline compile`` only (tfx_pipeline/kubeflow_runner.py); local runs ignore it."""

    # Beam args of every Beam step in the compiled spec (a distributed runner, e.g.
    # --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp); the
    # command's --beam-arg values come after them. Empty: Beam's defaults inside each task's pod.
    beam_pipeline_args: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    name: str
    data: DataConfig
    schema_dir: str
    examples: ExamplesConfig = ExamplesConfig()
    validation: ValidationConfig = ValidationConfig()
    pipeline_root: str = ""  # default: runs/<name>
    serving_base_path: str = ""  # default: runs/<name>/serving
    # The trainer sections (retrieval, ranking, gate, index, tuning, warm_start), typed
    # and checked here with the rest (trainer/hparams.py).
    trainer: TrainerConfig = TrainerConfig()
    kubeflow: KubeflowConfig = KubeflowConfig()
    source_path: str = ""  # set by load_config

    # -- derived -------------------------------------------------------------
    @property
    def root(self) -> Path:
        return resolve_path(self.pipeline_root or f"runs/{self.name}")

    @property
    def serving_root(self) -> Path:
        return resolve_path(self.serving_base_path or f"runs/{self.name}/serving")

    @property
    def root_location(self) -> str:
        """``root`` as a string that keeps a URI (gs://...) whole, for what a component is told."""
        return resolve_location(self.pipeline_root or f"runs/{self.name}")

    @property
    def serving_location(self) -> str:
        """``serving_root`` as a string that keeps a URI whole."""
        return resolve_location(self.serving_base_path or f"runs/{self.name}/serving")

    @property
    def metadata_path(self) -> Path:
        return self.root / "metadata.sqlite"

    def side_features(self) -> dict[str, str]:
        """Canonical example key -> kind, for every user and item side feature."""
        out: dict[str, str] = {}
        if self.data.users:
            out.update({F.user_feature(c): k for c, k in self.data.users.features.items()})
        if self.data.items:
            out.update({F.item_feature(c): k for c, k in self.data.items.features.items()})
        return out

    def item_features(self) -> dict[str, str]:
        return {k: v for k, v in self.side_features().items() if k.startswith(F.ITEM_FEATURE_PREFIX)}

    def user_features(self) -> dict[str, str]:
        return {k: v for k, v in self.side_features().items() if k.startswith(F.USER_FEATURE_PREFIX)}

    def to_json(self) -> str:
        """The config as components receive it (``config_from_json``). Without the kubeflow
        section: only the compiler reads it, so it is no part of any component's cache key."""
        raw = dataclasses.asdict(self)
        del raw["kubeflow"]
        return json.dumps(raw, sort_keys=True, default=list)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def resolve_path(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (REPO_ROOT / p)


def is_uri(path: str | os.PathLike) -> bool:
    """gs://, s3://, hdfs://, ...: a location ``Path`` would mangle (it folds the ``//``)."""
    return "://" in str(path)


def resolve_location(path: str | os.PathLike) -> str:
    """``resolve_path`` for a location that may be a URI: a URI is returned untouched."""
    return str(path) if is_uri(path) else str(resolve_path(path))


def _validate(cfg: PipelineConfig, where: str) -> None:
    required = {"user", "item", "timestamp"}
    allowed = required | {"rating", "weight", "event_type"}
    cols = cfg.data.events.columns
    if missing := required - set(cols):
        raise ConfigError(f"{where}: data.events.columns must map {sorted(missing)} (roles: {sorted(allowed)})")
    if unknown := set(cols) - allowed:
        raise ConfigError(f"{where}: data.events.columns has unknown role(s) {sorted(unknown)}; roles: {sorted(allowed)}")
    if cfg.data.events.timestamp_format not in ("unix_seconds", "iso8601"):
        raise ConfigError(f"{where}: data.events.timestamp_format must be unix_seconds or iso8601")
    for side in (cfg.data.users, cfg.data.items):
        if side is None:
            continue
        for col, kind in side.features.items():
            if kind not in F.FEATURE_KINDS:
                raise ConfigError(f"{where}: feature {col!r} has kind {kind!r}; expected one of {F.FEATURE_KINDS}")
    if cfg.data.users and any(k in (F.MULTI_VALUED, F.TEXT) for k in cfg.data.users.features.values()):
        raise ConfigError(f"{where}: user features may be categorical or numeric only")
    if cfg.data.id_whitespace not in ID_WHITESPACE:
        raise ConfigError(f"{where}: data.id_whitespace must be one of {', '.join(ID_WHITESPACE)}")
    if cfg.data.events.max_future_seconds < 0:
        raise ConfigError(f"{where}: data.events.max_future_seconds must be >= 0")
    if cfg.data.fetch not in FETCH_KINDS:
        raise ConfigError(f"{where}: data.fetch must be one of {', '.join(FETCH_KINDS)}")
    if cfg.data.spans is not None:
        spans = cfg.data.spans
        if not any(spec in spans.pattern for spec in ("{SPAN", "{YYYY}")):
            raise ConfigError(f"{where}: data.spans.pattern {spans.pattern!r} needs a {{SPAN}} or {{YYYY}}-{{MM}}-{{DD}} spec")
        for table in (cfg.data.events, cfg.data.users, cfg.data.items):
            if table is not None and (os.path.isabs(table.path) or "/" in table.path or "{" in table.path):
                raise ConfigError(f"{where}: with data.spans, table paths are file names inside each span "
                                  f"directory (e.g. events.csv), not {table.path!r}")
        if spans.window < 0:
            raise ConfigError(f"{where}: data.spans.window must be >= 0 (0 = every span)")
    from trainer.splits import STRATEGIES

    if cfg.examples.split.strategy not in STRATEGIES:
        raise ConfigError(f"{where}: examples.split.strategy must be one of {STRATEGIES}")
    if cfg.examples.history_length < 1:
        raise ConfigError(f"{where}: examples.history_length must be >= 1")
    if cfg.examples.sequence_length and not (cfg.examples.history_length <= cfg.examples.sequence_length
                                             <= MAX_SEQUENCE_LENGTH):
        raise ConfigError(f"{where}: examples.sequence_length must be 0 (= history_length) or between "
                          f"history_length ({cfg.examples.history_length}) and {MAX_SEQUENCE_LENGTH}, got "
                          f"{cfg.examples.sequence_length}")
    from trainer.retrieval.slices import check_config

    try:
        check_config(cfg.trainer.evaluation, cfg.side_features())
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_sections(cfg: PipelineConfig, where: str) -> None:
    """Checks across the data and trainer sections (the data components get a config whose
    trainer sections are the defaults, so these run only on a user's whole config)."""
    if cfg.examples.sequence_length > cfg.examples.history_length and cfg.trainer.retrieval.objective != "sequence":
        raise ConfigError(f"{where}: examples.sequence_length {cfg.examples.sequence_length} is longer than "
                          f"history_length {cfg.examples.history_length}, but only trainer.retrieval.objective: "
                          f"sequence reads the longer state (the {cfg.trainer.retrieval.objective!r} objective and "
                          f"ranking train on the per-event history): set the objective or drop sequence_length")


def parse_config(raw: dict, where: str = "<config>", whole: bool = True) -> PipelineConfig:
    """``whole``: ``raw`` is a user's whole config (False: a component's share of a config
    already checked whole, ``config_from_json``)."""
    try:
        cfg = build(PipelineConfig, raw, skip=("source_path",))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    _validate(cfg, where)
    if whole:
        _check_sections(cfg, where)
    return dataclasses.replace(cfg, source_path=where)


def load_config(path: str | os.PathLike, overrides: Optional[dict] = None) -> PipelineConfig:
    """Loads and validates a YAML config. ``overrides`` are merged on top (tests, CLI)."""
    p = resolve_path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist (see configs/ for examples)")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if overrides:
        raw = deep_merge(raw, overrides)
    return parse_config(raw, str(p))


def overrides_from_pairs(pairs) -> dict:
    """``["trainer.retrieval.epochs=2", ...]`` (the CLIs' ``--set``) -> a nested override mapping.

    Values are YAML (``2`` is an int, ``[a, b]`` a list, ``true`` a bool).
    """
    overrides: dict = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set trainer.retrieval.epochs=2")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {e}") from e
        node = overrides
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is set to a value and used as a section")
        node[parts[-1]] = parsed
    return overrides


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_json(text: str) -> PipelineConfig:
    """Inverse of ``PipelineConfig.to_json`` (how components receive the config)."""
    raw = json.loads(text)
    where = raw.pop("source_path", "") or "<config>"
    return parse_config(raw, where, whole=False)
