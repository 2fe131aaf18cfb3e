"""The options of every entry point, read from the Hydra configs: key, default as written, and meaning.

The meaning of an option is the comment block right above its key in the YAML file that sets it (a blank line
between a comment and a key detaches the comment), or else above its nearest parent key there; a key set by several
files (``trainer/default.yaml``, then ``trainer/cpu.yaml``) takes its default from the last and its meaning from
the last one that has a comment for it.
Defaults are read unresolved: ``${paths.output_dir}`` stays as written, ``???`` means the option must be given.

    python -m plid.utils.options --write docs/reference     # regenerate the reference pages
    python -m plid.utils.options predict                    # the options of one root config, as plain text

Only the standard library, PyYAML, OmegaConf and Hydra are imported (no torch), so this is fast enough for
``--help``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from plid import CONF_DIR

PROJECT_ROOT = Path(__file__).resolve().parents[2]

REGENERATE = "python -m plid.utils.options --write docs/reference"
# a group whose files are each user's own (git-ignored): never listed, never composed into the pages
LOCAL_GROUP = "local"


@dataclass(frozen=True)
class EntryPoint:
    """One command: ``python -m <module>`` or its console script, composing ``plid/conf/<config>.yaml``."""

    module: str
    config: str
    script: str
    target: str  # the console script's module:function

    @property
    def page(self) -> str:
        """Its page's file name under docs/reference/."""
        return self.module.rsplit(".", 1)[-1] + ".md"


ENTRY_POINTS: tuple[EntryPoint, ...] = (
    EntryPoint("plid.data.spider", "spider_import", "plid-import-spider", "plid.cli:import_spider"),
    EntryPoint("plid.train", "train", "plid-train", "plid.cli:train"),
    EntryPoint("plid.detect", "detect", "plid-detect", "plid.cli:detect"),
    EntryPoint("plid.crop", "crop", "plid-crop", "plid.cli:crop"),
    EntryPoint("plid.ensemble", "ensemble", "plid-ensemble", "plid.cli:ensemble"),
    EntryPoint("plid.grade_anatomy", "grade_anatomy", "plid-grade-anatomy", "plid.cli:grade_anatomy"),
    EntryPoint("plid.export", "export", "plid-export", "plid.cli:export"),
    EntryPoint("plid.predict", "predict", "plid-predict", "plid.cli:predict"),
    EntryPoint("plid.evaluate", "evaluate", "plid-evaluate", "plid.cli:evaluate"),
    EntryPoint("plid.study", "study", "plid-study", "plid.cli:study"),
)


@dataclass(frozen=True)
class Option:
    """One leaf of a composed default config."""

    key: str  # dotted path, e.g. trainer.max_epochs
    default: Any  # as written: interpolations are kept as strings, "???" is a required value
    help: str  # the comment above the key ("" where there is none)
    source: str | None  # the file that sets the default, relative to plid/conf/ (e.g. trainer/cpu.yaml)

    @property
    def default_text(self) -> str:
        return format_value(self.default)

    @property
    def required(self) -> bool:
        return self.default == "???"


def format_value(value: Any) -> str:
    """A default as it would be written on the command line: null, true, 0.1, [a, b], {}, ${paths.x}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list | dict):
        return yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False).strip()
    return str(value)


# --- the YAML files, line by line -------------------------------------------------------------------------------

_KEY = re.compile(r"""^(?P<indent> *)(?P<key>[\w.@/+-]+|"[^"]*"|'[^']*'):(?:\s+(?P<value>.*))?$""")
_ITEM = re.compile(r"^(?P<indent> *)-(\s|$)")


@dataclass
class _Line:
    comment: str
    mapping: bool = False  # a block mapping opener (its value is the keys below it)


def _unbalanced(value: str) -> int:
    """Open brackets left by a flow value (quotes are ignored: good enough for config files)."""
    value = re.sub(r"""("[^"]*"|'[^']*')""", "", value.split(" #", 1)[0])
    return value.count("[") + value.count("{") - value.count("]") - value.count("}")


