import numpy as np
import pytest

from fedstack.errors import DataError
from fedstack.transport.client import load_local_data


def test_npz_and_csv_give_the_same_client_data(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0, 2, 1, 2])
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    rows = ["a,label,b,c"] + [f"{r[0]},{lab},{r[1]},{r[2]}" for r, lab in zip(x, y)]
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    for name in ("mine.npz", "mine.csv"):
        data = load_local_data(tmp_path / name)
        np.testing.assert_array_equal(data.x, x)
        np.testing.assert_array_equal(data.y, y)
        assert data.num_examples == 4 and len(data.holdout_idx) == 0


@pytest.mark.parametrize("name, content, needle", [
    ("none.npz", None, "not found"),
    ("bad.csv", "a,b\n1,2\n", "no column 'label'"),
    ("data.txt", "1,2\n", ".npz"),
])
def test_bad_client_data_names_the_file(tmp_path, name, content, needle):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=needle) as err:
        load_local_data(tmp_path / name)
    assert name in str(err.value)


def test_npz_without_x_and_y_is_refused(tmp_path):
    np.savez(tmp_path / "odd.npz", features=np.zeros(3))
    with pytest.raises(DataError, match="'x' and 'y'"):
        load_local_data(tmp_path / "odd.npz")
