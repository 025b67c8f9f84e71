"""A run that crashes on purpose: a round callback that raises after a given round."""


class Crash(Exception):
    pass


def crash_after(round_):
    """An on_round callback raising Crash once round `round_` is stored."""
    def callback(record, params):
        if record["round"] == round_:
            raise Crash()
    return callback


def straight_and_resumed(config, tmp_path, crash_round: int = 2):
    """(the run of `config` straight through, the same run crashed after `crash_round` and resumed)."""
    import pytest

    from fedstack.experiment import run_config

    straight = run_config(config, tmp_path / "straight")
    with pytest.raises(Crash):
        run_config(config, tmp_path / "broken", on_round=[crash_after(crash_round)])
    return straight, run_config(config, tmp_path / "broken")
