"""W&B logging that never blocks a run: offline, with one notice, when no API key is set up."""

from __future__ import annotations

import netrc
import os

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_info


def wandb_key_configured() -> bool:
    """Whether W&B has credentials here: WANDB_API_KEY or a ~/.netrc entry for its API."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger; ``offline=None`` (the default) means offline exactly when no
    API key is configured and WANDB_MODE is unset, so a run without credentials logs to
    ./wandb (``wandb sync`` uploads it later) instead of failing or hanging.

    The sslr CLI fills ``group`` (dataset/backbone), ``name`` (backbone_rule) and ``tags``
    (the rule) from the config when they are not given, so runs compare side by side.
    """

    def __init__(
        self,
        name: str | None = None,
        project: str = "sslr",
        save_dir: str = ".",
        group: str | None = None,
        tags: list[str] | None = None,
        entity: str | None = None,
        offline: bool | None = None,
        log_model: bool = False,
    ) -> None:
        if offline is None:
            offline = not wandb_key_configured() and not os.environ.get("WANDB_MODE")
            if offline:
                rank_zero_info(
                    "W&B: no API key configured (WANDB_API_KEY or `wandb login`); logging "
                    "offline to ./wandb, upload later with `wandb sync`."
                )
        super().__init__(
            name=name,
            project=project,
            save_dir=save_dir,
            offline=offline,
            log_model=log_model,
            group=group,
            tags=tags,
            entity=entity,
        )
