"""Errors a user can act on: each carries one line naming the key, file or message at fault."""


class FedstackError(Exception):
    """An error meant for the user: the CLI prints its message on one line and exits with code 2."""


class ConfigError(FedstackError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"config key '{key}': {message}")


class DataError(FedstackError):
    """Data is missing, corrupt or does not fit the requested partition."""


def brief(error: object, limit: int = 200) -> str:
    """An exception (or any text) on one line of at most about `limit` characters, for refusal reasons
    and logs: the text of an error about untrusted input may hold that input, however large."""
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    text = " ".join(text[:limit + 1].split())
    return text if len(text) <= limit else text[:limit] + "…"
