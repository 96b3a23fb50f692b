"""Config-driven training for speech, audio and image models."""

from omegaconf import OmegaConf

from framework.environment import check_torch

check_torch()  # one clear line when torch and torchaudio do not load together

from framework.config.schema import register as _register_schemas  # noqa: E402
from framework.paths import CONF_DIR, REPO_ROOT  # noqa: E402  (CONF_DIR: for users of the package)

__all__ = ["CONF_DIR", "REPO_ROOT"]

# `${repo:}` in a config is this checkout's root, for data shipped with the project.
OmegaConf.register_new_resolver("repo", lambda: str(REPO_ROOT), replace=True)
_register_schemas()
