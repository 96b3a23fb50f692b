"""Config-driven training for speech, audio and image models."""

from pathlib import Path

from omegaconf import OmegaConf

from framework.environment import check_torch

check_torch()  # one clear line when torch and torchaudio do not load together

from framework.config.schema import register as _register_schemas  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

# `${repo:}` in a config is this checkout's root, for data shipped with the project.
OmegaConf.register_new_resolver("repo", lambda: str(REPO_ROOT), replace=True)
_register_schemas()
