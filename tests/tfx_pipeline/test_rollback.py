"""Rollback moves the newest version aside so the previous one serves; refuses with one version."""

import pytest

from tfx_pipeline.rollback import rollback, versions


def test_rollback_moves_newest_aside(tmp_path):
    for v in ("100", "200"):
        (tmp_path / "retrieval" / v).mkdir(parents=True)
    msg = rollback(tmp_path / "retrieval")
    assert "now serving 100" in msg
    assert versions(tmp_path / "retrieval") == [100]
    assert (tmp_path / "retrieval" / ".rolled_back-200").is_dir()  # kept, not deleted


def test_rollback_refuses_without_a_previous_version(tmp_path):
    (tmp_path / "ranking" / "100").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="nothing to roll back to"):
        rollback(tmp_path / "ranking")
    with pytest.raises(FileNotFoundError, match="no pushed versions"):
        rollback(tmp_path / "missing")
