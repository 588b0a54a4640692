"""Fixtures for LLM tests: the tiny local model, built once and shared.

Building it trains a model (seconds on an idle machine, minutes on a loaded one), and the build
is deterministic, so the folder is cached in the temp directory under a key made of the builder's
source and the library versions: a change to either builds a fresh one.
"""

from __future__ import annotations

import hashlib
import inspect
import tempfile
from pathlib import Path

import pytest
import tokenizers
import torch
import transformers

from flywheel.serving.llm import _tiny, _tiny_corpus, build_tiny_model


def _cache_key() -> str:
    parts = [inspect.getsource(_tiny), inspect.getsource(_tiny_corpus)]
    parts += [torch.__version__, transformers.__version__, tokenizers.__version__]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny chat model (seed 0), shared by every LLM test (and by concurrent sessions)."""
    folder = Path(tempfile.gettempdir()) / f"flywheel-tiny-llm-{_cache_key()}"
    if not (folder / "config.json").is_file():
        try:
            build_tiny_model(folder, seed=0)
        except (OSError, ValueError):
            if not (folder / "config.json").is_file():  # not a concurrent build that won
                raise
    return folder
