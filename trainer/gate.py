"""The evaluation gates.

Retrieval: ``decide``, a pure function over the metrics the retrieval trainer writes
(``metrics.json`` beside the model): absolute floor, lift over popularity, lift over
the classical baseline (ALS, ``"als"``) on Recall@100 and NDCG@10, no regression
against the latest blessed model. TFMA has no top-K retrieval metric over a full
catalogue with seen-item exclusion, hence this custom gate.

The classical baseline check (``min_lift_over_baseline``; 0 turns it off):

- ALS fit and evaluated: each metric must reach ``min_lift_over_baseline`` x ALS's.
- ALS disabled by the trainer config (``trainer.baseline.enabled: false``): not checked,
  and the reasons say so ("not checked: baseline unavailable ...").
- ALS unavailable otherwise (its fit failed, or a ``metrics.json`` written before the
  baseline existed has no ``"als"``): the check fails, "baseline unavailable": a model
  is not blessed on a comparison that could not be made. Set the factor to 0 (or
  disable the baseline) to gate without it.

The latest blessed model's ``metrics.json`` is only read for ``model.recall@100`` (and,
with ``max_cold_user_recall_drop`` on, its cold-user slice), so one written before the
baseline existed is still a valid baseline.

Two optional checks on the ``"slices"`` section (trainer/retrieval/slices.py), both off
by default:

- ``max_cold_user_recall_drop`` (-1 = off; 0 = no drop allowed): check
  ``cold_user_no_regression``, the cold users' Recall@100
  (``slices.user_activity.groups.cold.model["recall@100"]``) must be at least the latest
  blessed model's minus this. Not checked, with a note in the reasons, when there is no
  blessed model, or when this model's or the blessed model's ``metrics.json`` has no
  cold-user Recall@100 (no slices: ``trainer.evaluation.enabled: false`` or written before
  the slices existed; or no cold user); the note says which. The cold threshold is each
  run's own (``user_activity.threshold``); the detail gives both.
- ``max_group_recall_ratio`` (0 = off; else >= 1): one check ``group_fairness_<feature>``
  per ``user_feature:<feature>`` slice, on its fairness entry for our model: the best
  group's Recall@K over the worst's (K = 100 when the entry has it, else its largest K;
  the detail says which), among the groups with at least ``min_group_users`` users (the
  smaller ones are left out by ``slices.fairness``), must be at most this. A ratio of None
  is decided by why: fewer than two groups large enough is no comparison (not checked,
  noted); a worst group with Recall@K 0 (and so at least ``min_group_users`` users)
  fails, an unbounded ratio, unless every compared group has 0 (no group does better:
  passes, the absolute floors judge the recall itself). A ``metrics.json`` without
  user-feature slices is not checked, and the reasons say so.

Ranking: ``ranking_eval_config`` for TFX's Evaluator (TFMA): RMSE and AUC thresholds on the
overall slice, every metric also reported per slice of the user features that
``ranking_slice_features`` picks (not gated); ``ranking_gate_reasons`` puts its decision in words
from the validation result TFMA wrote (the run summary and the report show them).
"""

from __future__ import annotations

import os

from serving.fileio import gfile, read_json
from trainer.artifacts import METRICS_FILE
from trainer.hparams import EvaluationConfig, GateConfig



def read_model_metrics(model_uri: str) -> dict:
    """The ``metrics.json`` beside a model (a local path or a URI: gs://, s3:// ...)."""
    path = os.path.join(model_uri, METRICS_FILE)
    if not gfile.exists(path):
        raise FileNotFoundError(f"{path}: the trainer wrote no metrics; cannot evaluate this model")
    return read_json(path)