@lru_cache(maxsize=256)
def _scan(path: Path) -> dict[str, _Line]:
    """Every key of a YAML file (dotted, relative to the file's package) with the comment block above it."""
    keys: dict[str, _Line] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    list_indent: int | None = None  # inside a block list started at this indent: its items' keys are skipped
    skip_indent: int | None = None  # inside a block scalar or a multi-line flow value of a key at this indent
    open_brackets = 0
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if open_brackets > 0:
            open_brackets += _unbalanced(stripped)
            continue
        if skip_indent is not None:
            if not stripped or indent > skip_indent:
                continue
            skip_indent = None
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            text = stripped[1:].strip()
            if not text.startswith("@package"):
                pending.append(text)
            continue
        if _ITEM.match(line):
            list_indent = indent
            pending = []
            continue
        match = _KEY.match(line)
        if match is None:  # a continuation line of a plain multi-line scalar
            pending = []
            continue
        if list_indent is not None:
            if indent > list_indent:
                pending = []
                continue
            list_indent = None
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = match["key"].strip("'\"")
        if stack:
            keys[".".join(k for _, k in stack)].mapping = True
        stack.append((indent, key))
        keys[".".join(k for _, k in stack)] = _Line(comment=" ".join(" ".join(pending).split()))
        pending = []
        value = (match["value"] or "").strip()
        if value[:1] in ("|", ">"):
            skip_indent = indent
        elif value[:1] in ("[", "{"):
            open_brackets = _unbalanced(value)
    return keys


def _sets(keys: dict[str, _Line], path: str) -> _Line | None:
    """The line of a file that sets the leaf ``path``: its own, or an ancestor's that sets a whole value (a flow
    mapping, null)."""
    if path in keys:
        return keys[path]
    parts = path.split(".")
    for n in range(len(parts) - 1, 0, -1):
        line = keys.get(".".join(parts[:n]))
        if line is not None:
            return None if line.mapping else line
    return None


def _comment(keys: dict[str, _Line], path: str) -> str:
    """The comment of a key in one file, or of its nearest commented parent there (``max_candidates:`` explains
    ``max_candidates.seg``; a flow mapping's keys have no lines of their own)."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        line = keys.get(".".join(parts[:n]))
        if line is not None and line.comment:
            return line.comment
    return ""


def header(path: Path) -> str:
    """A YAML file's description: the comment block at its top (``# @package`` left out), lines kept."""
    lines: list[str] = []
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped.startswith("#"):
            break
        text = stripped[1:]
        text = text[1:] if text.startswith(" ") else text
        if not text.strip().startswith("@package"):
            lines.append(text.rstrip())
    return "\n".join(lines)


# --- composition -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Composed:
    cfg: DictConfig  # the config without its hydra node
    files: tuple[tuple[Path, str], ...]  # (yaml file, package) in merge order, plid/conf/ files only
    choices: dict[str, str | None]  # group -> selected option (hydra's runtime.choices)
    has_local: bool  # whether the config has the optional `local` group


def _compose(config_name: str, overrides: Sequence[str] = ()) -> _Composed:
    return _compose_cached(config_name, tuple(overrides))


@lru_cache(maxsize=32)
def _compose_cached(config_name: str, overrides: tuple[str, ...]) -> _Composed:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException
    from hydra.types import RunMode

    saved = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            # the pages describe the checkout's configs: a user's plid/conf/local/default.yaml is left out
            try:
                args = [*overrides, f"~{LOCAL_GROUP}"]
                cfg = hydra_compose(config_name=config_name, overrides=args, return_hydra_config=True)
                has_local = True
            except ConfigCompositionException:
                args = list(overrides)
                cfg = hydra_compose(config_name=config_name, overrides=args, return_hydra_config=True)
                has_local = False
            defaults = loader.compute_defaults_list(config_name=config_name, overrides=args, run_mode=RunMode.RUN)
    finally:
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)
    choices = {str(k): (None if v is None else str(v)) for k, v in cfg.hydra.runtime.choices.items()}
    with open_dict(cfg):
        del cfg.hydra
    files = []
    for default in defaults.defaults:
        package = default.package or ""
        path = CONF_DIR / f"{default.config_path}.yaml"
        if package == "hydra" or package.startswith("hydra.") or not path.is_file():
            continue
        files.append((path, "" if package == "_global_" else package))
    return _Composed(cfg=cfg, files=tuple(files), choices=choices, has_local=has_local)


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The composed default config of ``plid/conf/<config_name>.yaml``, unresolved, without its ``hydra`` node and
    without the user's ``plid/conf/local/`` file."""
    return _compose(config_name, overrides).cfg.copy()


