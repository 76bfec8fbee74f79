"""Deep hashing: losses (DPSH, HashNet, DCH, CSQ, HyP2) behind one registry, and CSQ hash
centers."""

from sslr.hashing.codes import hadamard, hash_centers, multilabel_centers
from sslr.hashing.hyp2 import HyP2Loss, hyp2_threshold
from sslr.hashing.losses import (
    CSQLoss,
    DCHLoss,
    DPSHLoss,
    HashingLoss,
    HashNetLoss,
    get_loss,
    hashnet_beta,
    list_losses,
    register_loss,
)

__all__ = [
    "CSQLoss",
    "DCHLoss",
    "DPSHLoss",
    "HashNetLoss",
    "HashingLoss",
    "HyP2Loss",
    "get_loss",
    "hadamard",
    "hash_centers",
    "hashnet_beta",
    "hyp2_threshold",
    "list_losses",
    "multilabel_centers",
    "register_loss",
]
