"""BasicSR's command line (``-opt``, ``--launcher``, ``--auto_resume``, ``--debug``, ``--force_yml``,
``--local_rank``/``--local-rank``), with the option file validated before anything is built.

:func:`parse_options` has BasicSR's signature and return value ``(opt, args)``; the entry points install it
into ``basicsr.train``/``basicsr.test`` so BasicSR's own pipelines run on validated options with every
default filled. Relative paths in the file are taken from the repository root, so runs do not depend on
the current directory.
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import sys
from typing import Any

import torch
import yaml

from mtkd.config.errors import OptionError, OptionProblem
from mtkd.config.validate import validate_options
from mtkd.config.yaml_io import DuplicateKeyError, load_yaml
from mtkd.training import runtime


def build_argument_parser() -> argparse.ArgumentParser:
    """BasicSR's arguments; ``--local-rank`` (torchrun) is accepted as well as ``--local_rank``."""
    parser = argparse.ArgumentParser(description='mtkd: train or test a model from a YAML option file.')
    parser.add_argument('-opt', type=str, required=True, help='path to the option YAML file')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true', help='resume from the newest training state')
    parser.add_argument('--debug', action='store_true', help='prefix the name with debug_ and log every iteration')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help='set by the launcher')
    parser.add_argument('--force_yml', nargs='+', default=None,
                        help='override options, e.g. train:ema_decay=0.999 datasets:train:batch_size_per_gpu=8')
    return parser


def load_option_file(path: str) -> dict[str, Any]:
    """Read a YAML option file; a missing file or a YAML syntax error is an :class:`OptionError`."""
    if not os.path.isfile(path):
        raise OptionError([OptionProblem((), f'option file {path} does not exist (options/ holds the examples)')])
    with open(path, encoding='utf-8') as handle:
        try:
            loaded = load_yaml(handle)
        except DuplicateKeyError as error:
            raise OptionError([OptionProblem((), str(error))], path) from None
        except yaml.YAMLError as error:
            raise OptionError([OptionProblem((), f'not valid YAML: {error}')], path) from None
    if not isinstance(loaded, dict):
        raise OptionError([OptionProblem((), 'an option file must be a mapping of keys')], path)
    return loaded


def apply_overrides(options: dict[str, Any], entries: list[str] | None) -> dict[str, Any]:
    """A copy of ``options`` with ``a:b:c=value`` overrides applied (values parsed as YAML).

    A key under a list is an index: ``teachers:0:self_ensemble=true`` sets the first teacher's switch.
    Unlike BasicSR, no ``eval``/``exec``; a misspelt key is then refused by validation like any other.
    """
    options = copy.deepcopy(options)
    for entry in entries or []:
        if '=' not in entry:
            raise OptionError([OptionProblem((), f"--force_yml entry '{entry}' must look like key:subkey=value")])
        keys, value = entry.split('=', 1)
        path = [key.strip() for key in keys.split(':')]
        node = options
        for depth, key in enumerate(path[:-1]):
            node = node[_list_index(node, key, path[:depth])] if isinstance(node, list) else node.setdefault(key, {})
            if not isinstance(node, (dict, list)):
                raise OptionError([OptionProblem(path, f"--force_yml: '{key}' is not a block or list of options")])
        parsed = _override_value(entry, path, value)
        if isinstance(node, list):
            node[_list_index(node, path[-1], path[:-1])] = parsed
        else:
            node[path[-1]] = parsed
    return options


def _override_value(entry: str, path: list[str], value: str) -> Any:
    """The YAML value of one ``--force_yml`` entry, or an :class:`OptionError` that shows how to write it."""
    try:
        return load_yaml(value.strip())
    except yaml.YAMLError as error:
        reason = str(error).splitlines()[0]
        raise OptionError([OptionProblem(path, f"--force_yml '{entry}': the value {value.strip()!r} is not valid YAML "
                                         f'({reason}); write a list as [1, 2], and quote text with special '
                                         "characters, e.g. name='a: b'")]) from None


def _list_index(node: list, key: str, list_path: list[str]) -> int:
    """``key`` as an index of the list ``node`` found at ``list_path`` (``-1`` counts from the end), or an error
    that names the valid indices."""
    try:
        index = int(key)
    except ValueError:
        index = None
    if index is None or not -len(node) <= index < len(node):
        raise OptionError([OptionProblem(list_path, f"--force_yml: '{':'.join(list_path)}' is a list of {len(node)} "
                                         f'entries: index it with 0 to {len(node) - 1}, not {key!r}')])
    return index


def _resolve(path: str | None, root: str) -> str | None:
    if path is None:
        return None
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(root, path)


