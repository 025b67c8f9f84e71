"""Sources: IDX parsing, Fashion-MNIST search/load/download (against a 127.0.0.1 server), digits."""

import functools
import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from fedstack.data import sources
from fedstack.errors import DataError

NAMES = list(sources.FASHION_MNIST_FILES)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as IDX independently of the reader under test."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, code[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def fixture_arrays(seed=0, n_train=12, n_test=5):
    g = np.random.default_rng(seed)
    images = g.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    return {
        NAMES[0]: images,
        NAMES[1]: g.integers(0, 10, size=n_train, dtype=np.uint8),
        NAMES[2]: g.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        NAMES[3]: g.integers(0, 10, size=n_test, dtype=np.uint8),
    }


def make_fixture_dir(directory: Path, arrays=None) -> dict[str, str]:
    """Write the four fixture .gz files; return their SHA-256 by name."""
    directory.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, array in (arrays or fixture_arrays()).items():
        path = write_idx(directory / name, array, compress=True)
        hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No real data visible: empty HOME, no FEDSTACK_DATA, Debian path pointed at an empty dir."""
    home, debian = tmp_path / "home", tmp_path / "debian"
    home.mkdir()
    debian.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("FEDSTACK_DATA", raising=False)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", debian)
    return tmp_path


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (base_url, www_dir)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", www
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# ---- read_idx ----


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([9, 0, 3, 7], dtype=np.uint8),
        np.array([[-3, 1000], [7, -32768]], dtype=np.int16),
        np.array([1.5, -2.25, 3e9], dtype=np.float32),
        np.zeros((0, 28, 28), dtype=np.uint8),
    ],
    ids=["u8-images", "u8-labels", "i16", "f32", "empty"],
)
def test_read_idx_round_trip(tmp_path, array, compress):
    path = write_idx(tmp_path / ("a.gz" if compress else "a"), array, compress)
    got = sources.read_idx(path)
    assert got.shape == array.shape
    assert got.dtype == array.dtype
    np.testing.assert_array_equal(got, array)


def test_read_idx_tells_gzip_by_content_not_name(tmp_path):
    array = np.arange(6, dtype=np.uint8)
    np.testing.assert_array_equal(sources.read_idx(write_idx(tmp_path / "plain.gz", array, False)), array)
    np.testing.assert_array_equal(sources.read_idx(write_idx(tmp_path / "packed", array, True)), array)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00\x00",
        b"PK\x03\x04rest",  # wrong magic
        bytes([0, 0, 0x42, 1]) + struct.pack(">I", 1) + b"\x00",  # unknown type code
        bytes([0, 0, 0x08, 0]),  # zero dimensions
        bytes([0, 0, 0x08, 3]) + struct.pack(">I", 2),  # header cut short
        bytes([0, 0, 0x08, 1]) + struct.pack(">I", 5) + b"\x01\x02",  # too little data
        bytes([0, 0, 0x08, 1]) + struct.pack(">I", 1) + b"\x01\x02",  # trailing data
        gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))[:-12],  # truncated gzip
        b"\x1f\x8bnot really gzip",
    ],
)
def test_read_idx_malformed_raises_data_error_naming_file(tmp_path, content):
    path = tmp_path / "broken-idx1-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="broken-idx1-ubyte.gz"):
        sources.read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope"):
        sources.read_idx(tmp_path / "nope")


# ---- search and load ----


def test_search_paths_order(isolated, monkeypatch):
    env = isolated / "env"
    monkeypatch.setenv("FEDSTACK_DATA", str(env))
    paths = sources.fashion_mnist_search_paths(str(isolated / "given"))
    assert paths == [
        isolated / "given",
        env,
        env / "fashion_mnist",
        isolated / "debian",
        isolated / "home" / ".cache" / "fedstack" / "fashion_mnist",
    ]


def test_missing_data_error_lists_searched_paths_and_commands(isolated, monkeypatch):
    env = isolated / "env"
    env.mkdir()
    monkeypatch.setenv("FEDSTACK_DATA", str(env))
    assert sources.find_fashion_mnist(str(isolated / "given")) is None
    with pytest.raises(DataError, match=f"not found in data.path {isolated / 'given'}"):
        sources.load_fashion_mnist(str(isolated / "given"))  # an explicit path is the only place looked
    with pytest.raises(DataError) as info:
        sources.load_fashion_mnist()
    message = str(info.value)
    assert "\n" not in message
    for place in sources.fashion_mnist_search_paths():
        assert str(place) in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "fedstack data fashion_mnist --download" in message


def test_incomplete_directory_is_skipped(isolated, monkeypatch):
    partial, full = isolated / "partial", isolated / "env" / "fashion_mnist"
    make_fixture_dir(partial)
    (partial / NAMES[3]).unlink()
    make_fixture_dir(full)
    monkeypatch.setenv("FEDSTACK_DATA", str(isolated / "env"))
    assert sources.find_fashion_mnist(str(partial)) is None  # explicit: no falling back to another copy
    monkeypatch.setenv("FEDSTACK_DATA", str(partial))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", full)
    assert sources.find_fashion_mnist() == full  # searching: the incomplete directory is skipped


def test_load_fixture_values(isolated):
    arrays = fixture_arrays()
    make_fixture_dir(isolated / "fm", arrays)
    x, y, x_test, y_test = sources.load_fashion_mnist(str(isolated / "fm"))
    assert x.shape == (12, 1, 28, 28) and x.dtype == np.float32
    assert x_test.shape == (5, 1, 28, 28)
    assert y.dtype == np.int64 and y_test.dtype == np.int64
    np.testing.assert_array_equal(y, arrays[NAMES[1]])
    np.testing.assert_allclose(x[:, 0], arrays[NAMES[0]] / 255.0, rtol=1e-6)
    assert x[0, 0, 0, 0] == 0.0 and x[0, 0, 0, 1] == 1.0


def test_load_uncompressed_files_too(isolated):
    directory = isolated / "raw"
    directory.mkdir()
    for name, array in fixture_arrays().items():
        write_idx(directory / name.removesuffix(".gz"), array, compress=False)
    x, y, x_test, y_test = sources.load_fashion_mnist(str(directory))
    assert x.shape == (12, 1, 28, 28) and len(y_test) == 5


def test_load_rejects_mismatched_labels(isolated):
    arrays = fixture_arrays()
    arrays[NAMES[1]] = arrays[NAMES[1]][:-1]
    make_fixture_dir(isolated / "fm", arrays)
    with pytest.raises(DataError, match=NAMES[1]):
        sources.load_fashion_mnist(str(isolated / "fm"))


def test_load_rejects_wrong_image_shape(isolated):
    arrays = fixture_arrays()
    arrays[NAMES[2]] = np.zeros((5, 27, 28), dtype=np.uint8)
    make_fixture_dir(isolated / "fm", arrays)
    with pytest.raises(DataError, match=NAMES[2]):
        sources.load_fashion_mnist(str(isolated / "fm"))


# ---- download ----


def test_download_then_load(isolated, server):
    base_url, www = server
    hashes = make_fixture_dir(www)
    dest = isolated / "dl"
    assert sources.download_fashion_mnist(dest, base_url=base_url, sha256=hashes, timeout=5) == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES)
    x, y, x_test, y_test = sources.load_fashion_mnist(path=str(dest))
    assert x.shape == (12, 1, 28, 28) and len(y_test) == 5
    # files already present with the right hash are not fetched again
    for name in NAMES:
        (www / name).unlink()
    sources.download_fashion_mnist(dest, base_url=base_url, sha256=hashes, timeout=5)


def test_download_defaults_to_cache_dir_found_by_search(isolated, server):
    base_url, www = server
    hashes = make_fixture_dir(www)
    dest = sources.download_fashion_mnist(base_url=base_url, sha256=hashes, timeout=5)
    assert dest == isolated / "home" / ".cache" / "fedstack" / "fashion_mnist"
    assert sources.find_fashion_mnist() == dest


def test_download_wrong_hash_raises_and_keeps_nothing(isolated, server):
    base_url, www = server
    hashes = make_fixture_dir(www)
    wrong = dict(hashes, **{NAMES[0]: "0" * 64})
    dest = isolated / "dl"
    with pytest.raises(DataError) as info:
        sources.download_fashion_mnist(dest, base_url=base_url, sha256=wrong, timeout=5)
    message = str(info.value)
    assert NAMES[0] in message and "0" * 64 in message and hashes[NAMES[0]] in message
    assert list(dest.iterdir()) == []


def test_download_replaces_corrupt_existing_file(isolated, server):
    base_url, www = server
    hashes = make_fixture_dir(www)
    dest = isolated / "dl"
    dest.mkdir()
    (dest / NAMES[1]).write_bytes(b"junk")
    sources.download_fashion_mnist(dest, base_url=base_url, sha256=hashes, timeout=5)
    assert hashlib.sha256((dest / NAMES[1]).read_bytes()).hexdigest() == hashes[NAMES[1]]


def test_download_http_error_names_url(isolated, server):
    base_url, www = server
    hashes = make_fixture_dir(www)
    (www / NAMES[2]).unlink()
    dest = isolated / "dl"
    with pytest.raises(DataError, match=f"{base_url}{NAMES[2]}".replace(".", r"\.")):
        sources.download_fashion_mnist(dest, base_url=base_url, sha256=hashes, timeout=5)
    assert sorted(p.name for p in dest.iterdir()) == sorted(NAMES[:2])


def test_download_unreachable_host_names_url(isolated):
    # a port that was just free on 127.0.0.1: the connection is refused at once
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(DataError, match=f"127.0.0.1:{port}"):
        sources.download_fashion_mnist(isolated / "dl", base_url=url, sha256={"a.gz": "0" * 64}, timeout=5)
    assert list((isolated / "dl").iterdir()) == []


# ---- digits ----


def test_digits_shapes_and_stratified_split():
    x, y, x_test, y_test = sources.load_digits(0)
    assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8)
    assert len(x) + len(x_test) == 1797 and abs(len(x_test) - 0.2 * 1797) < 10
    assert 0.0 <= x.min() and x.max() == 1.0
    assert y.dtype == np.int64 and set(np.unique(y_test)) == set(range(10))
    train_counts, test_counts = np.bincount(y), np.bincount(y_test)
    np.testing.assert_allclose(test_counts / (train_counts + test_counts), 0.2, atol=0.01)


def test_digits_split_depends_only_on_seed():
    a, b, c = sources.load_digits(0), sources.load_digits(0), sources.load_digits(1)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[1], c[1])


# ---- the real thing ----


@pytest.mark.skipif(sources.find_fashion_mnist() is None, reason="Fashion-MNIST is not installed")
def test_real_fashion_mnist():
    x, y, x_test, y_test = sources.load_fashion_mnist()
    assert x.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(np.unique(y)) == set(range(10)) and set(np.unique(y_test)) == set(range(10))
    np.testing.assert_array_equal(np.bincount(y), [6000] * 10)
    root = sources.find_fashion_mnist()
    for name, digest in sources.FASHION_MNIST_FILES.items():
        if (root / name).is_file():
            assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest
