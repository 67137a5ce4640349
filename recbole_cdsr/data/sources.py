"""Where raw dataset files come from, and how they are verified.

Every raw file a converter reads is named by its path relative to a *mirror root*
laid out like the project's seed-data folder (``llmcdsr/food-kitchen/train_A.txt``,
``adarec/Beauty``, ...). A file is resolved in this order:

1. the mirror folder given by the ``mirror_path`` config key or the
   ``RECBOLE_CDSR_MIRROR`` environment variable;
2. the download cache (``download_path`` config key, ``RECBOLE_CDSR_CACHE`` or
   ``~/.cache/recbole_cdsr/raw``);
3. a download from the authors' public GitHub repository, pinned to the commit the
   checksums were taken from.

Every file is checked against ``raw_checksums.txt`` before use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

MIRROR_ENV = "RECBOLE_CDSR_MIRROR"
CACHE_ENV = "RECBOLE_CDSR_CACHE"
CHECKSUM_FILE = Path(__file__).with_name("raw_checksums.txt")


@dataclass(frozen=True)
class Upstream:
    """A public repository folder that a mirror sub-folder copies."""

    repo: str
    commit: str
    folder: str  # path inside the repo that maps to the mirror prefix


# mirror prefix -> upstream folder; the longest matching prefix wins.
UPSTREAMS: dict[str, Upstream] = {
    "llmcdsr/": Upstream(
        "xhran2010/LLMCDSR", "5825e999d87c4b7f90448df17d05c5f9cea047ba", "data/"
    ),
    "i2vae/lightgcn/": Upstream(
        "WujiangXu/IM-VAE", "a9ec2faf7b0a5e10146899d276e47e36c15b6098", "LightGCN/data/"
    ),
    "i2vae/phone_elec_test_csu_updated.csv": Upstream(
        "WujiangXu/IM-VAE",
        "a9ec2faf7b0a5e10146899d276e47e36c15b6098",
        "dataset/phone_elec_test_csu_updated.csv",
    ),
    "i2vae/cloth_sport_test_csu_updated.csv": Upstream(
        "YennNing/I2VAE",
        "b665961968f07d459bff51b7037cdfb79d542fe6",
        "dataset/cloth_sport_test_csu_updated.csv",
    ),
    "i2vae/game_video_test_csu_updated.csv": Upstream(
        "YennNing/I2VAE",
        "b665961968f07d459bff51b7037cdfb79d542fe6",
        "dataset/game_video_test_csu_updated.csv",
    ),
    "i2vae/": Upstream(
        "WujiangXu/IM-VAE", "a9ec2faf7b0a5e10146899d276e47e36c15b6098", "dataset/"
    ),
    "adarec/": Upstream(
        "ZhaoChao52/ADARec", "90faad2ad52a32b5aca32d47f6df98e6142a9cb5", "data/"
    ),
    "seedrec/": Upstream(
        "hulkima/SeeDRec", "30606472e9c651342513b135f42de9babc0ea7ce", "Datasets/"
    ),
    "syncrec/": Upstream(
        "cpark88/SyNCRec",
        "2292eef3da4d33434d4f4e7f37938d0e40aa120f",
        "src/dataset/raw/",
    ),
}

# Files the authors' repositories hold but that no public raw URL serves
# (4 MiB and more): a converter needing one fails with this explanation.
UNAVAILABLE: dict[str, str] = {
    "llmcdsr/movie-book/train_B.txt": "larger than the public raw-file limit",
    "llmcdsr/movie-book/text_B.pkl": "larger than the public raw-file limit",
    "seedrec/Electronic/log_category_final.pkl": "larger than the public raw-file limit",
    "seedrec/Electronic/log_timestep_final.pkl": "larger than the public raw-file limit",
    "i2vae/cloth_sport_train_updated.csv": "larger than the public raw-file limit",
    "i2vae/phone_elec_train_updated.csv": "larger than the public raw-file limit",
    "i2vae/game_video_train_updated.csv": "larger than the public raw-file limit",
}


class RawFileError(RuntimeError):
    """A raw file is missing, unreachable or corrupt; the message says what to do."""


@lru_cache(maxsize=1)
def checksums() -> dict[str, str]:
    """Returns ``{relative path: sha256}`` for every known raw file."""
    table = {}
    for line in CHECKSUM_FILE.read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            table[rel.strip().removeprefix("./")] = digest
    return table


def upstream_url(rel: str) -> str:
    """Returns the pinned public raw URL of mirror path ``rel``."""
    prefix = max((p for p in UPSTREAMS if rel.startswith(p)), key=len, default=None)
    if prefix is None:
        raise KeyError(f"no public source is registered for raw file {rel!r}")
    up = UPSTREAMS[prefix]
    inner = up.folder + rel[len(prefix) :] if prefix.endswith("/") else up.folder
    return f"https://raw.githubusercontent.com/{up.repo}/{up.commit}/{inner}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(rel: str, path: Path, origin: str) -> Path:
    expected = checksums().get(rel)
    if expected is None:
        raise RawFileError(f"{rel}: no checksum registered in {CHECKSUM_FILE}")
    actual = sha256_of(path)
    if actual != expected:
        raise RawFileError(
            f"{path} (from {origin}) fails its checksum: sha256 {actual}, expected "
            f"{expected}. The file is corrupt or a different version; delete it and "
            f"copy it again from {upstream_url(rel)}"
        )
    return path


class RawSource:
    """Resolves raw files from a mirror, the download cache, or the network.

    Args:
        mirror: folder laid out like the seed-data mirror, or None.
        cache: folder for downloaded files.
        allow_download: whether step 3 (network) may be used.
    """

    def __init__(
        self,
        mirror: str | os.PathLike | None = None,
        cache: str | os.PathLike | None = None,
        allow_download: bool = True,
    ):
        mirror = mirror or os.environ.get(MIRROR_ENV) or None
        self.mirror = Path(mirror).expanduser() if mirror else None
        if self.mirror is not None and not self.mirror.is_dir():
            raise RawFileError(
                f"mirror folder {self.mirror} does not exist (set by mirror_path or "
                f"${MIRROR_ENV}); point it at a copy of the seed-data folder"
            )
        cache = cache or os.environ.get(CACHE_ENV) or "~/.cache/recbole_cdsr/raw"
        self.cache = Path(cache).expanduser()
        self.allow_download = allow_download

    def __call__(self, rel: str) -> Path:
        """Returns a verified local path of raw file ``rel``."""
        if self.mirror is not None and (self.mirror / rel).is_file():
            return self._checked(rel, self.mirror / rel, "mirror")
        cached = self.cache / rel
        if cached.is_file():
            return self._checked(rel, cached, "download cache")
        if rel in UNAVAILABLE:
            raise RawFileError(
                f"{rel} is not publicly downloadable ({UNAVAILABLE[rel]}, upstream "
                f"{upstream_url(rel)}), so this dataset cannot be built from public files. "
                f"If you have the file, put it at <mirror>/{rel} with ${MIRROR_ENV}=<mirror>."
            )
        if not self.allow_download:
            where = f"mirror {self.mirror}" if self.mirror else "no mirror set"
            raise RawFileError(
                f"raw file {rel} not found ({where}; cache {self.cache}) and downloads "
                f"are off; set ${MIRROR_ENV} to a folder holding it"
            )
        return _verify(rel, self._download(rel, cached), "download")

    @staticmethod
    def _checked(rel: str, path: Path, origin: str) -> Path:
        if rel in UNAVAILABLE and rel not in checksums():
            logger.warning("%s: using %s from %s without a checksum (none published)",
                           rel, path, origin)
            return path
        return _verify(rel, path, origin)

    def _download(self, rel: str, dest: Path) -> Path:
        url = upstream_url(rel)
        logger.info("downloading %s", url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(dest.suffix + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as f:
                while block := resp.read(1 << 20):
                    f.write(block)
        except (urllib.error.URLError, OSError) as err:
            tmp.unlink(missing_ok=True)
            raise RawFileError(
                f"could not download {rel} from {url}: {err}. Without network, copy "
                f"the file to <mirror>/{rel} and set ${MIRROR_ENV}=<mirror>"
            ) from err
        tmp.replace(dest)
        return dest
