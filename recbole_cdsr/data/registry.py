"""The datasets recbole_cdsr can build, and the cached conversion that builds them.

A converter is a pure function ``convert(fetch, out_dir) -> stats``: ``fetch(rel)``
returns a verified local path of a raw file (see :mod:`sources`), the converter writes
``<out_dir>/<name>.*`` atomic files and returns a JSON-able stats dict. The registry
wraps it with ``stats.json`` (counts and sha256 of every converted file, verified before
the folder is trusted), a README, a lock and an atomic rename of the finished folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from recbole_cdsr.data.sources import RawFileError, RawSource, checksums, sha256_of, upstream_url

logger = logging.getLogger(__name__)

STAMP = "stats.json"


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: its converter (``module:function`` under converters/) and facts."""

    name: str
    converter: str
    version: int  # bump when the converter's output changes; invalidates caches
    domains: tuple[str, ...]
    paper: str
    description: str
    split: str  # how train/valid/test are formed

    def convert_fn(self) -> Callable:
        module, func = self.converter.split(":")
        return getattr(importlib.import_module(f"recbole_cdsr.data.converters.{module}"), func)


def _d(name, converter, version, domains, paper, description, split) -> DatasetInfo:
    return DatasetInfo(name, converter, version, tuple(domains), paper, description, split)


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        _d("ml100k_genre", "ml100k:convert_ml100k_genre", 1, ["drama", "other"],
           "embedded", "MovieLens-100K shipped inside recbole, two domains by genre",
           "leave-one-out per user (RecBole LS valid_and_test)"),
        _d("ml100k_tiny", "ml100k:convert_ml100k_tiny", 1, ["drama", "other"],
           "embedded", "the first 100 users of ml100k_genre (smoke tests, CI grids)",
           "leave-one-out per user (RecBole LS valid_and_test)"),
        _d("food_kitchen", "llmcdsr:convert_food_kitchen", 1, ["food", "kitchen"],
           "LLMCDSR (TOIS'25)", "Amazon Grocery&Food x Home&Kitchen",
           "fixed user-level split: train users / 960 valid / 937 test overlapped users"),
        _d("movie_book", "llmcdsr:convert_movie_book", 1, ["movie", "book"],
           "LLMCDSR (TOIS'25)", "Amazon Movies x Books (upstream incomplete)",
           "fixed user-level split"),
        _d("cloth_sport", "i2vae:convert_cloth_sport", 1, ["cloth", "sport"],
           "I2VAE (UAI'25)", "Amazon Clothing x Sports", "fixed row-level split"),
        _d("phone_elec", "i2vae:convert_phone_elec", 1, ["phone", "elec"],
           "I2VAE (UAI'25)", "Amazon Phones x Electronics", "fixed row-level split"),
        _d("game_video", "i2vae:convert_game_video", 1, ["game", "video"],
           "I2VAE (UAI'25)", "Amazon Games x Video", "fixed row-level split"),
        _d("beauty", "adarec:convert_beauty", 1, ["beauty"], "ADARec",
           "Amazon Beauty 5-core (single domain)", "leave-one-out per user"),
        _d("sports", "adarec:convert_sports", 1, ["sports"], "ADARec",
           "Amazon Sports&Outdoors 5-core (single domain)", "leave-one-out per user"),
        _d("toys", "adarec:convert_toys", 1, ["toys"], "ADARec",
           "Amazon Toys&Games 5-core (single domain)", "leave-one-out per user"),
        _d("yelp", "adarec:convert_yelp", 1, ["yelp"], "ADARec",
           "Yelp (single domain)", "leave-one-out per user"),
        _d("home", "seedrec:convert_home", 1, ["home"], "SeeDRec (IJCAI'24)",
           "Amazon Home with category sememes (single domain)", "leave-one-out per user"),
        _d("electronic", "seedrec:convert_electronic", 1, ["electronic"],
           "SeeDRec (IJCAI'24)",
           "Amazon Electronics with category sememes; no timestamps upstream",
           "leave-one-out per user"),
        _d("amazon5", "syncrec:convert_amazon5", 1,
           ["books", "clothing", "toys", "sports", "videogames"], "SyNCRec (SIGIR'24)",
           "500-user Amazon sample, 5 domains", "leave-one-out per user"),
    ]
}


def dataset_info(name: str) -> DatasetInfo:
    """Returns the registry entry of ``name`` or raises a ValueError listing them."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; recbole_cdsr knows {sorted(DATASETS)}. For your "
            f"own data, put atomic files in <data_path>/{name}/ (see docs/atomic_format.md)"
        ) from None


class _RecordingFetch:
    """Wraps a RawSource and remembers which raw files a converter used."""

    def __init__(self, source: RawSource):
        self.source, self.used = source, []

    def __call__(self, rel: str) -> Path:
        path = self.source(rel)
        self.used.append(rel)
        return path


class CacheError(RuntimeError):
    """A converted dataset fails verification and cannot be rebuilt."""


def _manifest(folder: Path) -> dict[str, dict]:
    """``{relative path: {"bytes", "lines", "sha256"}}`` of every file in ``folder``."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest, size, lines = hashlib.sha256(), 0, 0
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
                lines += block.count(b"\n")
        files[path.relative_to(folder).as_posix()] = {
            "bytes": size, "lines": lines, "sha256": digest.hexdigest()}
    return files


