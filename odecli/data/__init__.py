"""Data sets the tasks train on; ``odecli.data.mnist`` reads, downloads and verifies MNIST."""

from odecli.data.mnist import (
    DataError,
    DataFileCorrupt,
    DataFileMissing,
    DataSourceUnavailable,
    DownloadFailed,
    MNISTData,
    load_mnist,
    read_idx,
)

__all__ = [
    "DataError",
    "DataFileCorrupt",
    "DataFileMissing",
    "DataSourceUnavailable",
    "DownloadFailed",
    "MNISTData",
    "load_mnist",
    "read_idx",
]
