"""What to run to get a missing weights file: the exact command, not a list of places to look.

- weights under ``experiments/<name>/`` are trained by mtkd: the hint names the option file that trains them;
- files of ``pretrained/manifest.yaml``: ``scripts/download_pretrained.py --only <name>`` (with
  ``--allow-unverified`` where nobody published a checksum), or the manual step (RCAN's zip, Drive folders);
- anything else: the generic advice.
"""
from __future__ import annotations

import glob
import os

GENERIC_WEIGHTS_HINT = ('link the shared weights with `make link-shared` or fetch official ones with '
                        '`python scripts/download_pretrained.py --only <file name>` (pretrained/README.md)')


def training_option_files(experiment: str, root: str) -> list[str]:
    """Option files under ``<root>/options`` that train the experiment called ``experiment`` (their ``name:``)."""
    import yaml

    found = []
    for path in sorted(glob.glob(os.path.join(root, 'options', '**', '*.yml'), recursive=True)):
        if os.path.basename(path).startswith('test_'):
            continue
        try:
            with open(path, encoding='utf-8') as handle:
                text = handle.read()
        except OSError:
            continue
        if f'name: {experiment}' not in text:  # cheap filter before parsing
            continue
        try:
            options = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        if isinstance(options, dict) and options.get('name') == experiment and 'train' in options:
            found.append(os.path.relpath(path, root))
    return found


def weights_hint(path: str, root: str) -> str:
    """How to obtain the missing weights file ``path`` (as written in the option file; relative to ``root``)."""
    parts = os.path.normpath(path).split(os.sep)
    if 'experiments' in parts[:-1]:
        index = parts.index('experiments')
        if index + 1 < len(parts) - 1:
            experiment = parts[index + 1]
            trainers = training_option_files(experiment, root)
            if trainers:
                commands = ' or '.join(f'`python mtkd/train.py -opt {trainer}`' for trainer in trainers)
                return f'these weights are trained with mtkd, not downloaded: run {commands} first'
            return (f"these weights are written by training an experiment named '{experiment}': train it first "
                    '(no option file in options/ has that name)')
    entry = manifest_entry(os.path.basename(path), root)
    if entry is None:
        return GENERIC_WEIGHTS_HINT
    destination = os.path.join('pretrained', 'official', entry.name)
    if entry.manual:
        note = f' ({entry.notes})' if entry.notes else ''
        return (f'{entry.name} has no direct download: get it by hand from {entry.download_page}{note} and place it '
                f'at {destination}')
    command = f'python scripts/download_pretrained.py --only {entry.name}'
    if entry.sha256 is None:
        return (f'fetch it with `{command} --allow-unverified` (no checksum was published for this file: the script '
                'prints its sha256 for you to check), or `make link-shared` where ../shared has it')
    return f'fetch it with `{command}` (checked against its sha256), or `make link-shared` where ../shared has it'


def manifest_entry(name: str, root: str):
    """The ``pretrained/manifest.yaml`` entry of the file called ``name``, or None (also when the manifest is
    unreadable: a hint must never fail)."""
    from mtkd.weights.pretrained import ManifestError, load_manifest

    manifest = os.path.join(root, 'pretrained', 'manifest.yaml')
    if not os.path.isfile(manifest):
        return None
    try:
        entries = load_manifest(manifest)
    except (ManifestError, OSError, ValueError):
        return None
    return next((entry for entry in entries if entry.name == name), None)


__all__ = ['GENERIC_WEIGHTS_HINT', 'manifest_entry', 'training_option_files', 'weights_hint']