def decide(kind: str, current: dict, baseline: dict | None, gate: GateConfig) -> dict:
    """Returns {"blessed": bool, "reasons": [...], "checks": {...}}."""
    reasons, checks, notes = [], {}, []

    def check(name: str, ok: bool, detail: str) -> None:
        checks[name] = {"ok": bool(ok), "detail": detail}
        if not ok:
            reasons.append(f"{name}: {detail}")

    m = current["model"]
    if kind == "retrieval":
        r100, pop = m["recall@100"], current["popularity"]["recall@100"]
        check("min_recall_at_100", r100 >= gate.min_recall_at_100, f"recall@100 {r100:.4f} vs floor {gate.min_recall_at_100}")
        check("lift_over_popularity", r100 >= gate.min_lift_over_popularity * pop,
              f"recall@100 {r100:.4f} vs {gate.min_lift_over_popularity} x popularity {pop:.4f}")
        if gate.min_lift_over_baseline > 0:
            notes += lift_over_baseline(current, gate.min_lift_over_baseline, check, checks)
        if baseline is not None:
            prev = baseline["model"]["recall@100"]
            check("no_regression", r100 >= prev - gate.max_recall_drop,
                  f"recall@100 {r100:.4f} vs latest blessed {prev:.4f} (max drop {gate.max_recall_drop})")
        if gate.max_cold_user_recall_drop >= 0:
            notes += cold_user_no_regression(current, baseline, gate.max_cold_user_recall_drop, check, checks)
        if gate.max_group_recall_ratio > 0:
            notes += group_fairness(current, gate.max_group_recall_ratio, check, checks)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    if not reasons:
        reasons.append("all checks passed" + (" (first model: no baseline)" if baseline is None else ""))
    reasons += notes
    return {"blessed": all(c["ok"] for c in checks.values()), "reasons": reasons, "checks": checks,
            "has_baseline": baseline is not None}


# The metrics the classical baseline check compares: (metrics.json key, check name, label).
BASELINE_METRICS = (("recall@100", "lift_over_baseline_recall_at_100", "recall@100"),
                    ("ndcg@10", "lift_over_baseline_ndcg_at_10", "NDCG@10"))


def lift_over_baseline(current: dict, factor: float, check, checks: dict) -> list[str]:
    """The ALS checks of ``decide`` (see the module docstring); returns notes for the reasons."""
    als = current.get("als")
    name = "ALS"
    if als is None:
        als = {"unavailable": "metrics.json has no ALS entry (written before the baseline existed)"}
    if "unavailable" in als:
        why = als["unavailable"]
        if als.get("disabled"):
            note = f"not checked: baseline unavailable ({why})"
            checks["lift_over_baseline"] = {"ok": True, "skipped": True, "detail": note}
            return [f"lift_over_baseline: {note}"]
        for _, check_name, label in BASELINE_METRICS:
            check(check_name, False, f"baseline unavailable ({why}): cannot show the model's {label} reaches "
                                     f"{factor} x {name}; set trainer.gate.min_lift_over_baseline: 0 to gate without it")
        return []
    m = current["model"]
    for key, check_name, label in BASELINE_METRICS:
        ours, theirs = m[key], als[key]
        if ours >= factor * theirs:
            check(check_name, True, f"{label} {ours:.4f} >= {factor} x {name} {theirs:.4f}")
        else:
            check(check_name, False, f"{label} {ours:.4f} < {factor} x {name} {theirs:.4f}: "
                                     f"the model loses to the {name} baseline")
    return []


def _skip(name: str, note: str, checks: dict) -> str:
    """Records a check that could not be made (it does not block the blessing); returns its note."""
    checks[name] = {"ok": True, "skipped": True, "detail": note}
    return f"{name}: {note}"


def _cold_user_recall(metrics: dict) -> tuple[float | None, dict | str]:
    """(cold users' Recall@100 of our model, the user_activity slice) or (None, why not)."""
    activity = (metrics.get("slices") or {}).get("user_activity")
    if activity is None:
        return None, "no slices (trainer.evaluation.enabled: false, or written before the slices existed)"
    cold = activity.get("groups", {}).get("cold", {})
    if not cold.get("num_users"):
        return None, "no cold user in its eval set"
    value = cold.get("model", {}).get("recall@100")
    if value is None:
        return None, "no Recall@100 in its cold-user slice"
    return float(value), activity


