"""The commands as people type them: ``python -m plid.<command>`` and the console scripts ``plid-<command>``.

Both answer ``-h`` / ``--help`` with the command's own options (every key of its composed config, with the comment
above it in the YAML: :mod:`plid.utils.options`) before torch, ultralytics or timm is imported, so help comes in
about a second. ``plid-predict`` also takes nnU-Net's habit ``-i <input> -o <out>``. Everything else is Hydra's:
``key=value`` overrides, ``-m`` for a multirun, ``--cfg job`` to print the composed config.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

HELP_FLAGS = ("-h", "--help")
# nnU-Net's short flags, per command, as Hydra overrides
SHORT_FLAGS = {"predict": {"-i": "input", "-o": "out"}}


def translated(config: str, argv: Sequence[str]) -> list[str]:
    """``argv`` with a command's short flags (``-i x``) written as Hydra overrides (``input=x``)."""
    flags, out, args = SHORT_FLAGS.get(config, {}), [], list(argv)
    while args:
        arg = args.pop(0)
        if arg in flags:
            if not args:
                raise SystemExit(f"error: {arg} needs a value ({flags[arg]}=...)")
            value = args.pop(0).replace("\\", "\\\\").replace("'", "\\'")
            out.append(f"{flags[arg]}='{value}'")  # quoted: a comma or bracket in a path is no Hydra syntax
        else:
            out.append(arg)
    return out


def answer_help(name: str, config: str, argv: Sequence[str] | None = None) -> None:
    """Where the command is run as ``__main__`` (``name``) and asked for help, print its options and exit; otherwise
    write its short flags as overrides into ``sys.argv``, for Hydra."""
    if name != "__main__":
        return
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in HELP_FLAGS for a in argv):
        from plid.utils.options import help_text

        print(help_text(config), end="")
        print("Hydra's own help: --hydra-help; the composed config: --cfg job")
        raise SystemExit(0)
    sys.argv[1:] = translated(config, argv)


def _command(module: str, config: str) -> Callable[[], None]:
    def run() -> None:
        answer_help("__main__", config)
        importlib.import_module(module).main()

    run.__doc__ = f"plid-{config}: python -m {module}"
    return run


train = _command("plid.train", "train")
detect = _command("plid.detect", "detect")
crop = _command("plid.crop", "crop")
ensemble = _command("plid.ensemble.__main__", "ensemble")
export = _command("plid.export", "export")
grade_anatomy = _command("plid.grade_anatomy", "grade_anatomy")
predict = _command("plid.predict", "predict")
evaluate = _command("plid.evaluate", "evaluate")
study = _command("plid.study", "study")
import_spider = _command("plid.data.spider", "spider_import")
