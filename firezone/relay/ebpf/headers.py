"""Kernel headers for BCC when the running kernel ships none (MACHINE.md, BCC/XDP).

BCC compiles against ``/lib/modules/$(uname -r)/build``.  Where that is
missing (a distribution kernel image without its headers, a VM with a custom
kernel) Debian's ``linux-headers-<ver>-amd64`` serve for XDP, which only uses
UAPI structures.  Debian splits them into ``...-<arch>`` and ``...-common``
and neither alone is a usable ``BCC_KERNEL_SOURCE``; a tree of symlinks to the
common part overlaid with the arch part is.  It is built once, under a cache
directory, and renamed into place so concurrent relays never see half of one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["HeadersMissing", "ensure_kernel_source"]

SRC = Path("/usr/src")


class HeadersMissing(RuntimeError):
    """No kernel headers BCC could use."""


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def _debian_pair(src: Path) -> tuple[Path, Path] | None:
    """The newest ``linux-headers-X-<arch>`` that has a ``linux-headers-X-common`` beside it."""
    candidates = []
    for arch_dir in src.glob("linux-headers-*"):
        name = arch_dir.name
        if name.endswith("-common") or not (arch_dir / "include").is_dir():
            continue
        base = name.rsplit("-", 1)[0]
        common = src / f"{base}-common"
        if common.is_dir():
            candidates.append((arch_dir, common))
    if not candidates:
        return None
    return max(candidates, key=lambda pair: _version_key(pair[0].name))


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "firezone"


def ensure_kernel_source(
    release: str | None = None,
    modules: Path = Path("/lib/modules"),
    src: Path = SRC,
    cache: Path | None = None,
) -> Path | None:
    """Make BCC find headers; returns the merged tree it set up, or None if none was needed.

    Sets ``BCC_KERNEL_SOURCE`` (read by libbcc at compile time) unless the running
    kernel has its own build tree or the variable is set already.
    """
    release = release or os.uname().release
    if (modules / release / "build").exists() or os.environ.get("BCC_KERNEL_SOURCE"):
        return None
    pair = _debian_pair(src)
    if pair is None:
        raise HeadersMissing(
            f"no kernel headers for {release}: /lib/modules/{release}/build is missing and "
            f"{src} has no linux-headers-*-<arch> with its -common part "
            "(apt-get install linux-headers-amd64)"
        )
    arch_dir, common = pair
    merged = (cache or _cache_dir()) / f"bcc-kernel-{arch_dir.name}"
    if not (merged / ".complete").exists():
        merged.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".merging-", dir=merged.parent))
        try:
            tree = staging / "tree"
            for argv in (["cp", "-as", str(common), str(tree)],
                         ["cp", "-as", "--remove-destination", f"{arch_dir}/.", f"{tree}/"]):
                result = subprocess.run(argv, capture_output=True, text=True, check=False)
                if result.returncode != 0:
                    raise HeadersMissing(
                        f"cannot merge kernel headers into {merged}: {result.stderr.strip()}")
            (tree / ".complete").touch()
            try:
                tree.rename(merged)
            except OSError:
                # Another process finished first (or a stale incomplete tree is in the way).
                if not (merged / ".complete").exists():
                    shutil.rmtree(merged, ignore_errors=True)
                    tree.rename(merged)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    os.environ["BCC_KERNEL_SOURCE"] = str(merged)
    return merged
