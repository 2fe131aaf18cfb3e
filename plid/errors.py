"""Errors that come from the user's input (data, configuration), reported as one clear message."""


class UserInputError(ValueError):
    """Bad data or configuration; the message names the culprit and what to do about it."""


# optional dependencies, by the module a missing one raises on, and the extra that installs it (pyproject.toml)
EXTRAS = {"wandb": ("wandb", "logger=wandb"), "tensorboard": ("tensorboard", "logger=tensorboard"),
          "tensorboardX": ("tensorboard", "logger=tensorboard"), "optuna": ("sweeps", "hparams_search=..."),
          "submitit": ("cluster", "hydra/launcher=slurm")}


def missing_extra(error: BaseException) -> UserInputError | None:
    """A :class:`UserInputError` naming the extra to install where ``error`` is an optional dependency missing
    (Lightning's loggers raise ModuleNotFoundError, or an ImportError naming the package)."""
    text, name = str(error), getattr(error, "name", None) or ""
    for module, (extra, option) in EXTRAS.items():
        if name == module or name.startswith(f"{module}.") or f"`{module}`" in text:
            return UserInputError(f"{option} needs {module}, which is not installed: pip install 'plid[{extra}]'")
    return None


def find_user_error(error: BaseException) -> UserInputError | None:
    """The UserInputError behind ``error``, looking through wrappers such as Hydra's InstantiationException; an
    optional dependency missing is one too (:func:`missing_extra`)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserInputError):
            return error
        if isinstance(error, ModuleNotFoundError) and (extra := missing_extra(error)) is not None:
            return extra
        if type(error).__name__ == "MissingMandatoryValue":  # omegaconf's, for a ??? key left unset
            key = getattr(error, "full_key", None) or "a required option"
            return UserInputError(f"{key} is required: give {key}=... (--help lists every option)")
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
