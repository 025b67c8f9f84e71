"""A run that crashes on purpose: a round callback that raises after a given round."""


class Crash(Exception):
    pass


def crash_after(round_):
    """An on_round callback raising Crash once round `round_` is stored."""
    def callback(record, params):
        if record["round"] == round_:
            raise Crash()
    return callback
