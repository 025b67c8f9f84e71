"""docs/extending.md, run as written: each python block is a program that must run and learn."""

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "extending.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_the_page_has_its_examples():
    assert len(BLOCKS) == 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_example_runs_and_learns(index, capsys):
    namespace = {"__name__": f"extending_{index}"}
    exec(compile(BLOCKS[index], f"docs/extending.md block {index + 1}", "exec"), namespace)
    history = namespace["history"]
    assert [r["round"] for r in history.rounds] == [1, 2, 3, 4, 5]
    assert history.rounds[-1]["test_accuracy"] > 0.8
    assert "test accuracy" in capsys.readouterr().out
    if "MyFedProx" in namespace:  # both halves written by hand: the built-in FedProx's bits
        import fedstack

        factory = namespace["factory"]
        builtin = fedstack.simulate(factory, namespace["data"], namespace["initial_params"](factory, 0),
                                    strategy=fedstack.FedAvg(fedstack.FitConfig(lr=0.2, epochs=2, mu=0.1)),
                                    rounds=5, clients_per_round=5, evaluation=fedstack.Evaluation(federated=False))
        assert (builtin.params == history.params).all()
    if "Int8" in namespace:  # the transform's bytes are what was really sent: about a quarter of float32
        last = history.rounds[-1]
        assert 3.5 < last["bytes_up_raw"] / last["bytes_up"] <= 4.0
