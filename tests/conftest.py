"""Hermetic tests: no W&B traffic or files unless a test asks for offline mode itself."""

import os

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")
