"""The recsys command: readable errors with exit code 2, and the data half on MovieLens."""

import pytest
import yaml

from tfx_pipeline.cli import main


def _write_config(tmp_path, events: str) -> str:
    (tmp_path / "events.csv").write_text(events)
    cfg = {"name": "cli_bad", "schema_dir": "schemas/implicit_demo", "pipeline_root": str(tmp_path / "run"),
           "data": {"events": {"path": str(tmp_path / "events.csv"),
                               "columns": {"user": "u", "item": "i", "timestamp": "t", "event_type": "a"},
                               "event_weights": {"click": 1.0, "purchase": 3.0}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_unknown_config_key_exits_2(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nschema_dir: s\ndata: {events: {path: e, columns: {user: u, item: i, timestamp: t}}}\nbogus: 1\n")
    assert main(["pipeline", "run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "ConfigError" in err and "bogus" in err


@pytest.mark.parametrize("override,where", [
    ("trainer.retrieval.epoch=2", "trainer.retrieval: unknown key(s) ['epoch']"),
    ("trainer.ranking.epochs=two", "trainer.ranking.epochs: expected an integer"),
    ("trainer.retrieval.history_encoder=lstm", "history_encoder must be one of"),
    ("trainer.gate.min_auc=high", "trainer.gate.min_auc"),
    ("trainer.tuning.algorithm=grid", "algorithm must be one of"),
])
def test_a_trainer_typo_fails_before_any_component_runs(tmp_path, capsys, override, where):
    # The trainer sections are part of the one typed config: checked when the run starts.
    path = _write_config(tmp_path, "u,i,t,a\nu1,s1,100,click\n")
    assert main(["pipeline", "run", "--config", path, "--set", override]) == 2
    err = capsys.readouterr().err
    assert "ConfigError" in err and where in err, err
    assert not (tmp_path / "run").exists()  # nothing ran: no pipeline root, no ML Metadata


def test_bad_row_inside_the_pipeline_is_reported_with_file_column_line(tmp_path, capsys):
    path = _write_config(tmp_path, "u,i,t,a\nu1,s1,100,click\nu1,s2,not-a-time,click\n")
    assert main(["pipeline", "run", "--config", path, "--stage", "data"]) == 2
    err = capsys.readouterr().err
    assert "DataError" in err and "events.csv" in err and "column 't'" in err and "line 3" in err
    assert not (tmp_path / "run" / "artifacts" / "StatisticsGen").exists()


@pytest.mark.e2e
def test_movielens_data_half(tmp_path, capsys):
    rc = main(["pipeline", "run", "--config", "configs/movielens_100k.yaml", "--stage", "data",
               "--set", f"pipeline_root={tmp_path / 'run'}"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "examples per split: {'train': 80000, 'eval': 20000, 'items': 1682, 'users': 943}" in out
    assert "DataGate" in out and "Transform" in out
