"""Errors that come from the user's input (data, configuration), reported as one clear message."""


class UserInputError(ValueError):
    """Bad data or configuration; the message names the culprit and what to do about it."""


def find_user_error(error: BaseException) -> UserInputError | None:
    """The UserInputError behind ``error``, looking through wrappers such as Hydra's InstantiationException."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserInputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