def cold_user_no_regression(current: dict, baseline: dict | None, max_drop: float, check, checks: dict) -> list[str]:
    """The ``max_cold_user_recall_drop`` check of ``decide`` (module docstring); returns notes."""
    name = "cold_user_no_regression"
    if baseline is None:
        return [_skip(name, "not checked: no blessed model to compare the cold users' Recall@100 with", checks)]
    ours, here = _cold_user_recall(current)
    if ours is None:
        return [_skip(name, f"not checked: this model's metrics.json has no cold-user Recall@100 ({here})", checks)]
    prev, there = _cold_user_recall(baseline)
    if prev is None:
        return [_skip(name, f"not checked: the latest blessed model's metrics.json has no cold-user Recall@100 "
                            f"({there})", checks)]
    groups = (here["groups"]["cold"]["num_users"], there["groups"]["cold"]["num_users"])
    who = (f"cold users: <= {here.get('threshold')} train events, {groups[0]} users; latest blessed: "
           f"<= {there.get('threshold')}, {groups[1]} users")
    drop = prev - ours
    if drop <= max_drop:
        check(name, True, f"cold-user recall@100 {ours:.4f} vs latest blessed {prev:.4f} "
                          f"(max drop {max_drop}; {who})")
    else:
        check(name, False, f"cold-user recall@100 {ours:.4f} vs latest blessed {prev:.4f}: dropped {drop:.4f} > "
                           f"max_cold_user_recall_drop {max_drop} ({who}); raise trainer.gate."
                           f"max_cold_user_recall_drop, or -1 to turn the check off")
    return []


def _fairness_k(entries: dict) -> int | None:
    """The K of a fairness entry the gate uses: 100 when there, else the largest."""
    ks = sorted(int(key.split("@")[1]) for key in entries if key.startswith("recall@"))
    return (100 if 100 in ks else ks[-1]) if ks else None


def group_fairness(current: dict, max_ratio: float, check, checks: dict) -> list[str]:
    """The ``max_group_recall_ratio`` checks of ``decide`` (module docstring); returns notes."""
    prefix = "user_feature:"
    sections = {key[len(prefix):]: s for key, s in (current.get("slices") or {}).items() if key.startswith(prefix)}
    if not sections:
        return [_skip("group_fairness", "not checked: this model's metrics.json has no user-feature slices "
                                        "(trainer.evaluation.enabled: false, no user feature, or written before "
                                        "the slices existed)", checks)]
    notes = []
    for feature, section in sorted(sections.items()):
        name = f"group_fairness_{feature}"
        entries = section.get("fairness", {}).get("model", {})
        k = _fairness_k(entries)
        if k is None:
            notes.append(_skip(name, "not checked: no Recall@K fairness entry for the model", checks))
            continue
        key = f"recall@{k}"
        entry, groups = entries[key], section.get("groups", {})
        size = f"groups of >= {section.get('min_group_users')} users"
        best, worst, ratio = entry.get("best"), entry.get("worst"), entry.get("ratio")
        if best is None or worst is None:
            notes.append(_skip(name, f"not checked: Recall@{k}: {entry.get('why', 'no groups to compare')}", checks))
            continue

        def group(g):
            return f"{g} {groups[g]['model'][key]:.4f} ({groups[g]['num_users']} users)" if g in groups else str(g)

        compared = f"best {group(best)} / worst {group(worst)}"
        if ratio is None and groups.get(best, {}).get("model", {}).get(key, 1.0) == 0:
            check(name, True, f"Recall@{k} of {feature}: every compared group has 0 ({size}); "
                              f"no group does better")
        elif ratio is None:
            check(name, False, f"Recall@{k} of {feature}: {compared}: the worst group has recall 0, an unbounded "
                               f"ratio > max_group_recall_ratio {max_ratio} ({size}); raise trainer.evaluation."
                               f"min_group_users to leave small groups out, or set trainer.gate."
                               f"max_group_recall_ratio: 0 to turn the check off")
        elif ratio <= max_ratio:
            check(name, True, f"Recall@{k} of {feature}: {compared} = {ratio:.2f} <= {max_ratio} ({size})")
        else:
            check(name, False, f"Recall@{k} of {feature}: {compared} = {ratio:.2f} > max_group_recall_ratio "
                               f"{max_ratio} ({size}); raise trainer.gate.max_group_recall_ratio, or 0 to turn "
                               f"the check off")
    return notes


# The Evaluator's model names (ModelSpec.name): the model under evaluation and the latest blessed one.
# With no blessed model yet TFX drops the baseline and TFMA renames the one model "".
RANKING_CANDIDATE, RANKING_BASELINE = "candidate", "baseline"