def leaves(container: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a config: a scalar, a list, null or an empty mapping."""
    if isinstance(container, DictConfig):
        container = OmegaConf.to_container(container, resolve=False)
    for key, value in container.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{path}.")
        else:
            yield path, value


def options(config_name: str, overrides: Sequence[str] = ()) -> list[Option]:
    """Every leaf option of ``plid/conf/<config_name>.yaml`` as composed by default (or with ``overrides``), in the order
    of the composed config."""
    composed = _compose(config_name, overrides)
    scanned = [(path, package, _scan(path)) for path, package in composed.files]
    result = []
    for key, default in leaves(composed.cfg):
        source: str | None = None
        help_ = ""
        for path, package, keys in reversed(scanned):
            if package and key != package and not key.startswith(f"{package}."):
                continue
            line = _Line("") if key == package and not keys else _sets(keys, key[len(package) + 1:] if package else key)
            if line is None:
                continue
            if source is None:
                source = path.relative_to(CONF_DIR).as_posix()
            help_ = _comment(keys, key[len(package) + 1:] if package else key)
            if help_:
                break
        result.append(Option(key=key, default=default, help=help_, source=source))
    return result


def choices(config_name: str) -> dict[str, str | None]:
    """The option each config group of ``plid/conf/<config_name>.yaml`` selects by default (None: the group is off), for
    the groups that live in plid/conf/ (the root config's order, Hydra's own subgroups such as hydra/launcher last)."""
    composed = _compose(config_name)
    selected = {g: c for g, c in reversed(composed.choices.items()) if (CONF_DIR / g).is_dir()}
    ordered = {g: c for g, c in selected.items() if "/" not in g}
    ordered.update({g: c for g, c in selected.items() if "/" in g})
    if composed.has_local:
        ordered[LOCAL_GROUP] = "default"
    return ordered


def _overridden(path: Path) -> set[str]:
    """The groups a config file's defaults list overrides (``- override /data: spider2d_seg``), its own included."""
    found: set[str] = set()
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            content = yaml.safe_load(current.read_text()) or {}
        except yaml.YAMLError:
            continue
        for entry in content.get("defaults", []) if isinstance(content, dict) else []:
            if isinstance(entry, dict):
                for name in entry:
                    if str(name).startswith("override "):
                        found.add(str(name).removeprefix("override ").strip().lstrip("/"))
            elif isinstance(entry, str) and entry != "_self_":  # another config of the group, e.g. - paper_seg
                other = current.parent / f"{entry.lstrip('/')}.yaml"
                if entry.startswith("/"):
                    other = CONF_DIR / f"{entry.lstrip('/')}.yaml"
                if other.is_file() and other != current:
                    stack.append(other)
    return found


def groups(config_name: str) -> dict[str, list[str]]:
    """The config groups of ``plid/conf/<config_name>.yaml`` and the options each offers: the files of plid/conf/<group>/,
    less the ``_``-prefixed bases the others extend and those that override a group this config does not have
    (``experiment=paper_det`` is for plid.detect), plus the default where it is Hydra's own (launcher: basic)."""
    known = set(_compose(config_name).choices)
    result = {}
    for group, choice in choices(config_name).items():
        names = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")
                       if not p.stem.startswith("_") and _overridden(p) <= known)
        if choice is not None and choice not in names and group != LOCAL_GROUP:
            names.insert(0, choice)
        result[group] = names
    return result


def help_text(config_name: str) -> str:
    """Plain-text listing of a root config's groups and options (a ``--help``)."""
    lines = [header(CONF_DIR / f"{config_name}.yaml"), "", "groups (group=option):"]
    for group, names in groups(config_name).items():
        listed = "your own plid/conf/local/default.yaml, when it exists" if group == LOCAL_GROUP else ", ".join(names)
        lines.append(f"  {group}: {listed or '(none)'}")
    lines += ["", "options (key=value):"]
    for option in options(config_name):
        lines.append(f"  {option.key}={option.default_text}")
        if option.help:
            lines.append(f"      {option.help}")
    return "\n".join(lines) + "\n"


# --- the reference pages -----------------------------------------------------------------------------------------

_CODE = re.compile(r"(`+)(.+?)\1")


def _md(text: str) -> str:
    """Comment text for a Markdown table cell: code spans kept, <, >, * and | escaped elsewhere."""
    out, last = [], 0
    for match in _CODE.finditer(text):
        out.append(_escape(text[last:match.start()]))
        out.append(match.group(0).replace("|", "\\|"))
        last = match.end()
    out.append(_escape(text[last:]))
    return "".join(out)


def _escape(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("*", "\\*").replace("|", "\\|")


def _code(text: str) -> str:
    """A code span for a table cell."""
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text.replace('|', chr(92) + '|')}{pad}{fence}"


