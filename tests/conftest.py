"""Test-wide settings: offline hub, one thread per process (tiny tensors on a 2-core
machine are dominated by thread overhead)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