def init_distributed(launcher: str, backend: str | None, timeout: int | None = None) -> None:
    """Start the process group: NCCL on GPUs, gloo on CPU-only machines (so DDP also runs in CPU tests), each
    collective bounded by ``timeout`` seconds (``dist_params.timeout``):
    :func:`mtkd.training.distributed.init_process_group`.

    ``backend: nccl`` (every shipped option file) on a machine without CUDA falls back to gloo with a note:
    NCCL needs GPUs, and the same option file should run a CPU smoke test under torchrun."""
    from mtkd.training.distributed import init_process_group

    init_process_group(launcher, {'backend': backend, 'timeout': timeout})


def resolve_num_gpu(num_gpu: int | str, launcher: str, source: str = '') -> tuple[int, list[str]]:
    """``(num_gpu, notes)``: the GPUs a run uses, or an :class:`OptionError` for a count this machine or this way of
    launching cannot honour. Without a launcher, BasicSR would wrap several GPUs in DataParallel (batch and
    workers silently multiplied, teachers left on ``cuda:0``): mtkd uses one GPU per process, so several GPUs
    need torchrun."""
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    torchrun = (f'torchrun --nproc-per-node {{n}} mtkd/train.py -opt {source or "<file>"} --launcher pytorch')
    if num_gpu == 'auto':
        if launcher == 'none' and available > 1:
            return 1, [f'num_gpu auto: using 1 of the {available} GPUs; to train on all of them, run '
                       + torchrun.format(n=available)]
        return min(available, 1) if launcher == 'none' else available, []
    if num_gpu > 0 and available == 0:
        raise OptionError([OptionProblem(('num_gpu',), f'num_gpu is {num_gpu} but this machine has no CUDA GPU '
                                         '(torch.cuda.is_available() is False): set num_gpu: 0 (CPU) or auto')], source)
    if num_gpu > available:
        raise OptionError([OptionProblem(('num_gpu',), f'num_gpu is {num_gpu} but this machine has {available} CUDA '
                                         f'GPU(s): set num_gpu: auto or at most {available}')], source)
    if num_gpu > 1 and launcher == 'none':
        raise OptionError([OptionProblem(('num_gpu',), f'num_gpu {num_gpu} without a launcher: mtkd runs one process '
                                         'per GPU (DistributedDataParallel, never DataParallel); run '
                                         + torchrun.format(n=num_gpu) + ', or set num_gpu: 1')], source)
    return num_gpu, []


def run_folders(options: dict[str, Any], root_path: str, is_train: bool) -> dict[str, str]:
    """BasicSR's ``path`` entries of the run's own folders: ``path.experiments_root`` (training) or
    ``path.results_root`` (testing) when set (relative to the repository root), else ``experiments/<name>`` or
    ``results/<name>``."""
    if is_train:
        folder = _resolve(options['path'].get('experiments_root'), root_path) or \
            os.path.join(root_path, 'experiments', options['name'])
        return dict(experiments_root=folder, models=os.path.join(folder, 'models'),
                    training_states=os.path.join(folder, 'training_states'), log=folder,
                    visualization=os.path.join(folder, 'visualization'))
    folder = _resolve(options['path'].get('results_root'), root_path) or \
        os.path.join(root_path, 'results', options['name'])
    return dict(results_root=folder, log=folder, visualization=os.path.join(folder, 'visualization'))


def writable_folder_problem(folder: str, key: str) -> OptionProblem | None:
    """A problem when ``folder`` cannot be created or written (read-only disk, no permission, a file in the way)."""
    existing = folder
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        reason = f'{existing} is a file, not a folder'
    elif hasattr(os, 'statvfs') and os.statvfs(existing).f_flag & os.ST_RDONLY:
        reason = f'{existing} is on a read-only file system'
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f'{existing} is not writable (no permission)'
    else:
        return None
    return OptionProblem(('path', key), f'cannot write the run\'s folder {folder}: {reason}; make it writable or '
                         f'set path.{key} to a folder you can write')


