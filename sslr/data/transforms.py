"""Per-image PIL pipelines of the datasets read from disk (ImageNet subsets, hashing list files).

The ImageNet convention of the deep-hashing literature: resize the shorter side to 256, crop
224 (random crop and horizontal flip for training, centre crop for evaluation), scaled together
when ``image_size`` differs from 224. Output: float32 (3, S, S) in [0, 1], not normalized.
"""

from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_size(image_size: int) -> int:
    """Shorter-side resize before cropping ``image_size``: 256 for 224, the same ratio otherwise."""
    return round(image_size * 256 / 224)


def train_transform(image_size: int, augment: bool) -> T.Compose:
    """Resize, then random crop + flip when ``augment`` (else the evaluation pipeline)."""
    if not augment:
        return eval_transform(image_size)
    return T.Compose(
        [
            T.Resize(resize_size(image_size)),
            T.RandomCrop(image_size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
        ]
    )


def eval_transform(image_size: int) -> T.Compose:
    """Resize, centre crop."""
    return T.Compose([T.Resize(resize_size(image_size)), T.CenterCrop(image_size), T.ToTensor()])
