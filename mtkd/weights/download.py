"""Download one file over HTTP(S), atomically and checked against its sha256 (standard library + tqdm only).

The file is streamed into a temporary ``.<name>.*.part`` file in the destination folder and moved into place with
``os.replace`` (:func:`mtkd.utils.fileio.atomic_write`) only after the whole body arrived and, when a hash is given,
matched it: an interrupted or corrupt download never leaves a file under the destination name, and a reader never
sees half a file.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request

from mtkd.utils.errors import MtkdError
from mtkd.utils.fileio import atomic_write, file_sha256

#: Bytes read per chunk while streaming.
CHUNK_SIZE = 1 << 20
#: Seconds without any byte from the server before the download is abandoned.
TIMEOUT_S = 60
USER_AGENT = 'mtkd-download/0.1 (+https://github.com/; research code)'


class ChecksumError(MtkdError, ValueError):
    """A downloaded (or present) file whose sha256 is not the expected one."""


class DownloadError(MtkdError, OSError):
    """A file that could not be fetched: HTTP error, unreachable host, interrupted transfer or HTML instead of data."""


#: Hex sha256 of a file (:func:`mtkd.utils.fileio.file_sha256`), under the name :mod:`mtkd.weights.pretrained` imports.
sha256_of = file_sha256


def _check_sha256_argument(sha256):
    if sha256 is None:
        return None
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in '0123456789abcdefABCDEF' for c in sha256):
        raise ValueError(f'download_file: sha256 must be 64 hex digits or None, got {sha256!r}.')
    return sha256.lower()


def _manual_hint(url: str, destination: str) -> str:
    return f'download {url} by hand (a browser works) and place it at {os.path.abspath(destination)}.'


def download_file(url: str, destination: str, sha256: str | None, progress: bool = True) -> str:
    """Fetch ``url`` into the file ``destination`` and return ``destination``.

    - ``destination`` already present: with ``sha256``, kept when its hash matches (nothing is downloaded) and
      replaced by a fresh download when it does not; with ``sha256=None``, kept as it is (nothing to check).
    - ``sha256`` given: the download is verified before it is moved into place; a mismatch deletes the temporary
      file and raises :class:`ChecksumError` naming the URL and both hashes (``destination`` is left untouched).
    - HTTP errors (404, 403, ...), unreachable hosts, interrupted transfers and an HTML page where a binary file
      was expected (e.g. a Google Drive confirmation page) raise :class:`DownloadError` naming the URL and how
      to place the file by hand.
    - ``progress`` shows a tqdm bar (bytes) on stderr.
    """
    if not isinstance(url, str) or not url:
        raise ValueError(f'download_file: url must be a non-empty string, got {url!r}.')
    if not isinstance(destination, str) or not destination or destination.endswith(os.sep):
        raise ValueError(f'download_file: destination must be a file path, got {destination!r}.')
    expected = _check_sha256_argument(sha256)
    if os.path.isdir(destination):
        raise ValueError(f'download_file: destination {destination} is a folder; give the file path.')

    if os.path.isfile(destination) and (expected is None or file_sha256(destination) == expected):
        return destination

    def stream_and_verify(output) -> None:
        # Raising here, before the rename, is what deletes a corrupt download (see atomic_write).
        actual = _stream(url, output, destination, progress)
        if expected is not None and actual != expected:
            raise ChecksumError(f'sha256 mismatch for {url}: expected {expected}, got {actual}. The download was '
                                'deleted: the transfer was corrupted (run again) or the server now holds another '
                                'file (if its publisher replaced it on purpose, check it and record the new '
                                f'sha256); nothing was written to {os.path.abspath(destination)}.')

    return atomic_write(destination, stream_and_verify, suffix='.part')


def _stream(url: str, output, destination: str, progress: bool) -> str:
    """Copy the body of ``url`` into ``output``; returns its sha256."""
    request = urllib.request.Request(url, headers={'User-Agent': USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        raise DownloadError(f'HTTP {error.code} ({error.reason}) for {url}. The file moved or needs a login; '
                            + _manual_hint(url, destination)) from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, 'reason', error)
        raise DownloadError(f'Cannot reach {url} ({reason}). Check the network or a proxy, or '
                            + _manual_hint(url, destination)) from error

    with response:
        content_type = response.headers.get('Content-Type', '')
        if content_type.startswith('text/html') and not destination.endswith(('.html', '.htm')):
            raise DownloadError(f'{url} answered with an HTML page, not the file (a login, quota or confirmation '
                                'page, as Google Drive and Dropbox send for large files): '
                                + _manual_hint(url, destination))
        length = response.headers.get('Content-Length')
        total = int(length) if length and length.isdigit() else None
        digest = hashlib.sha256()
        received = 0
        from tqdm import tqdm

        with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, disable=not progress,
                  desc=os.path.basename(destination), leave=False) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as error:
                    raise DownloadError(f'Transfer of {url} broke off after {received} bytes ({error}). '
                                        'Run again, or ' + _manual_hint(url, destination)) from error
                if not chunk:
                    break
                output.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise DownloadError(f'Transfer of {url} ended after {received} of {total} bytes. Run again, or '
                            + _manual_hint(url, destination))
    return digest.hexdigest()
