"""Save diffusers' ``UNet2DModel`` and ``DDPMScheduler`` built from the published
``google/ddpm-cifar10-32`` configuration (tests/fixtures/ddpm-cifar10-32.json) with PyTorch's
random initialisation (``torch.manual_seed(0)``; not the published weights) into OUT/unet and
OUT/scheduler: the model of docs/diagnose_ddpm_cifar10_quick.md.

    python docs/runs/make_ddpm_cifar10_random.py OUT
"""

import json
import sys
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

CONFIG = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "ddpm-cifar10-32.json"

if __name__ == "__main__":
    out = Path(sys.argv[1])
    cfg = json.loads(CONFIG.read_text())
    torch.manual_seed(0)
    UNet2DModel(**cfg["unet"]).save_pretrained(out / "unet")
    DDPMScheduler(**cfg["scheduler"]).save_pretrained(out / "scheduler")