def ranking_slice_features(evaluation: EvaluationConfig, user_kinds: dict[str, str],
                           domain_sizes: dict[str, int] | None = None) -> list[str]:
    """The user features the ranking Evaluator slices by (one ``SlicingSpec`` each), as example keys.

    The Evaluator reads the raw examples ExampleBuilder wrote (the eval split), and TFMA slices on
    their features as written, before the model's ``evaluate_examples`` signature parses them:
    ``user_<name>``, a categorical feature's string or a numeric feature's float.

    ``evaluation.user_features`` (``trainer.evaluation``, shared with the retrieval slices) chooses
    them from ``user_kinds`` (example key -> kind, the dataset config's user features):

    - ``"*"``: every categorical user feature whose value domain is known and small: the curated
      schema closes the domain of small categoricals only (``domain_sizes``: feature -> the number
      of values of its string domain), and it must have at most ``evaluation.max_groups`` values.
      A feature without a closed domain (a zip prefix, hundreds of values) is sliced only when named.
    - named features: each categorical one, whatever its number of values.
    - numeric features never: TFMA would make one slice per distinct value (61 ages in
      MovieLens-100K) and cannot cut them into bands without a feature of its own, and the number
      of distinct values is not known when the pipeline is built. The retrieval slices in
      ``metrics.json`` cut them into quantile bands instead.
    - ``evaluation.enabled: false``: none (the overall slice only).

    Raises:
        ValueError: a named feature that is not a categorical or numeric user feature.
    """
    from serving.features import CATEGORICAL
    from trainer.retrieval.slices import choose_user_features

    if not evaluation.enabled:
        return []
    keys = choose_user_features(evaluation.user_features, user_kinds)
    categorical = [k for k in keys if user_kinds[k] == CATEGORICAL]
    if list(evaluation.user_features) != ["*"]:
        return categorical
    sizes = domain_sizes or {}
    return [k for k in categorical if 0 < sizes.get(k, 0) <= evaluation.max_groups]


def ranking_eval_config(gate: GateConfig, slice_features: list[str] | tuple[str, ...] = ()):
    """TFMA EvalConfig for the ranking model's Evaluator.

    Metrics: ExampleCount, RMSE of the rating head, AUC of the engagement head, on the overall
    slice and on one slice per value of each of ``slice_features`` (raw example keys, e.g.
    ``ranking_slice_features``'s: ``SlicingSpec(feature_keys=[key])``).

    Gate: RMSE and AUC each have an absolute threshold and a change threshold against the latest
    blessed model (TFX drops the change thresholds when there is none), on the overall slice
    only. A ``MetricConfig.threshold`` would apply to every slice (TFMA's metrics validator
    checks a threshold without a slicing spec against each slice it computed), so a small group
    with a worse RMSE would block the blessing; the thresholds are ``per_slice_thresholds`` on
    the empty ``SlicingSpec()``, which matches the overall slice alone. (Leave
    ``options.min_slice_size`` unset: TFMA drops the metrics of smaller slices, and its validator
    counts a thresholded metric missing from any slice as a failure, per-slice thresholds included.)

    No Fairness Indicators metric: the installed TFMA (0.47) no longer ships
    ``addons.fairness``, and the ``fairness-indicators`` package that holds it now needs
    tensorflow-hub >= 0.16.1, which TFX 1.16 excludes (< 0.16).
    """
    import tensorflow_model_analysis as tfma

    from serving import names
    from trainer import features as F

    def spec(name: str, is_baseline: bool = False):
        return tfma.ModelSpec(name=name, is_baseline=is_baseline, signature_name=names.EVAL_SIGNATURE,
                              label_keys={names.OUT_RATING: F.RATING_LABEL, names.OUT_ENGAGEMENT: F.ENGAGED_LABEL})

    def on_overall_slice(threshold):
        return [tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)]

    rmse = tfma.MetricConfig(class_name="RootMeanSquaredError", per_slice_thresholds=on_overall_slice(
        tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(upper_bound={"value": gate.max_rmse}),
            change_threshold=tfma.GenericChangeThreshold(direction=tfma.MetricDirection.LOWER_IS_BETTER,
                                                         absolute={"value": gate.max_rmse_increase}))))
    auc = tfma.MetricConfig(class_name="AUC", per_slice_thresholds=on_overall_slice(
        tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": gate.min_auc}),
            change_threshold=tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                                         absolute={"value": -gate.max_auc_drop}))))
    return tfma.EvalConfig(
        model_specs=[spec(RANKING_CANDIDATE), spec(RANKING_BASELINE, is_baseline=True)],
        slicing_specs=[tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=[key]) for key in slice_features],
        metrics_specs=[
            tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="ExampleCount")]),
            tfma.MetricsSpec(output_names=[names.OUT_RATING], metrics=[rmse]),
            tfma.MetricsSpec(output_names=[names.OUT_ENGAGEMENT], metrics=[auc]),
        ],
    )


