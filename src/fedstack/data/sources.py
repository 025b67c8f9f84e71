"""Dataset sources: the IDX reader, Fashion-MNIST (find, load, download) and sklearn's digits."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from fedstack.errors import DataError

FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Where the Debian package dataset-fashion-mnist installs the files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# Seed-sequence stream of the digits train/test split (the partition and holdout use 1 and 2).
DIGITS_SPLIT_STREAM = 0
DIGITS_TEST_FRACTION = 0.2

# IDX type code -> dtype; multi-byte values are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw, told apart by content) as an array.

    The magic number gives the element type and the number of dimensions; sizes follow as
    big-endian uint32. Single-byte arrays are read-only views of the decoded bytes.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"IDX file {path} is not a valid gzip file: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"IDX file {path} has unknown element type 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"IDX file {path} declares zero dimensions")
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"IDX file {path} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(dims, dtype=np.int64))
    if len(raw) - start != count * dtype.itemsize:
        raise DataError(
            f"IDX file {path} is malformed: header says shape {dims} ({count * dtype.itemsize} bytes) "
            f"but {len(raw) - start} bytes of data follow"
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=start).reshape(dims)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def default_cache_dir() -> Path:
    """Where `download_fashion_mnist` puts the files: ~/.cache/fedstack/fashion_mnist."""
    return Path.home() / ".cache" / "fedstack" / "fashion_mnist"


def fashion_mnist_search_paths(path: str = "") -> list[Path]:
    """Directories searched for Fashion-MNIST, in order.

    `path` (if given), $FEDSTACK_DATA and $FEDSTACK_DATA/fashion_mnist, the Debian package's
    directory, then the download cache.
    """
    dirs = []
    if path:
        dirs.append(Path(path).expanduser())
    env = os.environ.get("FEDSTACK_DATA", "")
    if env:
        dirs += [Path(env).expanduser(), Path(env).expanduser() / "fashion_mnist"]
    dirs += [DEBIAN_FASHION_MNIST, default_cache_dir()]
    return list(dict.fromkeys(dirs))


def _idx_file(directory: Path, name: str) -> Path | None:
    """`name` in `directory`, or its uncompressed twin (without .gz)."""
    for candidate in (directory / name, directory / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(path: str = "") -> Path | None:
    """The first searched directory that holds all four Fashion-MNIST files, else None. An explicit
    `path` is the only place looked: a path that does not hold the data must not fall back elsewhere."""
    for directory in [Path(path).expanduser()] if path else fashion_mnist_search_paths():
        if all(_idx_file(directory, name) for name in FASHION_MNIST_FILES):
            return directory
    return None


def _images(file: Path) -> np.ndarray:
    images = read_idx(file)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{file}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}")
    x = images.reshape(len(images), 1, 28, 28).astype(np.float32)
    x /= np.float32(255)
    return x


def _labels(file: Path, n: int) -> np.ndarray:
    labels = read_idx(file)
    if labels.ndim != 1 or len(labels) != n:
        raise DataError(f"{file}: expected {n} labels to match the images, got shape {labels.shape}")
    if labels.size and not 0 <= int(labels.min()) <= int(labels.max()) <= 9:
        raise DataError(f"{file}: labels must lie in 0..9, found {int(labels.min())}..{int(labels.max())}")
    return labels.astype(np.int64)


def load_fashion_mnist(path: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): float32 (N, 1, 28, 28) images in [0, 1], int64 labels."""
    root = find_fashion_mnist(path)
    if root is None and path:
        raise DataError(f"Fashion-MNIST not found in data.path {path} (it needs {', '.join(FASHION_MNIST_FILES)}, "
                        "or the same files without .gz)")
    if root is None:
        looked = ", ".join(str(d) for d in fashion_mnist_search_paths(path))
        raise DataError(
            f"Fashion-MNIST not found (looked in: {looked}); get it with "
            f"'sudo apt-get install dataset-fashion-mnist' or 'fedstack data fashion_mnist --download', "
            f"or point FEDSTACK_DATA at a directory holding {', '.join(FASHION_MNIST_FILES)}"
        )
    names = list(FASHION_MNIST_FILES)
    x_train = _images(_idx_file(root, names[0]))
    y_train = _labels(_idx_file(root, names[1]), len(x_train))
    x_test = _images(_idx_file(root, names[2]))
    y_test = _labels(_idx_file(root, names[3]), len(x_test))
    return x_train, y_train, x_test, y_test


def sha256_of(file: Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, final: Path, want: str, timeout: float) -> None:
    """Download `url` to a temporary file beside `final`, check its SHA-256, rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    while chunk := response.read(1 << 20):
                        h.update(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as e:
                raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
            except urllib.error.URLError as e:
                raise DataError(f"download of {url} failed: {e.reason}") from e
            except (OSError, http.client.HTTPException) as e:
                raise DataError(f"download of {url} failed: {e}") from e
        got = h.hexdigest()
        if got != want.lower():
            raise DataError(
                f"{final.name} from {url} failed its SHA-256 check (expected {want.lower()}, got {got}); not kept"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_fashion_mnist(
    dest: Path | str | None = None,
    base_url: str = FASHION_MNIST_URL,
    sha256: dict | None = None,
    timeout: float = 30,
) -> Path:
    """Download the Fashion-MNIST files that `dest` lacks (or holds with a wrong hash); returns `dest`.

    `dest` defaults to ~/.cache/fedstack/fashion_mnist; `sha256` maps each file name to its
    expected hex digest (default FASHION_MNIST_FILES). A file is renamed into place only
    after its hash matched, so `dest` never holds a partial or corrupt file.
    """
    dest = Path(dest).expanduser() if dest else default_cache_dir()
    hashes = FASHION_MNIST_FILES if sha256 is None else sha256
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create download directory {dest}: {e.strerror or e}") from e
    for name, want in hashes.items():
        final = dest / name
        if final.is_file() and sha256_of(final) == want.lower():
            continue
        _fetch(base_url.rstrip("/") + "/" + name, final, want, timeout)
    return dest


def load_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn's 8x8 digits as (x_train, y_train, x_test, y_test), x float32 (n, 1, 8, 8) in [0, 1].

    The 80/20 split is stratified by class and drawn from SeedSequence([seed, DIGITS_SPLIT_STREAM]).
    """
    from ..extras import require

    digits = require("sklearn.datasets", "sklearn", "the digits data set").load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([seed, DIGITS_SPLIT_STREAM]))
    test = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        test.append(members[: round(DIGITS_TEST_FRACTION * len(members))])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[np.concatenate(test)] = True
    return x[~is_test], y[~is_test], x[is_test], y[is_test]
