"""Whole-batch image operations that run where the batch lives (CPU or accelerator).

In-memory datasets keep their images as uint8 tensors; these functions turn a batch into float
pixels in [0, 1] and apply the standard light augmentation (random crop with zero padding, then a
horizontal flip) to every image of the batch at once, without a Python loop over images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def to_float_rgb(x: Tensor, size: int | None = None) -> Tensor:
    """uint8 (N, C, H, W) with C in {1, 3} -> float32 (N, 3, S, S) in [0, 1]; float input passes.

    ``size``: upsample (bilinear) to S = size when the images are smaller, the per-batch path of
    pools kept at native resolution (see :func:`pool_size`); None keeps H, W.
    """
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()
    return x


# Largest uint8 pool resized up front; past it the pool stays at native resolution and batches
# are upsampled on the accelerator (CIFAR at 224 px would be 9 GB up front, 0.18 GB native).
MAX_POOL_BYTES = 2 * 1024**3


def pool_size(n: int, channels: int, native: int, image_size: int) -> int:
    """Side at which to store a pool of ``n`` images: ``image_size`` unless upsampling would make
    the pool larger than :data:`MAX_POOL_BYTES` (then ``native``; batches are upsampled later).
    """
    if image_size > native and n * channels * image_size * image_size > MAX_POOL_BYTES:
        return native
    return image_size


def resize_uint8(x: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """Resize a whole uint8 image tensor (N, C, h, w) to (N, C, size, size), once, at setup.

    Bilinear interpolation (antialiased when shrinking), rounded back to uint8; done in chunks so
    that a 60,000-image set never needs more than one chunk of float memory.
    """
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    shrink = size < max(x.shape[-2:])
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].float()
        part = F.interpolate(
            part, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
        )
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def crop_padding(size: int) -> int:
    """Random-crop padding for images of side ``size``: 4 at 32 px (the CIFAR standard), scaled."""
    return max(1, round(size / 8))


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad each image by ``padding`` and crop it back at a random offset (per image).

    x: (N, C, H, W). Same result as torchvision's ``RandomCrop(H, padding)`` applied to each image,
    as one gather.
    """
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (N, C, H+2p, W+2p)
    dev = x.device
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chan, rows, cols]  # (N, C, H, W)


def random_hflip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image left-right with probability 1/2. x: (N, C, H, W)."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