# The RankingGate's thresholds by (TFMA metric name, is the change vs the latest blessed model):
# the trainer.gate key that sets each (ranking_eval_config).
_RANKING_THRESHOLD_KEYS = {("root_mean_squared_error", False): "max_rmse",
                           ("root_mean_squared_error", True): "max_rmse_increase",
                           ("auc", False): "min_auc", ("auc", True): "max_auc_drop"}
_RANKING_METRIC_LABELS = {"root_mean_squared_error": "RMSE", "auc": "AUC", "example_count": "examples"}


def _tfma_slice_text(slice_key) -> str:
    keys = list(slice_key.single_slice_keys)
    if not keys:
        return "overall slice"
    parts = []
    for k in keys:
        value = getattr(k, k.WhichOneof("kind")) if k.WhichOneof("kind") else ""
        parts.append(f"{k.column}={value.decode('utf-8', 'replace') if isinstance(value, bytes) else value}")
    return ", ".join(parts)


def _tfma_failure_text(failure, where: str) -> str:
    """One failed TFMA threshold: metric (head), slice, the value against the bound it broke."""
    key = failure.metric_key
    label = _RANKING_METRIC_LABELS.get(key.name, key.name) + (f" ({key.output_name})" if key.output_name else "")
    setting = _RANKING_THRESHOLD_KEYS.get((key.name, key.is_diff))
    hint = f" (trainer.gate.{setting})" if setting else ""
    if not failure.metric_value.HasField("double_value"):
        return f"{label}, {where}: {failure.message.strip() or 'no value'}{hint}"
    value = failure.metric_value.double_value.value
    t = failure.metric_threshold
    if t.HasField("change_threshold"):
        import tensorflow_model_analysis as tfma

        c = t.change_threshold
        lower_is_better = c.direction == tfma.MetricDirection.LOWER_IS_BETTER
        bound = []
        if c.HasField("absolute"):
            bound.append(f"{'<=' if lower_is_better else '>='} {c.absolute.value:+.4g}")
        if c.HasField("relative"):
            bound.append(f"relative {'<=' if lower_is_better else '>='} {c.relative.value:+.4g}")
        return (f"{label} change vs the latest blessed model, {where}: {value:+.4f}, "
                f"allowed {' and '.join(bound) or 'by the threshold'}{hint}")
    v = t.value_threshold
    if v.HasField("upper_bound") and value > v.upper_bound.value:
        return f"{label}, {where}: {value:.4f} > {v.upper_bound.value:.4g} (upper bound){hint}"
    if v.HasField("lower_bound") and value < v.lower_bound.value:
        return f"{label}, {where}: {value:.4f} < {v.lower_bound.value:.4g} (lower bound){hint}"
    return f"{label}, {where}: {value:.4f} fails {str(v).strip() or 'its threshold'}{hint}"


def ranking_gate_reasons(evaluation_uri: str) -> list[str]:
    """The RankingGate's (TFX Evaluator's) decision in words, as the retrieval gate's reasons are:
    read from the TFMA validation result it wrote into its evaluation artifact
    (``tfma.load_validation_result``). One line per failed threshold (``metric_validations_per_slice``:
    metric and head, slice, the value against the bound, the trainer.gate key that sets it), one per
    slice a threshold names that was not evaluated, and one line when every threshold was met.
    Raises when there is no readable validation result."""
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(evaluation_uri)
    lines = [_tfma_failure_text(f, _tfma_slice_text(v.slice_key))
             for v in result.metric_validations_per_slice for f in v.failures]
    lines += [f"slice {list(s.feature_keys) or 'overall'} was not evaluated: its thresholds could not be checked"
              for s in result.missing_slices]
    if result.missing_thresholds:
        lines.append("TFMA found no thresholds to validate against")
    if result.validation_ok:
        lines.append("every TFMA threshold met" + (" (first model: no blessed baseline, no change thresholds)"
                                                   if result.rubber_stamp else ""))
    return lines
