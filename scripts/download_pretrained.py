#!/usr/bin/env python
"""Download and verify the official pretrained checkpoints listed in pretrained/manifest.yaml.

Examples:
    python scripts/download_pretrained.py --list
    python scripts/download_pretrained.py                       # every file with a direct link
    python scripts/download_pretrained.py --only IMDN_x4.pth RFDN_AIM.pth
    python scripts/download_pretrained.py --only 002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4.pth --allow-unverified

Exit status: 0 when every requested file is present and verified (or kept unverified on request); 1 when any
download or check failed, or when a file named with --only is missing; manual files that are absent only warn
when no --only was given. See pretrained/README.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mtkd.weights.pretrained import (DEFAULT_DESTINATION, DEFAULT_MANIFEST, fetch_pretrained,  # noqa: E402
                                     load_manifest, select)


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--list', action='store_true', help='list the manifest and what is present, download nothing')
    parser.add_argument('--only', nargs='+', metavar='NAME', help='file names to fetch (default: all)')
    parser.add_argument('--dest', default=DEFAULT_DESTINATION, help='destination folder (default: %(default)s)')
    parser.add_argument('--manifest', default=DEFAULT_MANIFEST, help='manifest file (default: %(default)s)')
    parser.add_argument('--base-url', help='fetch <BASE_URL>/<name> instead of each entry\'s url (a mirror)')
    parser.add_argument('--allow-unverified', action='store_true',
                        help='keep downloads whose sha256 the manifest does not record (the hash is printed)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    return parser.parse_args(argv)


def list_manifest(arguments) -> int:
    entries = select(load_manifest(arguments.manifest), arguments.only)
    print(f'{"name":48} {"network":40} {"scale":>7} {"key_format":14} {"sha256":8} {"present":8} source')
    for entry in entries:
        present = 'yes' if os.path.isfile(os.path.join(arguments.dest, entry.name)) else 'no'
        source = entry.url or f'manual: {entry.download_page}'
        scale = ','.join(map(str, entry.scale)) if isinstance(entry.scale, list) else str(entry.scale)
        print(f'{entry.name:48} {entry.network[:40]:40} {scale:>7} {entry.key_format:14} '
              f'{"yes" if entry.verifiable else "no":8} {present:8} {source}')
    return 0


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    if arguments.list:
        return list_manifest(arguments)
    results = fetch_pretrained(arguments.only, arguments.dest, arguments.manifest, arguments.base_url,
                               arguments.allow_unverified, progress=not arguments.no_progress)
    failed = False
    for result in results:
        print(f'{result.status:10} {result.name}: {result.message}' + (f' [sha256 {result.sha256}]'
                                                                        if result.sha256 else ''))
        if result.status == 'failed' or (result.status == 'missing' and arguments.only):
            failed = True
    counts = {status: sum(r.status == status for r in results) for status in sorted({r.status for r in results})}
    print('summary: ' + ', '.join(f'{count} {status}' for status, count in counts.items()) + f' (in {arguments.dest})')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
