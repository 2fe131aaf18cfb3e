"""A model_dir to share: one ``.zip`` made by ``python -m plid.export zip=true``, or the ``https://`` (or ``file://``)
URL of one, given as ``model_dir=`` like a folder (``http://`` only with a ``#sha256=`` pin).

A zip is unpacked once into a cache folder named by its sha256 (``$PLID_CACHE``, default ``~/.cache/plid``), each
member checked to stay inside it; the model_dir inside is then loaded as any other, every file verified against the
sha256 its manifest lists (:func:`plid.inference.model_dir.verify_checksums`), so a zip whose files were changed is
refused, naming the file. A URL is downloaded once into the cache; ``#sha256=<hex>`` at its end pins the zip itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from plid.errors import UserInputError
from plid.utils.provenance import sha256_of

URL_SCHEMES = ("https://", "http://", "file://")


def cache_dir() -> Path:
    return Path(os.environ.get("PLID_CACHE") or Path.home() / ".cache" / "plid").expanduser()


def pack_model_dir(folder: str | Path, zip_path: str | Path | None = None) -> Path:
    """``folder`` (a model_dir) as ``<folder>.zip`` (or ``zip_path``), its files at the zip's top level, written
    whole (a temporary file renamed in); returns the zip's path."""
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise UserInputError(f"{folder}: no manifest.json; not a model_dir to pack")
    zip_path = Path(zip_path) if zip_path is not None else folder.parent / f"{folder.name}.zip"  # plid-v1.2.zip
    fd, tmp = tempfile.mkstemp(prefix=".plid-zip-", suffix=".zip", dir=zip_path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                archive.write(path, path.relative_to(folder).as_posix())
        os.chmod(tmp, 0o644)
        os.replace(tmp, zip_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return zip_path


def _download(url: str) -> Path:
    """A URL's zip on this machine: a ``file://`` one read where it is (its content names its unpacked copy), an
    ``https://`` one downloaded once (again when its pin no longer matches the copy); ``http://`` only when pinned,
    as anyone on the way could swap the model (weights-only loading stops code, not changed figures)."""
    address, _, fragment = url.partition("#")
    pinned = dict(urllib.parse.parse_qsl(fragment)).get("sha256")
    if address.startswith("file://"):
        target = Path(urllib.request.url2pathname(urllib.parse.urlparse(address).path))
        if not target.is_file():
            raise UserInputError(f"model_dir={address}: no such file")
        if pinned and sha256_of(target) != pinned.lower():
            raise UserInputError(f"model_dir={address}: its sha256 is not the {pinned} the URL pins; refused")
        return target
    if address.startswith("http://") and not pinned:
        raise UserInputError(f"model_dir={address}: plain http without #sha256=<the zip's sha256>; refused (use "
                             "https, or pin the file)")
    target = cache_dir() / "downloads" / f"{hashlib.sha256(address.encode()).hexdigest()[:16]}.zip"
    if target.is_file() and pinned and sha256_of(target) != pinned.lower():
        target.unlink()  # an earlier download of this address: the pin asks for another file
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".download-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle, urllib.request.urlopen(address, timeout=60) as response:  # noqa: S310
                shutil.copyfileobj(response, handle)
            os.replace(tmp, target)
        except OSError as error:
            Path(tmp).unlink(missing_ok=True)
            raise UserInputError(f"model_dir={address}: cannot be downloaded ({error})") from error
    if pinned and sha256_of(target) != pinned.lower():
        target.unlink()
        raise UserInputError(f"model_dir={address}: its sha256 is not the {pinned} the URL pins; refused")
    return target


def _unpack(archive_path: Path) -> Path:
    """The model_dir folder of a zip, unpacked once into the cache (by the zip's sha256)."""
    target = cache_dir() / "model_dirs" / sha256_of(archive_path)[:16]
    if (target / "manifest.json").is_file():
        return target
    try:
        archive = zipfile.ZipFile(archive_path)
    except zipfile.BadZipFile as error:
        raise UserInputError(f"model_dir={archive_path}: not a zip file ({error})") from error
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        with archive:
            for member in archive.infolist():
                destination = (staging / member.filename).resolve()
                if staging.resolve() not in destination.parents or member.filename.startswith("/"):
                    raise UserInputError(f"model_dir={archive_path}: member {member.filename!r} would be written "
                                         f"outside the model_dir; refused")
            archive.extractall(staging)
        inner = staging if (staging / "manifest.json").is_file() else next(
            (p.parent for p in staging.glob("*/manifest.json")), None)
        if inner is None:
            raise UserInputError(f"model_dir={archive_path}: no manifest.json in the zip; not a model_dir")
        os.chmod(inner, 0o755)
        try:
            os.replace(inner, target)
        except OSError:  # another run unpacked it meanwhile, or a leftover of an interrupted one
            if not (target / "manifest.json").is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.replace(inner, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def local_model_dir(value: str | Path) -> Path:
    """The folder ``model_dir=`` names: a folder as it is, a zip unpacked into the cache, a URL downloaded first."""
    text = str(value)
    if text.startswith(URL_SCHEMES):
        return _unpack(_download(text))
    path = Path(text).expanduser()
    if path.suffix == ".zip" and path.is_file():
        return _unpack(path)
    return path
