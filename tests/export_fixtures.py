"""A tiny trained run (two checkpoints) shared by the export and eval tests; imported by those test
modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SMALL_MODEL = {"name": "tiny", "num_transformer_layers": 2, "model_dim": 128, "head_dim": 32}
STEPS, EVERY = 12, 6
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="session")
def trained_run(sample_manifest, tmp_path_factory) -> Path:
    """RUN_DIR of a 12-step run of a 2-layer OpenELM on the sample manifest, checkpoints at steps 6 and 12."""
    from elm_data.trainer.core.config import TrainConfig
    from elm_data.trainer.core.loop import train

    config = TrainConfig(
        manifest=str(sample_manifest),
        model=SMALL_MODEL,
        seq_len=64,
        batch_size=2,
        max_steps=STEPS,
        warmup_steps=2,
        lr=3e-3,
        epochs=None,
        precision="fp32",
        distributed="none",
        checkpoint_every=EVERY,
    )
    run_dir = tmp_path_factory.mktemp("export_run") / "run"
    train(config, out_dir=run_dir, progress=False)
    return run_dir


def run_python(script: str, *args: str, env_extra: dict[str, str] | None = None, timeout: int = 300):
    """Run ``script`` in a fresh interpreter (offline Hugging Face settings); fail the test with its
    stderr."""
    import os

    env = {**os.environ, **OFFLINE, **(env_extra or {})}
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if done.returncode != 0:
        pytest.fail(f"subprocess failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done
