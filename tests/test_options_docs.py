"""docs/reference/: one page per entry point listing every option of its Hydra config, kept in step with plid/conf/;
and the console scripts of pyproject.toml."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from plid import CONF_DIR
from plid.utils import options as opts

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = PROJECT_ROOT / "docs" / "reference"
ENTRIES = {entry.module: entry for entry in opts.ENTRY_POINTS}
# every `python -m` entry point of plid and the root config its @hydra.main composes
EXPECTED = {
    "plid.train": "train", "plid.detect": "detect", "plid.study": "study", "plid.ensemble": "ensemble",
    "plid.export": "export", "plid.predict": "predict", "plid.evaluate": "evaluate", "plid.crop": "crop",
    "plid.data.spider": "spider_import", "plid.grade_anatomy": "grade_anatomy",
}
_ROW = re.compile(r"^\| `(?P<key>[^`]+)` \|", re.MULTILINE)


def _composed_leaves(config_name: str) -> set[str]:
    """The leaf keys of a root config, composed as tests/conftest.py's compose fixture does (the user's optional
    plid/conf/local/ file left out), found independently of plid.utils.options."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            try:
                cfg = compose(config_name=config_name, overrides=["~local"], return_hydra_config=True)
            except ConfigCompositionException:  # no `optional local` in this config
                cfg = compose(config_name=config_name, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        del cfg.hydra

    def walk(node: object, prefix: str) -> set[str]:
        if isinstance(node, dict) and node:
            return set().union(*(walk(value, f"{prefix}{key}.") for key, value in node.items()))
        return {prefix.rstrip(".")}

    return walk(OmegaConf.to_container(cfg, resolve=False), "")


def _scripts() -> dict[str, str]:
    """pyproject.toml's [project.scripts] (read by hand: tomllib is Python 3.11+, plid supports 3.10)."""
    text = (PROJECT_ROOT / "pyproject.toml").read_text()
    section = re.search(r"^\[project\.scripts\]\n(?P<body>.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    assert section, "pyproject.toml has no [project.scripts]"
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', section["body"], re.MULTILINE))


def test_entry_points_are_every_hydra_main():
    assert {e.module: e.config for e in opts.ENTRY_POINTS} == EXPECTED
    cli = Path(importlib.util.find_spec("plid.cli").origin).read_text()
    for entry in opts.ENTRY_POINTS:
        module = entry.module + (".__main__" if entry.module == "plid.ensemble" else "")
        # the console script runs that module's main
        assert f'{entry.target.split(":")[1]} = _command("{module}", "{entry.config}")' in cli, entry.target
        source = Path(importlib.util.find_spec(module).origin).read_text()
        assert re.search(rf'@hydra\.main\([^)]*config_name="{entry.config}"', source), (
            f"{module} does not compose plid/conf/{entry.config}.yaml")


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_every_leaf_key_is_on_its_page(module):
    entry = ENTRIES[module]
    page = REFERENCE / entry.page
    assert page.is_file(), f"{page} is missing: run `{opts.REGENERATE}`"
    listed = set(_ROW.findall(page.read_text()))
    leaves = _composed_leaves(entry.config)
    assert leaves - listed == set(), (f"options of plid/conf/{entry.config}.yaml missing from {page.name}: run "
                                      f"`{opts.REGENERATE}`")
    # the module's own view agrees with the independent composition, and every option was traced to its file
    found = opts.options(entry.config)
    assert {o.key for o in found} == leaves
    assert [o.key for o in found if o.source is None] == []


def test_pages_are_up_to_date(tmp_path):
    opts.write_pages(tmp_path)
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.md")}
    committed = {p.name: p.read_text() for p in REFERENCE.glob("*.md")}
    assert sorted(committed) == sorted(fresh), f"docs/reference/ holds other pages than it should: run `{opts.REGENERATE}`"
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert stale == [], f"docs/reference/{stale} out of date with plid/conf/: run `{opts.REGENERATE}`"


def test_help_comes_from_the_yaml_comments():
    predict = {o.key: o for o in opts.options("predict")}
    assert "neighbouring slices" in predict["slices"].help
    assert predict["slices"].default == 1 and predict["slices"].source == "predict.yaml"
    assert predict["model_dir"].required and predict["model_dir"].default_text == "???"
    # unresolved interpolations are kept as written
    assert predict["paths.output_dir"].default == "${hydra:runtime.output_dir}"
    train = {o.key: o for o in opts.options("train")}
    # a group's file: the comment in plid/conf/trainer/default.yaml; the default from the last file that sets it
    assert "bit-for-bit" in train["trainer.deterministic"].help
    assert train["trainer.deterministic"].source == "trainer/default.yaml"
    assert train["trainer.accelerator"].source == "trainer/cpu.yaml"
    # a key the derived file sets again keeps its own comment there (data/synthetic_det.yaml over synthetic_seg)
    detect = {o.key: o for o in opts.options("detect")}
    assert "imgsz" in detect["data.image_size"].help and detect["data.image_size"].source == "data/synthetic_det.yaml"
    assert "ivd_label" in detect["data.disc_classes"].help
    # a nested key with no comment of its own takes its parent's
    ensemble = {o.key: o for o in opts.options("ensemble")}
    assert "distinct weight directions" in ensemble["search.max_candidates.seg"].help
    assert ensemble["search.max_candidates.cls"].default is None
    assert "neighbouring slices" in (REFERENCE / "predict.md").read_text()


def test_comment_scan(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(
        "# @package _global_\n# the file\n\n# about a\na: 1\n# about b\nb:\n  # about c\n  c: [1,\n    2]\n"
        "  d: {e: 1}\n# detached\n\nf: |\n  g: not a key\nh:\n  - i: 2\n# about j\nj: x | y\n"
    )
    keys = opts._scan(path)
    assert {k: v.comment for k, v in keys.items()} == {
        "a": "about a", "b": "about b", "b.c": "about c", "b.d": "", "f": "", "h": "", "j": "about j"}
    assert keys["b"].mapping and not keys["b.d"].mapping
    assert opts._comment(keys, "b.d.e") == "about b"
    assert opts.header(path) == "the file"


def test_groups_list_the_files_of_each_group():
    train = opts.groups("train")
    assert "unet_resnet34" in train["model"] and "_segmenter" not in train["model"]
    assert opts.choices("train")["model"] == "unet_resnet34"
    assert "paper_det" not in train["experiment"]  # it overrides /detector, a group plid.train does not have
    assert "paper_det" in opts.groups("detect")["experiment"]
    assert "slurm" in train["hydra/launcher"]
    assert "model" not in opts.groups("predict")


def test_console_scripts():
    scripts = _scripts()
    assert scripts == {entry.script: entry.target for entry in opts.ENTRY_POINTS}
    assert {ENTRIES[m].target for m in EXPECTED} == set(scripts.values())  # every entry point has one
    for name, target in scripts.items():
        assert re.fullmatch(r"plid(-[a-z]+)+", name), name
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_a_console_script_finds_its_configs(tmp_path):
    # what pip writes into .venv/bin/plid-import-spider; sys.path[0] is then the script's folder, not the checkout
    script = tmp_path / "plid-import-spider"
    script.write_text("import sys\nfrom plid.data.spider import main\nsys.exit(main())\n")
    result = subprocess.run([sys.executable, str(script), "--cfg", "job"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "task_name: spider_import" in result.stdout