def verify_cache(folder: Path, info: DatasetInfo) -> str | None:
    """Checks a converted folder against its ``stats.json``.

    Returns:
        None when the converter version, the raw files' checksums and every converted
        file (bytes and sha256) match what ``stats.json`` records; else what differs.
        Files not listed (caches that models derive, such as I2VAE's pseudo-sequences)
        are not checked.
    """
    stamp = folder / STAMP
    if not stamp.is_file():
        return f"{stamp} is missing (the conversion never finished)"
    try:
        meta = json.loads(stamp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"{stamp} is not valid JSON ({err})"
    if meta.get("converter_version") != info.version:
        return (f"it was made by converter version {meta.get('converter_version')}, the "
                f"current one is {info.version}")
    for rel, digest in meta.get("raw_files", {}).items():
        if checksums().get(rel, "unverified") != digest:
            return f"raw file {rel} has a different registered checksum now"
    files = meta.get("files")
    if not files:
        return f"{stamp} records no converted files (made by an older recbole_cdsr)"
    for rel, expected in files.items():
        path = folder / rel
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != expected["bytes"] or sha256_of(path) != expected["sha256"]:
            return f"{path} was changed after conversion (its sha256 differs from {STAMP})"
    return None


def prepare_dataset(
    name: str, data_path: Path, source: RawSource | None = None, force: bool = False
) -> dict:
    """Makes sure ``<data_path>/<name>/`` holds the verified converted atomic files.

    A folder whose files match its ``stats.json`` is used as is. Otherwise the dataset
    is converted under an exclusive lock (``<data_path>/.<name>.lock``) into a private
    temporary folder, which then replaces ``<name>/`` by a rename, so concurrent
    processes never see a half-written folder and convert only once.

    Returns:
        The converter's stats dict.

    Raises:
        CacheError: the folder fails verification and the raw files to rebuild it are
            not available.
    """
    info = dataset_info(name)
    data_path = Path(data_path)
    folder = data_path / name
    if not force and verify_cache(folder, info) is None:
        return json.loads((folder / STAMP).read_text())["stats"]
    try:
        data_path.mkdir(parents=True, exist_ok=True)
        lock = open(data_path / f".{name}.lock", "a")
    except OSError as err:
        raise CacheError(
            f"dataset {name} must be converted into {folder} ({verify_cache(folder, info)}) "
            f"but {data_path} is not writable ({err}); choose a writable --data_path"
        ) from err
    with lock:  # closing the file releases the flock
        fcntl.flock(lock, fcntl.LOCK_EX)
        problem = None if force else verify_cache(folder, info)
        if problem is None and not force:  # another process converted it meanwhile
            return json.loads((folder / STAMP).read_text())["stats"]
        if folder.exists():
            logger.warning("dataset %s: %s; rebuilding it from the raw files", name, problem)
        try:
            return _convert(info, folder, source)
        except RawFileError as err:
            if not folder.exists():
                raise
            raise CacheError(
                f"{folder} cannot be trusted ({problem}) and cannot be rebuilt: {err}. "
                f"Make the raw files available, or delete {folder} to drop the dataset"
            ) from err


def _convert(info: DatasetInfo, folder: Path, source: RawSource | None) -> dict:
    """Converts into a temporary folder and renames it to ``folder`` (lock held)."""
    root = folder.parent
    for stale in [*root.glob(f".{info.name}.converting.*"), *root.glob(f".{info.name}.old.*"),
                  root / f"{info.name}.converting"]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed process
    tmp = root / f".{info.name}.converting.{os.getpid()}"
    tmp.mkdir()
    try:
        fetch = _RecordingFetch(source or RawSource())
        logger.info("converting dataset %s into %s", info.name, folder)
        stats = info.convert_fn()(fetch, tmp)
        raw = {rel: checksums().get(rel, "unverified") for rel in sorted(set(fetch.used))}
        (tmp / "README.md").write_text(_readme(info, raw, stats))
        meta = {"dataset": info.name, "converter_version": info.version, "raw_files": raw,
                "files": _manifest(tmp), "stats": stats}
        (tmp / STAMP).write_text(json.dumps(meta, indent=1) + "\n")
        old = root / f".{info.name}.old.{os.getpid()}"
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("dataset %s: %s", info.name, json.dumps(stats))
    return stats


def _readme(info: DatasetInfo, raw: dict[str, str], stats: dict) -> str:
    lines = [
        f"# {info.name}", "", f"{info.description}. Paper: {info.paper}.",
        f"Split: {info.split}. Domains: {', '.join(info.domains)}.", "",
        "Generated by `python -m recbole_cdsr.data.registry "
        f"{info.name}` (converter version {info.version}); do not edit by hand.", "",
        "| raw file | sha256 | source |", "|---|---|---|",
    ]
    lines += [f"| {rel} | {d} | {upstream_url(rel)} |" for rel, d in raw.items()]
    lines += ["", "Statistics:", "", "```json", json.dumps(stats, indent=1), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m recbole_cdsr.data.registry NAME [NAME ...] [--data_path=D]``."""
    import argparse

    parser = argparse.ArgumentParser(description="convert raw datasets to atomic files")
    parser.add_argument("names", nargs="*", default=sorted(DATASETS))
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--mirror_path", default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    from recbole_cdsr.utils import default_data_path

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    data_path = Path(args.data_path) if args.data_path else default_data_path()
    for name in args.names:
        prepare_dataset(name, data_path, RawSource(args.mirror_path), force=args.force)


if __name__ == "__main__":
    main()
