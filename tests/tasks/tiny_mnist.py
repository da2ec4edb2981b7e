"""Small MNIST-format files for the image tasks' tests: digits as bright bars, learnable, nothing like real MNIST."""

from __future__ import annotations

import struct

import numpy as np

from odecli.data import mnist as M

N_TRAIN, N_TEST = 96, 40


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` in MNIST's IDX format (images: 3-D, labels: 1-D)."""
    magic = M.IMAGES_MAGIC if array.ndim == 3 else M.LABELS_MAGIC
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape) + array.astype(np.uint8).tobytes()


def bar_digits() -> dict[str, np.ndarray]:
    """Digits 0–9 as bright bars in ten different rows over noise, keyed like ``mnist.OFFICIAL`` (seeded)."""
    generator = np.random.default_rng(0)

    def images(labels: np.ndarray) -> np.ndarray:
        x = generator.integers(0, 40, (len(labels), 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            x[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        return x

    train_labels, test_labels = np.arange(N_TRAIN) % 10, np.arange(N_TEST) % 10
    return {"train_images": images(train_labels), "train_labels": train_labels.astype(np.uint8),
            "test_images": images(test_labels), "test_labels": test_labels.astype(np.uint8)}  # fmt: skip
