"""Shared fixtures: paths from __file__, RecBole isolated from pytest's argv."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEED_DATA = REPO.parent / "shared" / "seed_data"


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    # RecBole's Config parses sys.argv; pytest's own flags must not become config.
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def seed_source():
    """A RawSource reading ../shared/seed_data, never the network."""
    from recbole_cdsr.data.sources import RawSource

    if not SEED_DATA.is_dir():
        raise FileNotFoundError(f"tests need the seed data mirror at {SEED_DATA}")
    return RawSource(mirror=SEED_DATA, allow_download=False)
