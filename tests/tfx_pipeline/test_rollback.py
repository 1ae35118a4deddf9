"""Rollback: complete versions only, refuses with nothing older complete, recorded in ML Metadata.

The metadata half runs on a real ML Metadata sqlite store holding what two pipeline
runs record (TFX's artifact types, event keys and the Pusher's pushed_destination):
run 1 trains model A and pushes it; run 2 warm-starts from A (``base_model``),
trains B, builds the ScaNN model S from B (``model``) and pushes S. Rolling S's
version back marks S and B (not A) and withdraws B's blessing, and TFX's
LatestBlessedModelStrategy, the baselines' resolver, then answers A. The one-call
models embed their parts: rolling back a part rolls back the recommender versions built
over it (and only those), and refuses loudly when one of them cannot be rolled back.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

import serving  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from tests.support.model_servers import install_version, save_model
from tfx_pipeline.cli import main
from tfx_pipeline.rollback import BLESSED_BEFORE_ROLLBACK, ROLLED_BACK, RollbackError, rollback, versions


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> str:
    return save_model(str(tmp_path_factory.mktemp("exported") / "model"), 1)


def _push(base: Path, exported: str, version: int) -> str:
    return install_version(exported, str(base), version)


def _partial_push(base: Path, exported: str, version: int) -> None:
    """What a push killed half-way leaves: the variables, no graph."""
    shutil.copytree(exported, base / str(version))
    os.remove(base / str(version) / "saved_model.pb")


def test_rollback_moves_the_newest_complete_version_aside(tmp_path, exported):
    base = tmp_path / "retrieval"
    for v in (100, 200):
        _push(base, exported, v)
    _partial_push(base, exported, 300)
    message = rollback(base)
    assert "version 200 moved to .rolled_back-200, now serving 100" in message
    assert "version 300 ignored: incomplete (saved_model.pb is missing)" in message
    assert "no ML Metadata" in message
    assert versions(base) == [100]
    assert (base / ".rolled_back-200" / "saved_model.pb").is_file()  # kept, not deleted
    assert (base / "300").is_dir()  # the partial push is named, not touched


def test_rollback_refuses_when_nothing_older_is_complete(tmp_path, exported):
    base = tmp_path / "ranking"
    _partial_push(base, exported, 100)  # the only older one is partial
    _push(base, exported, 200)
    before = sorted(os.listdir(base))
    with pytest.raises(RollbackError, match=r"1 complete version\(s\) \[200\], nothing older to roll back to"):
        rollback(base)
    assert sorted(os.listdir(base)) == before
    with pytest.raises(RollbackError, match="no pushed versions"):
        rollback(tmp_path / "missing")


def test_cli_rollback_refusal_exits_non_zero_with_the_reason(tmp_path, exported, capsys):
    serving_base = tmp_path / "serving"
    _push(serving_base / "ranking", exported, 100)
    cfg = {"name": "rb", "schema_dir": "schemas/implicit_demo", "pipeline_root": str(tmp_path / "run"),
           "serving_base_path": str(serving_base),
           "data": {"events": {"path": "e.csv", "columns": {"user": "u", "item": "i", "timestamp": "t"}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["rollback", "--config", str(path), "--model", "ranking"]) == 2
    err = capsys.readouterr().err
    assert "RollbackError" in err and "nothing older to roll back to" in err
    _push(serving_base / "ranking", exported, 200)
    assert main(["rollback", "--config", str(path), "--model", "ranking"]) == 0
    assert "now serving 100" in capsys.readouterr().out


# -- ML Metadata ---------------------------------------------------------------------


class _Store:
    """A real ML Metadata sqlite store, written the way TFX records component runs."""

    def __init__(self, path: Path):
        import ml_metadata as mlmd
        from ml_metadata.proto import metadata_store_pb2 as pb

        self.pb, self.path = pb, path
        config = pb.ConnectionConfig()
        config.sqlite.filename_uri = str(path)
        config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        self.store = mlmd.MetadataStore(config)
        self.types = {name: self.store.put_artifact_type(pb.ArtifactType(name=name))
                      for name in ("Model", "ModelBlessing", "PushedModel")}
        self.exec_types = {name: self.store.put_execution_type(pb.ExecutionType(name=name))
                           for name in ("Trainer", "ModelGate", "IndexBuilder", "RecommenderBuilder", "Pusher")}

    def artifact(self, type_name: str, uri: str, **props) -> int:
        artifact = self.pb.Artifact(type_id=self.types[type_name], uri=uri, state=self.pb.Artifact.LIVE)
        for key, value in props.items():
            if isinstance(value, int):
                artifact.custom_properties[key].int_value = value
            else:
                artifact.custom_properties[key].string_value = value
        return self.store.put_artifacts([artifact])[0]

    def execution(self, type_name: str, inputs: dict[str, int], outputs: dict[str, int]) -> None:
        execution = self.pb.Execution(type_id=self.exec_types[type_name],
                                      last_known_state=self.pb.Execution.COMPLETE)
        pairs = []
        for kind, items in ((self.pb.Event.INPUT, inputs), (self.pb.Event.OUTPUT, outputs)):
            for key, artifact_id in items.items():
                event = self.pb.Event(type=kind)
                event.path.steps.add().key = key
                event.path.steps.add().index = 0
                pairs.append((self.pb.Artifact(id=artifact_id), event))
        artifacts = self.store.get_artifacts_by_id([a.id for a, _ in pairs])
        by_id = {a.id: a for a in artifacts}
        self.store.put_execution(execution, [(by_id[a.id], e) for a, e in pairs], contexts=[])

    def latest_blessed(self) -> int | None:
        """What the baselines' Resolver (wiring/training.py) answers, through TFX's own classes."""
        from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
        from tfx.types import artifact_utils

        def load(type_name):
            artifact_type = self.store.get_artifact_types_by_id([self.types[type_name]])[0]
            return [artifact_utils.deserialize_artifact(artifact_type, a)
                    for a in self.store.get_artifacts_by_type(type_name)]

        result = LatestBlessedModelStrategy().resolve_artifacts(
            self.store, {"model": load("Model"), "model_blessing": load("ModelBlessing")})
        return result["model"][0].id if result["model"] else None

    def rolled_back(self) -> set[int]:
        return {a.id for a in self.store.get_artifacts() if a.custom_properties.get(ROLLED_BACK)
                and a.custom_properties[ROLLED_BACK].int_value == 1}


def _two_runs(tmp_path: Path, exported: str, base: Path) -> tuple[_Store, dict]:
    db = _Store(tmp_path / "metadata.sqlite")
    ids = {}
    for run, version in ((1, 100), (2, 200)):
        model = db.artifact("Model", str(tmp_path / f"run{run}/model"))
        db.execution("Trainer", {"base_model": ids["model1"]} if run == 2 else {}, {"model": model})
        blessing = db.artifact("ModelBlessing", str(tmp_path / f"run{run}/blessing"), blessed=1,
                               current_model_id=model)
        db.execution("ModelGate", {"model": model}, {"blessing": blessing})
        pushed_input = model
        if run == 2:  # the served retrieval model is the ScaNN model built from the trainer's
            pushed_input = db.artifact("Model", str(tmp_path / "run2/scann_model"))
            db.execution("IndexBuilder", {"model": model}, {"scann_model": pushed_input})
            ids["scann2"] = pushed_input
        destination = _push(base, exported, version)
        pushed = db.artifact("PushedModel", str(tmp_path / f"run{run}/pushed"), pushed=1,
                             pushed_destination=destination, pushed_version=str(version))
        db.execution("Pusher", {"model": pushed_input, "model_blessing": blessing}, {"pushed_model": pushed})
        ids[f"model{run}"], ids[f"pushed{run}"], ids[f"blessing{run}"] = model, pushed, blessing
    return db, ids


def test_rollback_marks_the_pushed_models_and_the_baseline_resolver_skips_them(tmp_path, exported):
    base = tmp_path / "serving" / "retrieval"
    db, ids = _two_runs(tmp_path, exported, base)
    assert db.latest_blessed() == ids["model2"]

    message = rollback(base, db.path)
    assert "now serving 100" in message
    assert f"model artifact(s) {sorted([ids['model2'], ids['scann2']])} marked rolled_back=1 and unblessed" in message
    # The pushed model, the models behind it through `model` inputs and B's blessing; not
    # run 1's A, which run 2 only warm-started from (`base_model`).
    assert db.rolled_back() == {ids["model2"], ids["scann2"], ids["pushed2"], ids["blessing2"]}
    blessing = db.store.get_artifacts_by_id([ids["blessing2"]])[0].custom_properties
    assert blessing["blessed"].int_value == 0 and blessing[BLESSED_BEFORE_ROLLBACK].int_value == 1
    assert db.latest_blessed() == ids["model1"]

    # Rolling run 1 back too is refused: nothing older is complete, nothing is marked.
    with pytest.raises(RollbackError, match="nothing older"):
        rollback(base, db.path)
    assert db.latest_blessed() == ids["model1"]


def test_rollback_of_a_version_the_pipeline_did_not_push_says_the_metadata_is_unchanged(tmp_path, exported):
    base = tmp_path / "serving" / "retrieval"
    db, ids = _two_runs(tmp_path, exported, base)
    _push(base, exported, 300)  # copied in by hand
    message = rollback(base, db.path)
    assert "now serving 200" in message and "no push of" in message and "baselines unchanged" in message
    assert db.rolled_back() == set()
    assert db.latest_blessed() == ids["model2"]


def _two_runs_with_recommenders(tmp_path: Path, exported: str, serving: Path, runs=(1, 2)) -> tuple[_Store, dict]:
    """Each run: trainers B (retrieval) and M (ranking), ScaNN S from B, RecommenderBuilder over
    S, B and M -> R (recommender) and F (recommender_brute_force); all five pushed."""
    from serving import names

    db = _Store(tmp_path / "metadata.sqlite")
    ids = {}
    for run in runs:
        version = 100 * run
        b = db.artifact("Model", str(tmp_path / f"run{run}/retrieval_model"))
        m = db.artifact("Model", str(tmp_path / f"run{run}/ranking_model"))
        db.execution("Trainer", {}, {"model": b})
        db.execution("Trainer", {"base_model": ids[f"M{run - 1}"]} if f"M{run - 1}" in ids else {}, {"model": m})
        s = db.artifact("Model", str(tmp_path / f"run{run}/scann_model"))
        db.execution("IndexBuilder", {"model": b}, {"scann_model": s})
        r = db.artifact("Model", str(tmp_path / f"run{run}/recommender"))
        f = db.artifact("Model", str(tmp_path / f"run{run}/recommender_brute_force"))
        blessing = db.artifact("ModelBlessing", str(tmp_path / f"run{run}/recommender_blessing"), blessed=1)
        db.execution("RecommenderBuilder", {"scann_model": s, "brute_force_model": b, "ranking_model": m},
                     {"recommender": r, "recommender_brute_force": f, "blessing": blessing})
        for name, model in ((names.RETRIEVAL_MODEL, s), (names.RETRIEVAL_BRUTE_FORCE_MODEL, b),
                            (names.RANKING_MODEL, m), (names.RECOMMENDER_MODEL, r),
                            (names.RECOMMENDER_BRUTE_FORCE_MODEL, f)):
            destination = _push(serving / name, exported, version)
            pushed = db.artifact("PushedModel", str(tmp_path / f"run{run}/pushed_{name}"), pushed=1,
                                 pushed_destination=destination, pushed_version=str(version))
            db.execution("Pusher", {"model": model}, {"pushed_model": pushed})
        ids.update({f"B{run}": b, f"M{run}": m, f"S{run}": s, f"R{run}": r, f"F{run}": f})
    return db, ids


def test_rolling_back_a_part_rolls_back_the_one_call_models_built_over_it(tmp_path, exported):
    from serving import names

    serving = tmp_path / "serving"
    db, ids = _two_runs_with_recommenders(tmp_path, exported, serving)
    message = rollback(serving / names.RETRIEVAL_MODEL, db.path)
    assert f"then rolled back {names.RECOMMENDER_MODEL}: version 200 moved" in message, message
    assert versions(serving / names.RECOMMENDER_MODEL) == [100]
    assert versions(serving / names.RECOMMENDER_BRUTE_FORCE_MODEL) == [100, 200]  # not built over ScaNN
    assert versions(serving / names.RANKING_MODEL) == [100, 200]
    assert ids["R2"] in db.rolled_back() and ids["F2"] not in db.rolled_back()
    assert ids["M2"] not in db.rolled_back()  # the recommender's rollback leaves its parts alone

    # Ranking is in both: the one left (recommender_brute_force) goes too; recommender's 200 is gone already.
    message = rollback(serving / names.RANKING_MODEL, db.path)
    assert f"then rolled back {names.RECOMMENDER_BRUTE_FORCE_MODEL}: version 200 moved" in message, message
    assert versions(serving / names.RECOMMENDER_BRUTE_FORCE_MODEL) == [100]
    assert versions(serving / names.RECOMMENDER_MODEL) == [100]
    assert {ids["F2"], ids["M2"]} <= db.rolled_back()



def test_rolling_back_a_one_call_model_leaves_its_parts_alone(tmp_path, exported):
    from serving import names

    serving = tmp_path / "serving"
    db, ids = _two_runs_with_recommenders(tmp_path, exported, serving)
    message = rollback(serving / names.RECOMMENDER_MODEL, db.path)
    assert "now serving 100" in message and "then rolled back" not in message
    assert {n: versions(serving / n) for n in names.ALL_MODELS} == {
        n: [100] if n == names.RECOMMENDER_MODEL else [100, 200] for n in names.ALL_MODELS}
    marked = db.rolled_back()
    assert ids["R2"] in marked and not {ids["S2"], ids["B2"], ids["M2"], ids["F2"]} & marked


def test_a_one_call_model_that_cannot_be_rolled_back_is_reported(tmp_path, exported):
    from serving import names

    serving = tmp_path / "serving"
    db, ids = _two_runs_with_recommenders(tmp_path, exported, serving)
    shutil.rmtree(serving / names.RECOMMENDER_BRUTE_FORCE_MODEL / "100")  # only run 2's version left
    with pytest.raises(RollbackError) as e:
        rollback(serving / names.RETRIEVAL_BRUTE_FORCE_MODEL, db.path)
    text = str(e.value)
    assert "rolled back retrieval_brute_force: version 200 moved" in text  # done, and said so
    assert f"but {names.RECOMMENDER_BRUTE_FORCE_MODEL} version 200, built from the rolled-back model, still serves it" in text
    assert "nothing older to roll back to" in text
    assert versions(serving / names.RETRIEVAL_BRUTE_FORCE_MODEL) == [100]
    assert versions(serving / names.RECOMMENDER_BRUTE_FORCE_MODEL) == [200]
    assert versions(serving / names.RECOMMENDER_MODEL) == [100, 200]  # not built over the brute-force export


def test_without_metadata_the_one_call_models_are_named(tmp_path, exported):
    from serving import names

    base = tmp_path / "serving" / names.RANKING_MODEL
    for v in (100, 200):
        _push(base, exported, v)
    message = rollback(base)
    assert f"roll back {names.RECOMMENDER_MODEL} / {names.RECOMMENDER_BRUTE_FORCE_MODEL} too" in message


def test_rollback_follows_the_builders_keys():
    """rollback.COMPOSED_INTO names the RecommenderBuilder's inputs and outputs."""
    from tfx_pipeline.components.recommender_builder import RecommenderBuilder
    from tfx_pipeline.rollback import COMPOSED_INTO

    spec = RecommenderBuilder.SPEC_CLASS
    assert set(COMPOSED_INTO) <= set(spec.INPUTS)
    assert {out for outs in COMPOSED_INTO.values() for out in outs} <= set(spec.OUTPUTS)
