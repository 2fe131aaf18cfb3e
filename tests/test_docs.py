"""The documentation a newcomer reads: a short README, every docs page in the site's nav, a site that builds with
--strict, and no file that records the machine it was written on (a home or temporary folder, the checkout's
parent)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOCS = PROJECT_ROOT / "docs"
README_MAX_LINES = 250
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".json", ".toml", ".txt", ".cfg", ".ini", ".html", ".ipynb"}

# absolute paths that only mean something on the machine that wrote them; not preceded by a word character, a dot
# or a hyphen, so that a URL's path (https://host/tmp/...) or a relative path (../shared/...) is not one
_START = r"(?<![\w.~-])"
MACHINE_PATHS = [
    _START + r"/work/",
    _START + r"/tmp/",
    _START + r"/root/",
    _START + r"/home/[^/\s\"'`]+/",
    _START + r"/Users/[^/\s\"'`]+/",
    _START + r"/private/var/folders/",
    _START + r"/var/folders/",
    r"\b[A-Za-z]:\\Users\\",
]
if PROJECT_ROOT.parent != PROJECT_ROOT.parent.parent:  # the checkout's parent, unless that is the root folder
    MACHINE_PATHS.append(_START + re.escape(str(PROJECT_ROOT.parent)) + r"/")
MACHINE_PATH = re.compile("|".join(MACHINE_PATHS))

# files allowed to name such folders, each with the reason
ALLOWED = {
    # this test: it names the folders it looks for
    "tests/test_docs.py": "the patterns of this test",
}


def _repository_files() -> list[str]:
    """Tracked files, and the untracked ones git does not ignore (what the next commit may add)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout, or git is missing: {error}")
    return sorted({name for name in out.decode().split("\0") if name})


def test_no_tracked_file_holds_a_machine_path():
    hits = []
    for name in _repository_files():
        path = PROJECT_ROOT / name
        if name in ALLOWED or Path(name).suffix not in TEXT_SUFFIXES or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if match := MACHINE_PATH.search(line):
                hits.append(f"{name}:{number}: {match.group(0)!r} in {line.strip()[:120]}")
    assert not hits, ("absolute paths of the machine that wrote them (write ../shared/..., <model_dir>, <run> or a "
                      "path relative to the checkout instead):\n" + "\n".join(hits))


def test_the_patterns_find_machine_paths_and_leave_relative_ones():
    for found in ["/work/runs/model_dir", "`/tmp/x`", "/root/.cache", "/home/ana/plid", "/Users/ana/x",
                  '"C:\\Users\\ana\\x"', f"{PROJECT_ROOT.parent}/shared"]:
        assert MACHINE_PATH.search(found), found
    for kept in ["../shared/data/spider2d", "logs/study/runs/<time>/model_dir", "https://example.org/tmp/file",
                 "data/tmp/x", "<model_dir>", "tmp_path / 'x'"]:
        assert not MACHINE_PATH.search(kept), kept


def test_the_readme_is_short():
    lines = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, at most {README_MAX_LINES}: move the detail into a page under docs/")


def test_the_readme_links_to_pages_that_exist():
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link and not link.startswith("mailto:")]
    assert any(link.startswith("docs/") for link in local)
    missing = [link for link in local if not (PROJECT_ROOT / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


class _AnyTagLoader(yaml.SafeLoader):
    """mkdocs.yml may hold tags for Python objects (!!python/name:..., !ENV): read them as plain values."""


_AnyTagLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def _nav_pages(entry) -> list[str]:
    if isinstance(entry, str):
        return [entry] if "://" not in entry else []
    if isinstance(entry, list):
        return [page for item in entry for page in _nav_pages(item)]
    if isinstance(entry, dict):
        return [page for value in entry.values() for page in _nav_pages(value)]
    return []


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    config = yaml.load((PROJECT_ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_AnyTagLoader)
    assert config.get("strict") is True, "mkdocs.yml must keep strict: true"
    nav = _nav_pages(config["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert len(nav) == len(set(nav)), f"pages listed twice in the nav: {sorted({p for p in nav if nav.count(p) > 1})}"
    assert not set(pages) - set(nav), f"docs pages missing from mkdocs.yml's nav: {sorted(set(pages) - set(nav))}"
    assert not set(nav) - set(pages), f"nav entries without a page under docs/: {sorted(set(nav) - set(pages))}"


def test_the_site_builds_with_strict(tmp_path):
    for module in ("mkdocs", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]'); make docs builds the site")
    # no -q: with -q mkdocs 1.6 drops its warnings before strict mode counts them, and a broken link would pass
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                            cwd=PROJECT_ROOT, capture_output=True, text=True,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if not line.startswith("INFO")]
    assert result.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(warnings)
    assert (tmp_path / "site" / "index.html").is_file()
