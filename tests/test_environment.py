"""The environment is the locked one, and a broken torch/torchaudio pair is one line."""

from __future__ import annotations

import re
from importlib import metadata

import pytest

from tests.conftest import ROOT, run_cli


def locked_version(package: str) -> str:
    """The version uv.lock pins for ``package`` (its ``[[package]]`` entry)."""
    lock = (ROOT / "uv.lock").read_text()
    found = re.findall(rf'\[\[package\]\]\nname = "{re.escape(package)}"\nversion = "([^"]+)"', lock)
    assert len(found) == 1, f"uv.lock has {len(found)} entries for {package}"
    return found[0]


@pytest.mark.parametrize("package", ["torch", "torchaudio", "hydra-core", "omegaconf", "soundfile", "h5py"])
def test_installed_versions_are_the_locked_ones(package):
    installed = metadata.version(package).split("+")[0]  # torch's local tag (+cu130) is the build, not the version
    assert installed == locked_version(package), f"{package} {installed} installed: run make setup"


def test_torch_and_torchaudio_pinned_exactly():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.11.0"' in text and '"torchaudio==2.11.0"' in text
    assert locked_version("torch") == "2.11.0" and locked_version("torchaudio") == "2.11.0"


@pytest.mark.parametrize("command", [
    ["framework.train", "trainer.max_epochs=1"],
    ["framework.validate"],
    ["framework.evaluate", "runs/none"],
    ["framework.transcribe", "runs/none", "a.wav"],
    ["framework.prepare", "stats", "train.json"],
    ["framework.average", "runs/none", "--last", "2"],
])
def test_torchaudio_that_does_not_load_is_one_line(tmp_path, command):
    """A torchaudio whose native library does not match torch (a stub first on the path
    raises the OSError the real mismatch raises): one line naming both versions and the
    repair, exit 2, for every command, before anything else is tried."""
    stub = tmp_path / "stub" / "torchaudio"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise OSError("/venv/lib/torchaudio/lib/libtorchaudio.so: undefined symbol: '
                                      'torch_exception_get_what_without_backtrace")\n')
    proc = run_cli(command[0], command[1:], cwd=tmp_path, check=False,
                   env={"PYTHONPATH": f"{tmp_path / 'stub'}:{ROOT}"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: torch 2.11.0 / torchaudio 2.11.0 do not load together (OSError: ")
    assert "undefined symbol" in lines[0] and "make setup" in lines[0]
    assert not (tmp_path / "runs").exists()