def _intro(text: str) -> list[str]:
    """A root config's header comment as Markdown: prose as paragraphs, indented example commands as a code block."""
    out: list[str] = []
    prose: list[str] = []
    code: list[str] = []

    def flush() -> None:
        if prose:
            out.extend([_md(" ".join(prose)), ""])
            prose.clear()
        if code:
            out.extend(["```bash", *code, "```", ""])
            code.clear()

    for line in text.splitlines():
        if line.startswith("  ") and line.strip():
            if prose:
                flush()
            code.append(line.strip())
        elif line.strip():
            if code:
                flush()
            prose.append(line.strip())
        else:
            flush()
    flush()
    return out


def render_page(entry: EntryPoint) -> str:
    """docs/reference/<page>: the command, the config groups and every option of one entry point."""
    root = CONF_DIR / f"{entry.config}.yaml"
    opts = options(entry.config)
    group_names = groups(entry.config)
    selected = choices(entry.config)
    lines = [
        f"# {entry.module}",
        "",
        f"<!-- generated by `{REGENERATE}` from plid/conf/: edit the YAML comments, not this page -->",
        "",
        *_intro(header(root)),
        "## Command line",
        "",
        "```bash",
        f"python -m {entry.module} [group=option ...] [key=value ...]",
        f"{entry.script} [group=option ...] [key=value ...]   # its console script (make install: pip install -e .)",
        "```",
        "",
        f"The root config is `plid/conf/{entry.config}.yaml`. Each option below is a Hydra override, `key=value`; a "
        "group picks one of its files, `group=option`. `--cfg job` prints the composed config without running, "
        "`-m` sweeps comma-separated values (a multirun).",
        "",
    ]
    if group_names:
        lines += ["## Config groups", "", "| Group | Default | Options |", "| --- | --- | --- |"]
        for group, names in group_names.items():
            if group == LOCAL_GROUP:
                lines.append(f"| `{group}` | `default` (optional) | your own `plid/conf/local/default.yaml` (git-ignored), "
                             "merged into every run when it exists; left out of the defaults below |")
                continue
            default = selected.get(group)
            listed = ", ".join(f"`{n}`" for n in names) or "(none)"
            lines.append(f"| `{group}` | `{format_value(default)}` | {listed} |")
        lines.append("")
    lines += [
        "## Options",
        "",
        f"{len(opts)} options. `???`: no default, the option must be given; `${{...}}`: an interpolation, resolved "
        "when the run starts. *File*: where the default is set, under `plid/conf/`.",
        "",
    ]
    sections: dict[str, list[Option]] = {}
    for option in opts:
        sections.setdefault(option.key.split(".", 1)[0] if "." in option.key else "", []).append(option)
    for section, members in sorted(sections.items(), key=lambda item: item[0] != ""):
        title = f"`{section}`" if section else "Top level"
        lines += [f"### {title}", ""]
        if section and section in selected and selected[section] is not None:
            lines += [f"Group `{section}`, default `{selected[section]}` (`{section}=<option>` picks another).", ""]
        lines += ["| Option | Default | Meaning | File |", "| --- | --- | --- | --- |"]
        for option in members:
            source = f"`{option.source}`" if option.source else ""
            lines.append(f"| `{option.key}` | {_code(option.default_text)} | {_md(option.help)} | {source} |")
        lines.append("")
    return "\n".join(lines)


def render_index() -> str:
    lines = [
        "# Options",
        "",
        "Every option of every command, its default and its meaning, one page per entry point. The pages are "
        f"generated from the Hydra configs in `plid/conf/` by `{REGENERATE}` (the meanings are the comments above "
        "the keys), and `tests/test_options_docs.py` fails when they are out of date.",
        "",
        "| Command | Console script | Root config | Options |",
        "| --- | --- | --- | --- |",
    ]
    for entry in ENTRY_POINTS:
        count = len(options(entry.config))
        lines.append(f"| [`python -m {entry.module}`]({entry.page}) | `{entry.script}` | `plid/conf/{entry.config}.yaml` "
                     f"| {count} |")
    lines.append("")
    return "\n".join(lines)


def pages() -> dict[str, str]:
    """File name -> content of every page of docs/reference/."""
    result = {"index.md": render_index()}
    for entry in ENTRY_POINTS:
        result[entry.page] = render_page(entry)
    return result


def write_pages(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in pages().items():
        path = folder / name
        path.write_text(text)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m plid.utils.options", description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", help="a root config name (train, predict, ...): print its options")
    parser.add_argument("--write", type=Path, metavar="DIR", help="write the reference pages into DIR")
    args = parser.parse_args(argv)
    if args.write is None and args.config is None:
        parser.error("give a config name or --write DIR")
    if args.write is not None:
        for path in write_pages(args.write):
            print(path)
    if args.config is not None:
        sys.stdout.write(help_text(args.config))


if __name__ == "__main__":
    main()