def runtime_options(options: dict[str, Any], args: argparse.Namespace, root_path: str,
                    is_train: bool) -> dict[str, Any]:
    """Add what BasicSR's pipelines expect at run time (distributed info, seed, experiment paths), after checking
    what only the machine can tell: GPUs, writable folders, and the data itself (:mod:`mtkd.data.preflight`)."""
    from basicsr.utils import set_random_seed
    from basicsr.utils.dist_util import get_dist_info

    from mtkd.data.preflight import check_datasets

    options['num_gpu'], notes = resolve_num_gpu(options['num_gpu'], args.launcher, args.opt)
    runtime.configure(options)  # fp32/TF32 from fast_matmul, data-loader defaults for this machine
    if args.debug and not options['name'].startswith('debug'):
        options['name'] = 'debug_' + options['name']
    folders = run_folders(options, root_path, is_train)
    options['path'].pop('results_root' if is_train else 'experiments_root', None)  # BasicSR creates every folder
    options['path'].update(folders)
    root_key = 'experiments_root' if is_train else 'results_root'
    problem = writable_folder_problem(options['path'][root_key], root_key)
    if problem is not None:
        raise OptionError([problem], args.opt)
    for dataset in options['datasets'].values():
        for key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file', 'teacher_cache_dir', 'teacher_cache_root'):
            if dataset.get(key) is not None:
                dataset[key] = _resolve(dataset[key], root_path)
    check_datasets(options)
    if args.launcher == 'none':
        options['dist'] = False
    else:
        options['dist'] = True
        dist_params = options.get('dist_params') or {}
        init_distributed(args.launcher, dist_params.get('backend'), dist_params.get('timeout'))
    options['rank'], options['world_size'] = get_dist_info()
    if options.get('manual_seed') is None:
        options['manual_seed'] = random.randint(1, 10000)
    set_random_seed(options['manual_seed'] + options['rank'])
    options['auto_resume'] = args.auto_resume
    options['is_train'] = is_train
    options['root_path'] = root_path
    if options.get('teachers'):
        attach_teacher_cache(options, root_path)
    for key in ('pretrain_network_g', 'resume_state'):
        options['path'][key] = _resolve(options['path'][key], root_path)
    if is_train and 'debug' in options['name']:
        if options.get('val') is not None:
            options['val']['val_freq'] = 8
        options['logger']['print_freq'] = 1
        options['logger']['save_checkpoint_freq'] = 8
    if options['rank'] == 0:
        for note in notes:
            print(f'mtkd: note: {note}', file=sys.stderr)
    return options


def attach_teacher_cache(options: dict[str, Any], root_path: str) -> None:
    """Datasets that read the teacher-output cache get the teachers (weights paths resolved), their names and
    fingerprints (weights sha256 included), which select the cache. The dataset builds a missing cache itself,
    after BasicSR has set up its logger (see ``TeacherPairedImageDataset``)."""
    from mtkd.teachers.ensemble import fingerprint_specs, teacher_specs_from_options

    specs = teacher_specs_from_options(options['teachers'], root_path)
    cached = [dataset for dataset in options['datasets'].values() if 'teacher_fingerprints' in dataset]
    if not cached:
        return
    fingerprints = fingerprint_specs(specs)
    for dataset in cached:
        dataset['teachers'] = [dict(entry, weights=spec.weights) for entry, spec in zip(options['teachers'], specs)]
        if dataset.get('teacher_cache_content') == 'aggregate':
            from mtkd.teachers.aggregated import AGGREGATE_NAME, aggregate_fingerprint_from_options

            aggregator = dict(options['aggregator'])
            aggregator['weights'] = _resolve(aggregator.get('weights'), root_path)
            dataset['aggregator'] = aggregator
            dataset['teacher_names'] = [AGGREGATE_NAME]
            dataset['teacher_fingerprints'] = aggregate_fingerprint_from_options(dataset['teachers'], aggregator)
        else:
            dataset['teacher_names'] = [spec.name for spec in specs]
            dataset['teacher_fingerprints'] = fingerprints


def parse_options(root_path: str, is_train: bool = True, argv: list[str] | None = None):
    """Drop-in for ``basicsr.utils.options.parse_options``: returns ``(opt, args)`` with validated options."""
    args = build_argument_parser().parse_args(argv)
    raw = apply_overrides(load_option_file(args.opt), args.force_yml)
    validated = validate_options(raw, is_train=is_train, root=root_path, source=args.opt)
    options = runtime_options(validated.to_basicsr_dict(), args, root_path, is_train)
    if options['rank'] == 0:
        for note in validated.notes:
            print(f'mtkd: note: {note}', file=sys.stderr)
    return options, args


def install_into_basicsr() -> None:
    """Make BasicSR's train/test pipelines use :func:`parse_options` (called by the entry points only)."""
    import basicsr.test
    import basicsr.train

    basicsr.train.parse_options = parse_options
    basicsr.test.parse_options = parse_options


def run_pipeline(pipeline, root_path: str) -> None:
    """Run a BasicSR pipeline on validated options. A user error (:class:`mtkd.utils.errors.MtkdError`: options,
    data, weights, states, caches) ends in its message alone and exit status 2 (3 for a run stopped by
    non-finite losses); ``MTKD_TRACEBACK=1`` or ``--debug`` keeps the traceback."""
    import signal

    from mtkd.training import resume
    from mtkd.utils.errors import exit_on_user_error

    install_into_basicsr()
    previous_sigint = None
    if getattr(pipeline, '__name__', '') == 'train_pipeline':  # exact resume and Ctrl-C: training only
        previous_sigint = resume.install()
    try:
        with exit_on_user_error():
            pipeline(root_path)
    finally:
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
        resume.LOOP.on_interrupt = None
