"""Rollback: take the newest complete pushed version of a model out of service.

Only complete versions count (serving/model_server/version_files.py, the rule the
server loads by): a push killed half-way is not a version, is never served, and
is named in the message but neither counted nor moved. The newest complete
version directory is renamed to ``.rolled_back-<version>`` (kept, not deleted,
so it can be restored by renaming it back), which a polling server, ours or TF
Serving with ``latest { num_versions: 2 }``, takes out of service while the
previous complete version serves. With nothing older complete the rollback
refuses and changes nothing.

The rollback is recorded in ML Metadata: the models behind the rolled-back push
get ``rolled_back=1``, and their ModelBlessings are withdrawn (``blessed`` set
to 0, the gate's verdict kept in ``blessed_before_rollback``). TFX's
LatestBlessedModelStrategy, which finds the warm-start source and the gates'
baseline (wiring/training.py), reads ``blessed == 1`` both when run locally and
in the query it compiles to for Kubeflow, so the next run neither warm-starts
from nor gates against a rolled-back model, with no custom resolver.

The one-call models (``recommender``, ``recommender_brute_force``) embed the model they
were built from, so rolling back a part rolls back what embeds it: with ML Metadata, the
recommender versions pushed from a RecommenderBuilder run over the rolled-back push's
model (``retrieval`` -> ``recommender``, ``retrieval_brute_force`` ->
``recommender_brute_force``, ``ranking`` -> both) are rolled back too, by the same rule,
when they are their model's newest complete version. Otherwise the client, which asks
the one-call model first, would keep serving the rolled-back model through it. Rolling
back a one-call model alone leaves its parts (and their blessings) as they are: they
still serve, and the next run's baselines are theirs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from serving import names
from serving.model_server.version_files import incomplete_reason, version_dirs


# Custom properties the rollback sets (besides TFX's own `blessed`).
ROLLED_BACK = "rolled_back"  # int 1 on the PushedModel, Model and ModelBlessing artifacts of the rollback
ROLLED_BACK_VERSION = "rolled_back_version"  # string: the serving directory that was taken out of service
BLESSED_BEFORE_ROLLBACK = "blessed_before_rollback"  # int: the gate's verdict, on a withdrawn ModelBlessing
# TFX's ModelBlessing properties (tfx.components.evaluator.constants; our ModelGate writes the same).
_BLESSED, _CURRENT_MODEL_ID = "blessed", "current_model_id"
# RecommenderBuilder (tfx_pipeline/components/recommender_builder.py): input key -> the output
# keys (= served model names) of the one-call models built over that input.
COMPOSED_INTO = {
    "scann_model": (names.RECOMMENDER_MODEL,),
    "brute_force_model": (names.RECOMMENDER_BRUTE_FORCE_MODEL,),
    "ranking_model": (names.RECOMMENDER_MODEL, names.RECOMMENDER_BRUTE_FORCE_MODEL),
}
_PARTS = (names.RETRIEVAL_MODEL, names.RETRIEVAL_BRUTE_FORCE_MODEL, names.RANKING_MODEL)


class RollbackError(Exception):
    """A rollback that was refused or only partly done; the message says what to do."""


def versions(model_base: Path) -> list[int]:
    """The complete versions under a model's base path, oldest first."""
    return sorted(v for v, p in version_dirs(str(model_base)).items() if incomplete_reason(p) is None)


