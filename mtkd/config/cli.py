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
from typing import Any

import torch
import yaml

from mtkd.config.errors import OptionError, OptionProblem
from mtkd.config.validate import validate_options


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
            loaded = yaml.safe_load(handle)
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
        if isinstance(node, list):
            node[_list_index(node, path[-1], path[:-1])] = yaml.safe_load(value.strip())
        else:
            node[path[-1]] = yaml.safe_load(value.strip())
    return options


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


def init_distributed(launcher: str, backend: str | None) -> None:
    """Start the process group: NCCL on GPUs, gloo on CPU-only machines (so DDP also runs in CPU tests)."""
    import torch.distributed as dist
    from basicsr.utils.dist_util import init_dist

    if launcher == 'slurm':
        init_dist('slurm', backend=backend or 'nccl')
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count())
    dist.init_process_group(backend=backend or ('nccl' if torch.cuda.is_available() else 'gloo'))


def runtime_options(options: dict[str, Any], args: argparse.Namespace, root_path: str,
                    is_train: bool) -> dict[str, Any]:
    """Add what BasicSR's pipelines expect at run time (distributed info, seed, experiment paths)."""
    from basicsr.utils import set_random_seed
    from basicsr.utils.dist_util import get_dist_info

    if args.launcher == 'none':
        options['dist'] = False
    else:
        options['dist'] = True
        init_distributed(args.launcher, (options.get('dist_params') or {}).get('backend'))
    options['rank'], options['world_size'] = get_dist_info()
    if options.get('manual_seed') is None:
        options['manual_seed'] = random.randint(1, 10000)
    set_random_seed(options['manual_seed'] + options['rank'])
    options['auto_resume'] = args.auto_resume
    options['is_train'] = is_train
    options['root_path'] = root_path
    if args.debug and not options['name'].startswith('debug'):
        options['name'] = 'debug_' + options['name']
    if options['num_gpu'] == 'auto':
        options['num_gpu'] = torch.cuda.device_count()
    for dataset in options['datasets'].values():
        for key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file', 'teacher_cache_dir', 'teacher_cache_root'):
            if dataset.get(key) is not None:
                dataset[key] = _resolve(dataset[key], root_path)
    if options.get('teachers'):
        attach_teacher_cache(options, root_path)
    for key in ('pretrain_network_g', 'resume_state'):
        options['path'][key] = _resolve(options['path'][key], root_path)
    if is_train:
        experiments_root = os.path.join(root_path, 'experiments', options['name'])
        options['path'].update(experiments_root=experiments_root, models=os.path.join(experiments_root, 'models'),
                               training_states=os.path.join(experiments_root, 'training_states'),
                               log=experiments_root, visualization=os.path.join(experiments_root, 'visualization'))
        if 'debug' in options['name']:
            if options.get('val') is not None:
                options['val']['val_freq'] = 8
            options['logger']['print_freq'] = 1
            options['logger']['save_checkpoint_freq'] = 8
    else:
        results_root = os.path.join(root_path, 'results', options['name'])
        options['path'].update(results_root=results_root, log=results_root,
                               visualization=os.path.join(results_root, 'visualization'))
    return options


def attach_teacher_cache(options: dict[str, Any], root_path: str) -> None:
    """Datasets that read the teacher-output cache get the teachers (weights paths resolved), their names and
    fingerprints (weights sha256 included), which select the cache. The dataset builds a missing cache itself,
    after BasicSR has set up its logger (see ``TeacherPairedImageDataset``)."""
    from mtkd.teachers import fingerprint_specs, teacher_specs_from_options

    specs = teacher_specs_from_options(options['teachers'], root_path)
    cached = [dataset for dataset in options['datasets'].values() if 'teacher_fingerprints' in dataset]
    if not cached:
        return
    fingerprints = fingerprint_specs(specs)
    for dataset in cached:
        dataset['teachers'] = [dict(entry, weights=spec.weights) for entry, spec in zip(options['teachers'], specs)]
        if dataset.get('teacher_cache_content') == 'aggregate':
            from mtkd.aggregated_teachers import AGGREGATE_NAME, aggregate_fingerprint_from_options

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
    return runtime_options(validated.to_basicsr_dict(), args, root_path, is_train), args


def install_into_basicsr() -> None:
    """Make BasicSR's train/test pipelines use :func:`parse_options` (called by the entry points only)."""
    import basicsr.test
    import basicsr.train

    basicsr.train.parse_options = parse_options
    basicsr.test.parse_options = parse_options


def run_pipeline(pipeline, root_path: str) -> None:
    """Run a BasicSR pipeline on validated options; option and weight errors end in one clear message."""
    import sys

    from mtkd import resume
    from mtkd.optimization import NonFiniteLossError
    from mtkd.weights import WeightLoadError

    import signal

    install_into_basicsr()
    previous_sigint = None
    if getattr(pipeline, '__name__', '') == 'train_pipeline':  # exact resume and Ctrl-C: training only
        previous_sigint = resume.install()
    try:
        pipeline(root_path)
    except (OptionError, WeightLoadError) as error:
        print(f'mtkd: {error}', file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteLossError as error:
        print(f'mtkd: {error}', file=sys.stderr)
        raise SystemExit(3) from None
    finally:
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
        resume.LOOP.on_interrupt = None
