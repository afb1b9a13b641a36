"""Test-wide settings: no network, and a private MM-SY home per test session.

Every test run gets its own ``MMSY_HOME`` so that datasets and checkpoints
cached by earlier runs on the machine never decide a result.
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The test models are tiny, so a second intra-op thread gains little, and
# two threads stall each other when lmms-eval subprocesses share the cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def private_mmsy_home(tmp_path_factory):
    """Point ``MMSY_HOME`` at a fresh folder for the whole session."""
    home = tmp_path_factory.mktemp("mmsy_home")
    previous = os.environ.get("MMSY_HOME")
    os.environ["MMSY_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("MMSY_HOME", None)
    else:
        os.environ["MMSY_HOME"] = previous