def rollback(model_base: Path, metadata_path: Path | None = None) -> str:
    """Moves the newest complete version aside and records it in ML Metadata.

    Args:
        model_base: ``<serving base>/<model>``.
        metadata_path: the pipeline's ML Metadata sqlite file; None or a missing
            file: nothing is recorded (the message says so).

    Returns:
        What was done, for people.

    Raises:
        RollbackError: no pushed versions, nothing older complete to fall back
            to, or the metadata could not be updated (the files were moved then),
            or a one-call model built from the rolled-back push could not be
            rolled back (this model's rollback is done then).
    """
    model_base = Path(model_base)
    if not model_base.is_dir():
        raise RollbackError(f"{model_base}: no pushed versions (run the pipeline first)")
    found = version_dirs(str(model_base))
    reasons = {v: incomplete_reason(p) for v, p in found.items()}
    complete = sorted(v for v, r in reasons.items() if r is None)
    incomplete = {v: r for v, r in sorted(reasons.items()) if r is not None}
    skipped = "".join(f"; version {v} ignored: incomplete ({r})" for v, r in incomplete.items())
    if len(complete) < 2:
        raise RollbackError(
            f"{model_base}: {len(complete)} complete version(s) {complete}, nothing older to roll back to"
            f"{skipped}; push a good model instead (recsys pipeline run)")
    newest, previous = complete[-1], complete[-2]
    source = model_base / str(newest)
    target = model_base / f".rolled_back-{newest}"
    if target.exists():
        target = model_base / f".rolled_back-{newest}-{int(time.time())}"
    os.rename(source, target)
    message = f"rolled back {model_base.name}: version {newest} moved to {target.name}, now serving {previous}{skipped}"
    if metadata_path is None or not Path(metadata_path).is_file():
        hint = (f"; the one-call models built from it were not looked for: roll back {names.RECOMMENDER_MODEL} / "
                f"{names.RECOMMENDER_BRUTE_FORCE_MODEL} too if they were pushed with it"
                if model_base.name in _PARTS else "")
        return message + f"; no ML Metadata at {metadata_path}: warm start and gate baselines unchanged{hint}"
    try:
        marked = mark_rolled_back(Path(metadata_path), str(source))
    except Exception as e:
        raise RollbackError(
            f"{message}, but recording it in ML Metadata {metadata_path} failed ({e}); the next run may warm-start "
            f"from or gate against the rolled-back model, so rerun the rollback's metadata step or remove "
            f"{metadata_path}") from e
    if not marked:
        return message + f"; no push of {source} recorded in {metadata_path}: warm start and gate baselines unchanged"
    message += (f"; ML Metadata: model artifact(s) {marked} marked rolled_back=1 and unblessed (the "
                f"warm-start and gate baselines skip them)")
    return message + _roll_back_dependents(Path(metadata_path), str(source), message)


def _roll_back_dependents(metadata_path: Path, pushed_dir: str, done: str) -> str:
    """Rolls back the one-call model versions built over the push of `pushed_dir`; what was done."""
    try:
        dependents = dependent_pushes(metadata_path, pushed_dir)
    except Exception as e:
        raise RollbackError(f"{done}, but finding the one-call models built from it in ML Metadata failed ({e}); "
                            f"roll them back by hand (recsys rollback --model recommender / "
                            f"recommender_brute_force)") from e
    out = ""
    for version_dir in dependents:
        base, version = Path(version_dir).parent, Path(version_dir).name
        if not os.path.isdir(version_dir):
            continue  # already rolled back (or removed)
        newest = versions(base)
        if not newest or str(newest[-1]) != version:
            out += f"; {base.name} version {version} (built from it) is not its newest complete version: left alone"
            continue
        try:
            out += f"; then {rollback(base, metadata_path)}"
        except RollbackError as e:
            raise RollbackError(
                f"{done}{out}; but {base.name} version {version}, built from the rolled-back model, still serves it: "
                f"{e}. Move {version_dir} aside by hand (clients fall back to the two-stage path where the one-call "
                f"model is not served)") from e
    return out


