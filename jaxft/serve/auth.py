"""Access control, `serve --api-keys FILE`: every route but the health probes (/health, /v2/health/live,
/v2/health/ready) and, with --public-metrics, /metrics needs `Authorization: Bearer KEY` with a key from FILE;
without one, or with another, the answer is 401 (with `WWW-Authenticate: Bearer`) before the body is read.

FILE holds one key a line; blank lines and lines starting with "#" are skipped; a key is at least
MIN_KEY_CHARS characters without whitespace (`openssl rand -hex 32` makes one). Several keys let a
deployment rotate them: add the new key, move clients over, remove the old one, restart.

The presented key is compared with every key (not stopping at a match) as SHA-256 digests with
hmac.compare_digest, so the time taken says nothing about how much of a key was right, nor about which key
matched or the keys' lengths. Keys are never logged: the server logs no request headers, and the 401 message
does not repeat what was sent.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

MIN_KEY_CHARS = 16


class ApiKeyError(ValueError):
    """A key file that cannot be used, naming the file and line."""


class ApiKeys:
    def __init__(self, keys: list[str]):
        if not keys:
            raise ApiKeyError("no API keys given")
        self._digests = [_digest(key) for key in keys]

    @classmethod
    def read(cls, path: str | Path) -> "ApiKeys":
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise ApiKeyError(f"--api-keys: file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ApiKeyError(f"--api-keys: cannot read {path}: {err}") from None
        keys = []
        for number, line in enumerate(lines, start=1):
            key = line.strip()
            if not key or key.startswith("#"):
                continue
            if any(char.isspace() for char in key):
                raise ApiKeyError(f"--api-keys: {path}:{number}: a key must not contain whitespace")
            if len(key) < MIN_KEY_CHARS:
                raise ApiKeyError(f"--api-keys: {path}:{number}: the key has {len(key)} characters; use at least "
                                  f"{MIN_KEY_CHARS} (e.g. from `openssl rand -hex 32`)")
            keys.append(key)
        if not keys:
            raise ApiKeyError(f"--api-keys: {path} holds no key (one key a line; '#' starts a comment)")
        return cls(keys)

    def __len__(self) -> int:
        return len(self._digests)

    def allows(self, authorization: str | None) -> bool:
        """Whether an Authorization header value is "Bearer KEY" with one of the keys."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        presented = _digest(token.strip())
        matched = False
        for digest in self._digests:  # every key, no early exit
            matched |= hmac.compare_digest(presented, digest)
        return matched


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()
