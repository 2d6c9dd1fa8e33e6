"""The manifest of official pretrained checkpoints (``pretrained/manifest.yaml``) and fetching them, verified.

Each file is downloaded with :func:`mtkd.weights.download.download_file` (atomic, sha256-checked) into
``pretrained/official/<name>``. Files whose sha256 nobody here has recorded (``sha256: null``) are downloaded,
hashed and, unless ``allow_unverified`` is set, deleted again with the hash printed, so that an unverified file
never lands silently where training code would load it; ``sha256_prefix`` (the digits a publisher put in the file
name) is checked in every case. Files without a direct link (``manual: true``) are reported with where to get them.
Files already present are verified and never downloaded again; a present file is never deleted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from mtkd.utils.errors import MtkdError
from mtkd.weights.download import ChecksumError, DownloadError, download_file, sha256_of

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MANIFEST = os.path.join(REPO_ROOT, 'pretrained', 'manifest.yaml')
DEFAULT_DESTINATION = os.path.join(REPO_ROOT, 'pretrained', 'official')
KEY_FORMATS = ('basicsr', 'edsr_official', 'rcan_official')  # mtkd.weights.formats.CONVERTERS, without torch

_FIELDS = {'name', 'network', 'scale', 'url', 'download_page', 'sha256', 'sha256_prefix', 'key_format',
           'param_key', 'input_range', 'arch', 'manual', 'notes'}
_REQUIRED = ('name', 'network', 'scale', 'sha256', 'key_format', 'param_key')


class ManifestError(MtkdError, ValueError):
    """A manifest entry that is malformed (names the entry and the field)."""


@dataclass(frozen=True)
class PretrainedFile:
    """One manifest entry (see the field list at the top of ``pretrained/manifest.yaml``)."""

    name: str
    network: str
    scale: int | list
    sha256: str | None
    key_format: str
    param_key: str
    url: str | None = None
    download_page: str | None = None
    sha256_prefix: str | None = None
    input_range: int | None = None
    arch: dict | None = None
    manual: bool = False
    notes: str | None = None

    @property
    def verifiable(self) -> bool:
        return self.sha256 is not None


@dataclass
class FetchResult:
    """What happened to one file: ``status`` is one of :data:`STATUSES`."""

    name: str
    path: str
    status: str
    sha256: str | None = None
    message: str = ''
    ok: bool = field(init=False)

    def __post_init__(self):
        self.ok = self.status in ('verified', 'downloaded', 'unverified')


#: verified: present with the recorded hash; downloaded: fetched and verified; unverified: kept without a
#: recorded hash (present already, or fetched with allow_unverified); missing: manual file not there;
#: failed: download or verification failed (message says why and what to do).
STATUSES = ('verified', 'downloaded', 'unverified', 'missing', 'failed')


def _is_hex(text, length=None) -> bool:
    return (isinstance(text, str) and bool(text) and all(c in '0123456789abcdef' for c in text)
            and (length is None or len(text) == length))


def _entry(raw, index: int, manifest_path: str) -> PretrainedFile:
    where = f'{manifest_path}: entry {index}'
    if not isinstance(raw, dict):
        raise ManifestError(f'{where} is not a mapping.')
    where = f"{manifest_path}: entry {index} ('{raw.get('name', '?')}')"
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ManifestError(f'{where}: unknown fields {sorted(unknown)}; allowed: {sorted(_FIELDS)}.')
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise ManifestError(f'{where}: missing fields {missing}.')
    name = raw['name']
    if not isinstance(name, str) or not name or os.sep in name or name.startswith('.'):
        raise ManifestError(f'{where}: name must be a plain file name, got {name!r}.')
    if raw['sha256'] is not None and not _is_hex(raw['sha256'], 64):
        raise ManifestError(f'{where}: sha256 must be 64 lower-case hex digits or null, got {raw["sha256"]!r}.')
    prefix = raw.get('sha256_prefix')
    if prefix is not None:
        prefix = str(prefix)
        if not _is_hex(prefix) or len(prefix) > 64:
            raise ManifestError(f'{where}: sha256_prefix must be lower-case hex digits, got {prefix!r}.')
        if raw['sha256'] is not None and not raw['sha256'].startswith(prefix):
            raise ManifestError(f'{where}: sha256 does not start with sha256_prefix {prefix}.')
    if raw['key_format'] not in KEY_FORMATS:
        raise ManifestError(f'{where}: key_format {raw["key_format"]!r} is not one of {list(KEY_FORMATS)}.')
    manual = bool(raw.get('manual', False))
    url = raw.get('url')
    if url is None and not manual:
        raise ManifestError(f'{where}: no url; set manual: true and a download_page for files fetched by hand.')
    if url is not None and not (isinstance(url, str) and url.startswith(('https://', 'http://'))):
        raise ManifestError(f'{where}: url must be an http(s) URL, got {url!r}.')
    if manual and not raw.get('download_page'):
        raise ManifestError(f'{where}: manual entries need a download_page saying where to get the file.')
    if raw.get('input_range') not in (None, 1, 255):
        raise ManifestError(f'{where}: input_range must be 1 or 255, got {raw.get("input_range")!r}.')
    values = {key: raw.get(key) for key in _FIELDS if key in raw}
    values.update(manual=manual, sha256_prefix=prefix)
    return PretrainedFile(**values)


def load_manifest(path: str = DEFAULT_MANIFEST) -> list[PretrainedFile]:
    """Read and validate a manifest; raises :class:`ManifestError` naming the entry and field at fault."""
    import yaml

    if not os.path.isfile(path):
        raise ManifestError(f'Manifest not found: {path}.')
    with open(path, encoding='utf-8') as handle:
        document = yaml.safe_load(handle)
    if not isinstance(document, dict) or not isinstance(document.get('files'), list):
        raise ManifestError(f'{path}: expected a mapping with a list under "files".')
    entries = [_entry(raw, index, path) for index, raw in enumerate(document['files'])]
    names = [entry.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ManifestError(f'{path}: duplicate names {duplicates}.')
    return entries


def select(entries: list[PretrainedFile], names=None) -> list[PretrainedFile]:
    """The entries called ``names`` (all when None), in the order asked; unknown names raise listing the choices."""
    if not names:
        return list(entries)
    by_name = {entry.name: entry for entry in entries}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f'Unknown checkpoint name(s) {unknown}; choose from: {", ".join(sorted(by_name))} '
                         '(see --list).')
    return [by_name[name] for name in names]


def _manual_instructions(entry: PretrainedFile, path: str) -> str:
    text = f'get it by hand from {entry.download_page} and place it at {path}'
    return text + (f' ({entry.notes})' if entry.notes else '')


def _check_prefix(entry: PretrainedFile, actual: str, source: str) -> None:
    if entry.sha256_prefix and not actual.startswith(entry.sha256_prefix):
        raise ChecksumError(f'sha256 of {source} is {actual}, which does not start with {entry.sha256_prefix} '
                            f'(the prefix in its published name): a different or corrupt file.')


def fetch_one(entry: PretrainedFile, destination_folder: str = DEFAULT_DESTINATION, base_url: str | None = None,
              allow_unverified: bool = False, progress: bool = True) -> FetchResult:
    """Make ``destination_folder/<entry.name>`` present and verified, downloading it when needed."""
    path = os.path.join(destination_folder, entry.name)
    url = f'{base_url.rstrip("/")}/{entry.name}' if base_url else entry.url
    try:
        if os.path.isfile(path) and entry.sha256 is None:
            actual = sha256_of(path)
            _check_prefix(entry, actual, path)
            return FetchResult(entry.name, path, 'unverified', actual,
                               'present; no sha256 recorded in the manifest, so not verified (record this hash)')
        if os.path.isfile(path) and sha256_of(path) == entry.sha256:
            return FetchResult(entry.name, path, 'verified', entry.sha256, 'present, sha256 matches')
        if url is None:
            if os.path.isfile(path):
                actual = sha256_of(path)
                return FetchResult(entry.name, path, 'failed', actual,
                                   f'present but sha256 {actual} differs from the manifest ({entry.sha256}); '
                                   f'replace it: {_manual_instructions(entry, path)}')
            return FetchResult(entry.name, path, 'missing', None, _manual_instructions(entry, path))
        if entry.sha256 is not None:
            # download_file replaces a present file whose hash differs and verifies before moving into place
            download_file(url, path, entry.sha256, progress=progress)
            return FetchResult(entry.name, path, 'downloaded', entry.sha256, f'from {url}, sha256 matches')
        return _fetch_unverified(entry, url, path, allow_unverified, progress)
    except (DownloadError, ChecksumError) as error:
        hint = f' Alternatively {_manual_instructions(entry, path)}.' if entry.download_page else ''
        return FetchResult(entry.name, path, 'failed', None, f'{error}{hint}')


def _fetch_unverified(entry, url, path, allow_unverified, progress) -> FetchResult:
    staging = os.path.join(os.path.dirname(path), f'.{entry.name}.unverified')
    if os.path.exists(staging):
        os.remove(staging)
    try:
        try:
            download_file(url, staging, None, progress=progress)
        except (DownloadError, ChecksumError) as error:
            # the staging name is an internal detail: tell the user where the file belongs
            raise type(error)(str(error).replace(os.path.abspath(staging), os.path.abspath(path))) from error
        actual = sha256_of(staging)
        _check_prefix(entry, actual, url)
        if not allow_unverified:
            return FetchResult(entry.name, path, 'failed', actual,
                               f'downloaded from {url} with sha256 {actual}, but the manifest records no sha256 '
                               'to verify it against, so it was deleted. Check the hash, then record it in '
                               'pretrained/manifest.yaml or rerun with --allow-unverified to keep the file.')
        os.replace(staging, path)
        return FetchResult(entry.name, path, 'unverified', actual,
                           f'downloaded from {url}; kept without verification (--allow-unverified); '
                           'record this hash in the manifest')
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def fetch_pretrained(names=None, destination_folder: str = DEFAULT_DESTINATION, manifest: str = DEFAULT_MANIFEST,
                     base_url: str | None = None, allow_unverified: bool = False,
                     progress: bool = True) -> list[FetchResult]:
    """Fetch and verify the manifest's files (or those called ``names``); one :class:`FetchResult` per file.

    ``base_url`` replaces each entry's URL with ``<base_url>/<name>`` (a mirror, or the tests' local server); with
    it, manual entries are fetched too. One failing file does not stop the others.
    """
    entries = select(load_manifest(manifest), names)
    os.makedirs(destination_folder, exist_ok=True)
    return [fetch_one(entry, destination_folder, base_url, allow_unverified, progress) for entry in entries]
