"""Stable device identifiers, created once and kept on disk as the reference does."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path


def new_device_id() -> str:
    """``hex(sha256(uuid4))``: 64 hex characters, the reference's format."""
    return hashlib.sha256(str(uuid.uuid4()).encode()).hexdigest()


def load_or_create_id(path: Path) -> str:
    """Read the id at ``path`` or create it (mode 0600, parent directories as needed)."""
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    device_id = new_device_id()
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(device_id + "\n")
    os.replace(tmp, path)
    return device_id


def read_token(
    explicit: str | None, token_path: Path | None, credentials_dir: str | None
) -> str | None:
    """The token from the option/env, else a systemd credential, else a token file."""
    if explicit:
        return "".join(explicit.split())
    candidates = []
    if credentials_dir:
        candidates.append(Path(credentials_dir) / "FIREZONE_TOKEN")
    if token_path is not None:
        candidates.append(token_path)
    for candidate in candidates:
        try:
            text = candidate.read_text()
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            continue
        token = "".join(text.split())
        if token:
            return token
    return None