def dependent_pushes(metadata_path: Path, pushed_dir: str) -> list[str]:
    """The pushed version directories of the one-call models built over the model pushed to `pushed_dir`.

    Follows ML Metadata downwards: the push's ``model`` input -> RecommenderBuilder runs that
    took it as an input of COMPOSED_INTO -> their matching output models -> the pushes of
    those (``pushed_destination``). Sorted; empty when none is recorded.
    """
    from ml_metadata.proto import metadata_store_pb2

    store = _store(metadata_path)
    event_types = metadata_store_pb2.Event
    pushes = [a.id for a in store.get_artifacts_by_type("PushedModel")
              if "pushed_destination" in a.custom_properties
              and _same_path(a.custom_properties["pushed_destination"].string_value, pushed_dir)]
    if not pushes:
        return []

    def key(event) -> str | None:
        return next((s.key for s in event.path.steps if s.HasField("key")), None)

    push_runs = {e.execution_id for e in store.get_events_by_artifact_ids(pushes) if e.type == event_types.OUTPUT}
    models = {e.artifact_id for e in store.get_events_by_execution_ids(sorted(push_runs))
              if e.type == event_types.INPUT and key(e) == "model"}
    # (execution, output key) of every one-call model built over one of `models`.
    wanted = {(e.execution_id, out) for e in store.get_events_by_artifact_ids(sorted(models))
              if e.type == event_types.INPUT and key(e) in COMPOSED_INTO for out in COMPOSED_INTO[key(e)]}
    built = {e.artifact_id for e in store.get_events_by_execution_ids(sorted({x for x, _ in wanted}))
             if e.type == event_types.OUTPUT and (e.execution_id, key(e)) in wanted}
    consumers = {e.execution_id for e in store.get_events_by_artifact_ids(sorted(built))
                 if e.type == event_types.INPUT and key(e) == "model"}
    pushed = {e.artifact_id for e in store.get_events_by_execution_ids(sorted(consumers))
              if e.type == event_types.OUTPUT}
    return sorted({a.custom_properties["pushed_destination"].string_value
                   for a in store.get_artifacts_by_id(sorted(pushed))
                   if "pushed_destination" in a.custom_properties})  # TFX sets it only on a real push


def _store(metadata_path: Path):
    import ml_metadata as mlmd
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(metadata_path)
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
    return mlmd.MetadataStore(config)


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def mark_rolled_back(metadata_path: Path, pushed_dir: str) -> list[int]:
    """Marks the push of `pushed_dir` and the models behind it, and withdraws their blessings.

    "Behind" follows each execution's ``model`` input upwards (Pusher <- ScaNN
    IndexBuilder <- Trainer); a Trainer's ``base_model`` (its warm-start source)
    is another input key and is left alone.

    Returns:
        The ids of the Model artifacts marked (empty: no such push recorded).
    """
    from ml_metadata.proto import metadata_store_pb2

    store = _store(metadata_path)
    pushes = [a for a in store.get_artifacts_by_type("PushedModel")
              if "pushed_destination" in a.custom_properties
              and _same_path(a.custom_properties["pushed_destination"].string_value, pushed_dir)]
    if not pushes:
        return []
    model_type = store.get_artifact_type("Model").id
    to_mark = {a.id: a for a in pushes}
    frontier = [e.execution_id for e in store.get_events_by_artifact_ids([a.id for a in pushes])
                if e.type == metadata_store_pb2.Event.OUTPUT]
    seen: set[int] = set()
    while frontier:
        execution_id = frontier.pop()
        if execution_id in seen:
            continue
        seen.add(execution_id)
        inputs = [e.artifact_id for e in store.get_events_by_execution_ids([execution_id])
                  if e.type == metadata_store_pb2.Event.INPUT and any(s.key == "model" for s in e.path.steps)]
        for artifact in store.get_artifacts_by_id(inputs):
            if artifact.type_id != model_type or artifact.id in to_mark:
                continue
            to_mark[artifact.id] = artifact
            frontier += [e.execution_id for e in store.get_events_by_artifact_ids([artifact.id])
                         if e.type == metadata_store_pb2.Event.OUTPUT]
    models = sorted(i for i, a in to_mark.items() if a.type_id == model_type)
    for blessing in store.get_artifacts_by_type("ModelBlessing"):
        props = blessing.custom_properties
        if _CURRENT_MODEL_ID in props and props[_CURRENT_MODEL_ID].int_value in models:
            if _BLESSED in props:
                props[BLESSED_BEFORE_ROLLBACK].int_value = props[_BLESSED].int_value
            props[_BLESSED].int_value = 0
            to_mark[blessing.id] = blessing
    for artifact in to_mark.values():
        artifact.custom_properties[ROLLED_BACK].int_value = 1
        artifact.custom_properties[ROLLED_BACK_VERSION].string_value = pushed_dir
    store.put_artifacts(list(to_mark.values()))
    return models
