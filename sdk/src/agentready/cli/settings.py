"""Where ``arkctl`` finds its settings and keeps its tokens.

Every setting is looked up in this order: the command-line flag, then the
environment (``ARKCTL_*``), then the config file (``$XDG_CONFIG_HOME/arkctl/config.yaml``,
by default ``~/.config/arkctl/config.yaml``), then the default. ``arkctl login`` keeps
the token pair in ``credentials.json`` beside it, readable by its owner only (mode
0600, in a folder of mode 0700); refresh tokens are single use, so each refresh
writes the new pair back at once, under a lock shared by concurrent ``arkctl`` runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import json_format

from agentready.tenant.v1 import tenant_pb2

DEFAULTS = {
    "tenant_address": "127.0.0.1:50051",
    "config_address": "127.0.0.1:50052",
    "provisioner_address": "127.0.0.1:50053",
    "organization": "",
    "output": "table",
}


def config_folder(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/arkctl``, or ``~/.config/arkctl``."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "arkctl"


def read_config_file(path: Path) -> dict[str, Any]:
    """The config file's settings (empty when there is none).

    Raises:
        ValueError: the file is not a YAML mapping.
    """
    if not path.exists():
        return {}
    document = yaml.safe_load(path.read_text()) or {}
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    unknown = set(document) - set(DEFAULTS) - {"token"}
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
    return {k: str(v) for k, v in document.items() if v is not None}


def resolve(flag: str | None, variable: str, file: Mapping[str, str], name: str) -> str:
    """A setting: the flag, else the environment variable, else the file, else the
    default."""
    if flag:
        return flag
    if os.environ.get(variable):
        return os.environ[variable]
    if file.get(name):
        return file[name]
    return DEFAULTS.get(name, "")


@dataclass
class StoredLogin:
    """What ``arkctl login`` keeps: the user, where it logged in, its tokens."""

    tenant_address: str
    email: str
    organization: str
    tokens: tenant_pb2.TokenPair

    def to_json(self) -> str:
        return json.dumps(
            {
                "tenant_address": self.tenant_address,
                "email": self.email,
                "organization": self.organization,
                "tokens": json_format.MessageToDict(self.tokens),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> StoredLogin:
        document = json.loads(text)
        tokens = json_format.ParseDict(document["tokens"], tenant_pb2.TokenPair())
        return cls(document["tenant_address"], document["email"], document["organization"], tokens)


class CredentialStore:
    """The credentials file (mode 0600) and its lock."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "credentials.json"

    def load(self) -> StoredLogin | None:
        """The stored login, or None when logged out.

        Raises:
            ValueError: the file is damaged.
        """
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            return StoredLogin.from_json(text)
        except (KeyError, ValueError, json_format.ParseError) as error:
            raise ValueError(f"{self.path} is damaged ({error}): log in again") from None

    def save(self, login: StoredLogin) -> None:
        """Writes the login atomically, readable by its owner only."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=".credentials-")
        try:
            os.fchmod(fd, 0o600)  # before a byte of a token is written
            with os.fdopen(fd, "w") as handle:
                handle.write(login.to_json())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def delete(self) -> None:
        """Forgets the login."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Holds the lock concurrent ``arkctl`` runs take before refreshing (a refresh
        token works once: two runs refreshing the same one would end the session)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.folder / "credentials.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
