"""The errors a user can fix (config, data, model folder): every command prints them as one line and exits 2."""

from __future__ import annotations

from jaxft.config import ConfigError
from jaxft.data.errors import DataError
from jaxft.models.config import UnsupportedModelError
from jaxft.models.hf import ModelLoadError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, ModelLoadError, UnsupportedModelError)
