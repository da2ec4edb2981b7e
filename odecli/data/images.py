"""Image classification splits and batches: subset, validation split, normalisation, random-crop augmentation.

Images stay uint8 tensors in memory (47 MB for MNIST's 60k) and are normalised per batch. The
order of every epoch comes from ``seed`` and the epoch number, so a run resumed mid-epoch sees
the same batches it would have seen; the augmentation generator's state travels in checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from odecli.errors import ConfigError


@dataclass
class Split:
    """uint8 images ``(N, 1, H, W)`` and int64 labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Splits:
    train: Split
    val: Split | None
    test: Split
    notes: list[str]


def _stratified_take(labels: np.ndarray, n: int, generator: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` items with the classes in proportion (a random order within each class)."""
    order = generator.permutation(len(labels))
    by_class = [order[labels[order] == c] for c in np.unique(labels)]
    shares = np.floor(np.array([len(b) for b in by_class]) * n / len(labels)).astype(int)
    for i in np.argsort([-len(b) for b in by_class])[: n - shares.sum()]:
        shares[i] += 1
    return np.sort(np.concatenate([b[:k] for b, k in zip(by_class, shares, strict=True)]))


def make_splits(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    val_size: int | float = 5000,
    subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> Splits:
    """Hold out ``val_size`` training images (a count, or a fraction in (0, 1)); then keep ``subset`` of the rest.

    Both are stratified by class; ``test_subset`` (quick runs only) takes a stratified part of the test set.
    """
    notes: list[str] = []
    generator = np.random.default_rng(seed)
    n_train = len(train_labels)
    if isinstance(val_size, float) and not float(val_size).is_integer():
        if not 0 < val_size < 1:
            raise ConfigError(f"data.val_size is a count or a fraction in (0, 1), got {val_size}.")
        n_val = int(round(val_size * n_train))
    else:
        n_val = int(val_size)
    if n_val < 0:
        raise ConfigError(f"data.val_size must be >= 0, got {val_size}.")
    if n_val > n_train // 5:
        reduced = n_train // 10
        notes.append(f"data.val_size={val_size} is more than a fifth of the {n_train} training images; holding out {reduced} (10%) instead")
        n_val = reduced
    index = np.arange(n_train)
    val_index = _stratified_take(train_labels, n_val, generator) if n_val else np.array([], dtype=int)
    rest = np.setdiff1d(index, val_index)
    if subset is not None:
        if int(subset) < 10:
            raise ConfigError(f"data.subset must be at least 10 images (one per class) or null, got {subset}.")
        if int(subset) < len(rest):
            rest = rest[_stratified_take(train_labels[rest], int(subset), generator)]
    test_index = np.arange(len(test_labels))
    if test_subset is not None:
        if int(test_subset) < 10:
            raise ConfigError(f"data.test_subset must be at least 10 images or null, got {test_subset}.")
        if int(test_subset) < len(test_index):
            test_index = _stratified_take(test_labels, int(test_subset), generator)
            notes.append(f"testing on {len(test_index)} of the {len(test_labels)} test images (data.test_subset)")

    def split(images: np.ndarray, labels: np.ndarray, which: np.ndarray) -> Split:
        return Split(torch.from_numpy(np.ascontiguousarray(images[which]))[:, None], torch.from_numpy(labels[which].astype(np.int64)))

    return Splits(
        train=split(train_images, train_labels, rest),
        val=split(train_images, train_labels, val_index) if n_val else None,
        test=split(test_images, test_labels, test_index),
        notes=notes,
    )


class Normalize:
    """uint8 pixels → ``(x / 255 - mean) / std`` as float32 on ``device``."""

    def __init__(self, mean: float, std: float, device: torch.device | str = "cpu"):
        if std <= 0:
            raise ConfigError(f"data.std must be positive, got {std}.")
        self.mean, self.std, self.device = float(mean), float(std), torch.device(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        return x.sub_(self.mean).div_(self.std)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad each image by ``padding`` zero pixels and crop a random window of the original size."""
    if padding <= 0:
        return images
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, c, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, c, h, w)
    return _crop(padded, rows, cols)


def _crop(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    n, c, h, w = rows.shape
    batch = torch.arange(n)[:, None, None, None].expand(n, c, h, w)
    channel = torch.arange(c)[None, :, None, None].expand(n, c, h, w)
    return padded[batch, channel, rows, cols]


class EpochBatches:
    """Shuffled mini-batches of a split: epoch ``e``'s order depends only on ``seed`` and ``e``."""

    def __init__(self, split: Split, batch_size: int, *, seed: int, crop_padding: int = 0, drop_last: bool = False,
                 sampler: Any = None, augment_seed: int | None = None):  # fmt: skip
        """``sampler``: a ``DistributedSampler`` over ``range(len(split))`` when several processes share the epoch
        (each then batches its own share); ``augment_seed`` (default ``seed + 1``) seeds the random crops."""
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size}.")
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.crop_padding = int(crop_padding)
        self.drop_last = drop_last
        self.sampler = sampler
        self.augment_generator = torch.Generator().manual_seed(seed + 1 if augment_seed is None else augment_seed)

    def __len__(self) -> int:
        n = len(self.split) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start``, ``start + 1``, ... of ``epoch`` (0-based) as uint8 images and labels."""
        if self.sampler is None:
            order = torch.randperm(len(self.split), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        else:
            self.sampler.set_epoch(epoch)
            order = torch.tensor(list(self.sampler), dtype=torch.long)
        for b in range(start, len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            images = self.split.images[index]
            if self.crop_padding:
                images = random_crop(images, self.crop_padding, self.augment_generator)
            yield images, self.split.labels[index]

    def state_dict(self) -> dict[str, Any]:
        return {"augment_generator": self.augment_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.augment_generator.set_state(state["augment_generator"])


def in_order(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation batches, in order."""
    for b in range(0, len(split), batch_size):
        yield split.images[b : b + batch_size], split.labels[b : b + batch_size]
