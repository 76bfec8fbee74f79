"""Whole-batch augmentation: same semantics as per-image torchvision ops, values in range."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslr.data.augment import random_crop, random_hflip, resize_uint8, to_float_rgb


def test_to_float_rgb_scales_and_repeats_grey():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1)
    out = to_float_rgb(x)
    assert out.dtype == torch.float32 and out.shape == (3, 3, 1, 1)
    assert torch.allclose(out[:, 1].flatten(), torch.tensor([0.0, 0.2, 1.0]))
    rgb = torch.rand(2, 3, 4, 4)
    assert to_float_rgb(rgb) is rgb


def test_random_crop_is_a_window_of_the_zero_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8) + 1.0  # strictly positive, so padding shows as 0
    out = random_crop(x, 2, generator=g)
    assert out.shape == x.shape
    padded = F.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(x.shape[0]):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 15  # offsets differ per image (25 possible)


def test_random_hflip_flips_about_half():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(400, 1, 2, 5)
    out = random_hflip(x, generator=g)
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert bool((flipped | kept).all())
    assert 150 < int(flipped.sum()) < 250


def test_resize_uint8_keeps_range_and_constant_images():
    x = torch.full((5, 1, 8, 8), 200, dtype=torch.uint8)
    x[1] = 0
    out = resize_uint8(x, 32, chunk=2)
    assert out.shape == (5, 1, 32, 32) and out.dtype == torch.uint8
    assert bool((out[0] == 200).all()) and bool((out[1] == 0).all())
    assert resize_uint8(x, 8) is x
    big = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert resize_uint8(big, 16).shape == (3, 3, 16, 16)
