"""Validate an option dict against the schema before anything is built; report every problem at once.

Checks, in order: unknown keys (with the nearest valid name), types and ranges (pydantic), the arguments
of every ``type:`` block against the signature of what it names (archs, losses, metrics, optimizers,
schedulers), then the combinations a schema cannot express (scale of the data vs the network, phases,
files that must exist). The input dict is never modified.
"""
from __future__ import annotations

import copy
import inspect
import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from mtkd.config.errors import OptionError, OptionProblem, nearest_name
from mtkd.config.hints import weights_hint
from mtkd.config.optim_ranges import schedule_problems
from mtkd.config.schema import (DATASET_OPTION_SCHEMAS, MODEL_OPTION_SCHEMAS, SUPPORTED_OPTIMIZERS,
                                SUPPORTED_SCHEDULERS, CallableBlock, DatasetOptions, FeatureLossOptions, LossOptions,
                                MetricOptions,
                                NetworkOptions, OptimizerOptions, SchedulerOptions, SROptions, StrictBlock,
                                TrainOptions)

#: How to get each kind of data, for messages about missing files.
DATA_HINT = ('link the shared data with `make link-shared`, build a benchmark with '
             '`python scripts/prepare_benchmark.py`, or DIV2K with `python scripts/prepare_div2k.py` '
             '(datasets/README.md)')


@dataclass(frozen=True)
class ValidatedOptions:
    """Validated options: the typed schema, the typed datasets, and BasicSR's dict view.

    ``notes`` are settings that are legal but probably unintended (a metric's ``crop_border`` other than the
    scale, a milestone after the last iteration): the entry points print them, they refuse nothing."""
    schema: SROptions
    datasets: dict[str, DatasetOptions]
    is_train: bool
    notes: tuple[str, ...] = ()

    def to_basicsr_dict(self) -> dict[str, Any]:
        """A fresh plain dict with every default filled, in BasicSR's layout (safe for BasicSR to mutate)."""
        options = self.schema.model_dump(mode='python')
        # BasicSR's SingleImageDataset opens `meta_info_file` whenever the key is present: leave an unset one out.
        options['datasets'] = {phase: dataset.model_dump(mode='python', exclude={'meta_info_file'}
                                                         if getattr(dataset, 'meta_info_file', 1) is None else None)
                               for phase, dataset in self.datasets.items()}
        return options


def _model_class(annotation) -> type[BaseModel] | None:
    """The BaseModel subclass inside an annotation such as ``X | None``."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_class(argument)
        if found is not None and typing.get_origin(annotation) is not dict:
            return found
    return None


def _dict_value_class(annotation) -> type[BaseModel] | None:
    """For ``dict[str, X] | None``: X when it is a BaseModel subclass."""
    if typing.get_origin(annotation) is dict:
        return _model_class(typing.get_args(annotation)[1])
    for argument in typing.get_args(annotation):
        found = _dict_value_class(argument)
        if found is not None:
            return found
    return None


def _list_item_class(annotation) -> type[BaseModel] | None:
    """For ``list[X] | None``: X when it is a BaseModel subclass."""
    if typing.get_origin(annotation) is list:
        return _model_class(typing.get_args(annotation)[0])
    for argument in typing.get_args(annotation):
        found = _list_item_class(argument)
        if found is not None:
            return found
    return None


def split_unknown_keys(raw: Any, schema: type[BaseModel], location: tuple = ()) -> tuple[Any, list[OptionProblem]]:
    """``raw`` without the keys ``schema`` (recursively) does not know, and a problem for each such key.

    Validation goes on with the pruned copy, so one typo does not hide the other problems of the file.
    """
    if not isinstance(raw, Mapping):
        return raw, []
    pruned, problems = {}, []
    fields = schema.model_fields
    for key, value in raw.items():
        if key not in fields:
            if issubclass(schema, CallableBlock):
                pruned[key] = value  # arguments: checked against the signature of what `type` names
                continue
            suggestion = nearest_name(key, fields)
            hint = f"did you mean '{suggestion}'?" if suggestion else f'valid keys: {", ".join(fields)}'
            problems.append(OptionProblem(location + (key,), f"unknown key '{key}'; {hint}"))
            continue
        annotation = fields[key].annotation
        if (child := _dict_value_class(annotation)) is not None and isinstance(value, Mapping):
            value = dict(value)
            for name, item in value.items():
                value[name], found = split_unknown_keys(item, child, location + (key, name))
                problems += found
        elif (child := _list_item_class(annotation)) is not None and isinstance(value, list):
            value = list(value)
            for index, item in enumerate(value):
                value[index], found = split_unknown_keys(item, child, location + (key, index))
                problems += found
        elif (child := _model_class(annotation)) is not None:
            value, found = split_unknown_keys(value, child, location + (key,))
            problems += found
        pruned[key] = value
    return pruned, problems


def pydantic_problems(error: ValidationError, location: tuple = ()) -> list[OptionProblem]:
    """Readable problems from a pydantic error (unknown keys are reported by :func:`split_unknown_keys`)."""
    problems = []
    for item in error.errors():
        if item['type'] == 'extra_forbidden':
            continue
        where = location + tuple(part for part in item['loc'] if not str(part).startswith('function-'))
        if item['type'] == 'missing':
            message = 'required key is missing'
        elif item['type'] == 'value_error':  # our own validators: their message is the whole story
            message = item['msg'].removeprefix('Value error, ')
        else:
            message = f"{item['msg']} (got {item.get('input')!r})"
        problems.append(OptionProblem(where, message))
    return problems


def _iter_callable_blocks(node: Any, location: tuple = ()) -> Iterator[tuple[tuple, CallableBlock]]:
    """Every ``type:`` block in a validated schema tree, with its location."""
    if isinstance(node, CallableBlock):
        yield location, node
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _iter_callable_blocks(getattr(node, name), location + (name,))
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from _iter_callable_blocks(value, location + (key,))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _iter_callable_blocks(value, location + (index,))


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def signature_problems(target, arguments: Mapping, location: tuple, what: str,
                       skip: tuple[str, ...] = ()) -> list[OptionProblem]:
    """Arguments that ``target`` does not accept, and required arguments that are missing.

    ``**kwargs`` does not count as accepting a name: a key swallowed by ``**kwargs`` would be silently ignored.
    """
    parameters = {name: parameter for name, parameter in inspect.signature(target).parameters.items()
                  if name not in ('self',) + skip
                  and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)}
    problems = []
    for key, value in arguments.items():
        default = parameters[key].default if key in parameters else None
        if (isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool)
                and _looks_numeric(value)):
            problems.append(OptionProblem(location + (key,), f"'{value}' is text, not a number: YAML reads an "
                                          "exponent without a decimal point as a string; write e.g. 1.0e-8"))
        if key not in parameters:
            suggestion = nearest_name(key, parameters)
            hint = f"did you mean '{suggestion}'?" if suggestion else f'it takes: {", ".join(parameters)}'
            problems.append(OptionProblem(location + (key,), f"{what} does not take '{key}'; {hint}"))
    for name, parameter in parameters.items():
        if parameter.default is parameter.empty and name not in arguments:
            problems.append(OptionProblem(location + (name,), f'{what} requires this argument'))
    return problems


def _registry_problems(registry, block: CallableBlock, location: tuple, kind: str,
                       skip: tuple[str, ...] = ()) -> list[OptionProblem]:
    if block.type not in registry:
        suggestion = nearest_name(block.type, list(registry.keys()))
        hint = f"did you mean '{suggestion}'?" if suggestion else f'registered: {", ".join(sorted(registry.keys()))}'
        return [OptionProblem(location + ('type',), f"unknown {kind} '{block.type}'; {hint}")]
    return signature_problems(registry.get(block.type), block.arguments(), location, f"{kind} '{block.type}'", skip)


def callable_problems(options: SROptions) -> list[OptionProblem]:
    """Check every ``type:`` block against what it names."""
    from basicsr.metrics import METRIC_REGISTRY  # noqa: F401 - imports register the metrics
    from basicsr.models import lr_scheduler
    from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY

    problems = []
    for location, block in _iter_callable_blocks(options):
        if isinstance(block, NetworkOptions):
            found = _registry_problems(ARCH_REGISTRY, block, location, 'arch')
            problems += found or network_build_problems(ARCH_REGISTRY.get(block.type), block, location)
        elif isinstance(block, (LossOptions, FeatureLossOptions)):
            problems += _registry_problems(LOSS_REGISTRY, block, location, 'loss')
            if isinstance(block, FeatureLossOptions) and len(block.student_layers) != len(block.teacher_layers):
                problems.append(OptionProblem(location, f'{len(block.student_layers)} student_layers but '
                                              f'{len(block.teacher_layers)} teacher_layers: give one teacher layer '
                                              'per student layer'))
        elif isinstance(block, MetricOptions):
            problems += _registry_problems(METRIC_REGISTRY, block, location, 'metric', skip=('img', 'img2'))
        elif isinstance(block, OptimizerOptions):
            if block.type not in SUPPORTED_OPTIMIZERS:
                problems.append(OptionProblem(location + ('type',), f"unsupported optimizer '{block.type}'; "
                                              f'choose one of {", ".join(SUPPORTED_OPTIMIZERS)}'))
            else:
                problems += signature_problems(optimizer_class(block.type), block.arguments(), location,
                                               f"optimizer '{block.type}'", skip=('params', 'lr'))
        elif isinstance(block, SchedulerOptions):
            if block.type not in SUPPORTED_SCHEDULERS:
                problems.append(OptionProblem(location + ('type',), f"unsupported scheduler '{block.type}'; "
                                              f'choose one of {", ".join(SUPPORTED_SCHEDULERS)}'))
            else:
                scheduler = (lr_scheduler.CosineAnnealingRestartLR if block.type == 'CosineAnnealingRestartLR'
                             else lr_scheduler.MultiStepRestartLR)
                problems += signature_problems(scheduler, block.arguments(), location, f"scheduler '{block.type}'",
                                               skip=('optimizer', 'last_epoch'))
    return problems


#: ``(type, arguments) -> reason or None`` of the networks built by :func:`network_build_problems`.
_BUILD_FAILURES: dict[tuple[str, str], str | None] = {}


def network_build_problems(arch: type, block: NetworkOptions, location: tuple) -> list[OptionProblem]:
    """An arch that refuses its arguments when it is built (e.g. an upsampler without scale 5), found now rather
    than after the data and teachers are set up."""
    key = (block.type, repr(sorted(block.arguments().items(), key=lambda item: item[0])))
    if key not in _BUILD_FAILURES:
        _BUILD_FAILURES[key] = _build_failure(arch, block.arguments())
    reason = _BUILD_FAILURES[key]
    return [OptionProblem(location, f'{block.type} cannot be built with these arguments: {reason}')] if reason else []


def _build_failure(arch: type, arguments: dict) -> str | None:
    """Why ``arch(**arguments)`` fails, or None. Built on the ``meta`` device (no memory, no time); an arch that
    cannot be built there (SwinIR reads values at construction) is built on the CPU."""
    for device in ('meta', 'cpu'):
        try:
            with torch.device(device):
                arch(**arguments)
            return None
        except Exception as error:  # noqa: BLE001 - any refusal by the arch is the user's to see
            text = str(error).strip()
            if device == 'meta' and 'meta' in text.lower():
                continue  # a limit of the meta device, not of the arguments
            return text.splitlines()[0] if text else type(error).__name__
    return None


def optimizer_class(name: str) -> type:
    """The class an ``optim_g.type`` names: torch's ``Adam``/``AdamW``, or mtkd's ``Adan``
    (:mod:`mtkd.training.adan`)."""
    if name == 'Adan':
        from mtkd.training.adan import Adan

        return Adan
    return getattr(torch.optim, name)


def network_scale_problems(network: NetworkOptions, scale: int, location: tuple) -> list[OptionProblem]:
    """A network whose upscale factor differs from the data's scale."""
    arguments = network.arguments()
    for key in ('upscale', 'scale', 'upscale_factor'):
        if key in arguments and arguments[key] != scale:
            return [OptionProblem(location + (key,), f'{network.type} upscales by {arguments[key]} but the data '
                                  f'has scale {scale}; set both to the same factor')]
    return []


def _phase(key: str) -> str:
    return key.split('_')[0]


def dataset_problems(raw_datasets: Mapping, scale: int, is_train: bool) -> tuple[dict, list[OptionProblem]]:
    """Validate each dataset block with its type's schema; check phases and scales."""
    datasets, problems = {}, []
    for key, raw in raw_datasets.items():
        location = ('datasets', key)
        phase = _phase(key)
        if phase not in ('train', 'val', 'test'):
            problems.append(OptionProblem(location, f"dataset key '{key}' must be 'train', 'val', 'val_<n>', "
                                          "'test' or 'test_<n>'"))
            continue
        if not isinstance(raw, Mapping):
            problems.append(OptionProblem(location, f'expected a block of options, got {raw!r}'))
            continue
        dataset_type = raw.get('type')
        if dataset_type not in DATASET_OPTION_SCHEMAS:
            suggestion = nearest_name(str(dataset_type), DATASET_OPTION_SCHEMAS)
            hint = f"did you mean '{suggestion}'?" if suggestion else f'choose one of {", ".join(DATASET_OPTION_SCHEMAS)}'
            problems.append(OptionProblem(location + ('type',), f"unknown dataset type '{dataset_type}'; {hint}"))
            continue
        schema = DATASET_OPTION_SCHEMAS[dataset_type]
        raw, unknown = split_unknown_keys(raw, schema, location)
        problems += unknown
        if raw.get('scale') is not None and raw.get('scale') != scale:
            problems.append(OptionProblem(location + ('scale',), f"dataset scale {raw['scale']} differs from the "
                                          f'top-level scale {scale}; remove it or make them equal'))
        filled = dict(raw, phase=phase, scale=scale)
        try:
            dataset = schema.model_validate(filled)
        except ValidationError as error:
            problems += pydantic_problems(error, location)
            continue
        if phase == 'train' and getattr(dataset, 'optional', False):
            problems.append(OptionProblem(location + ('optional',), 'only validation and test datasets can be '
                                          'optional; a training set must exist'))
        if phase == 'train':
            gt_size = getattr(dataset, 'gt_size', 0)
            if gt_size is None:
                problems.append(OptionProblem(location + ('gt_size',), 'training needs gt_size (the HR patch size)'))
            elif gt_size % scale:
                problems.append(OptionProblem(location + ('gt_size',), f'gt_size {gt_size} is not a multiple of '
                                              f'scale {scale}'))
        datasets[key] = dataset
    phases = {_phase(key) for key in raw_datasets}
    if is_train and 'train' not in phases:
        problems.append(OptionProblem(('datasets',), "training needs a 'train' dataset"))
    if not is_train and not raw_datasets:
        problems.append(OptionProblem(('datasets',), 'testing needs at least one dataset (test_1: ...)'))
    return datasets, problems


def folder_problem(path: str, resolved: str, backend: str = 'disk') -> str | None:
    """Why a dataset folder cannot be read (missing, or an empty image folder), or None."""
    if not os.path.isdir(resolved):
        return f'folder {path} does not exist'
    if backend == 'disk' and not any(os.scandir(resolved)):
        return f'folder {path} is empty'
    return None


def absent_optional_datasets(datasets: dict[str, DatasetOptions], root: str) -> tuple[list[str], list[str]]:
    """``(keys, notes)``: the validation/test datasets marked ``optional: true`` whose folders are missing or empty
    (Urban100 and Manga109 in the test files, which users build themselves): they are left out of the run."""
    keys, notes = [], []
    for key, dataset in datasets.items():
        if not getattr(dataset, 'optional', False):
            continue
        for field in ('dataroot_gt', 'dataroot_lq'):
            path = getattr(dataset, field, None)
            problem = path and folder_problem(path, _resolve_path(path, root), dataset.io_backend.type)
            if problem:
                keys.append(key)
                notes.append(f"datasets.{key} ('{dataset.name}') left out (optional: true): {problem}; build it with "
                             '`python scripts/prepare_benchmark.py --hr-dir <its HR folder> --out-dir datasets '
                             f'--name {dataset.name}` (datasets/README.md)')
                break
    return keys, notes


def file_problems(options: SROptions, datasets: Mapping[str, DatasetOptions], root: str) -> list[OptionProblem]:
    """Files and folders that must exist: data roots, meta files, weights, states."""
    def resolve(path: str) -> str:
        return _resolve_path(path, root)

    problems = []
    for key, dataset in datasets.items():
        for field in ('dataroot_gt', 'dataroot_lq'):
            path = getattr(dataset, field, None)
            if path is None:
                continue
            problem = folder_problem(path, resolve(path), dataset.io_backend.type)
            if problem:
                problems.append(OptionProblem(('datasets', key, field), f'{problem}; {DATA_HINT}'))
        meta = getattr(dataset, 'meta_info_file', None)
        if meta is not None and not os.path.isfile(resolve(meta)):
            problems.append(OptionProblem(('datasets', key, 'meta_info_file'), f'file {meta} does not exist'))
    weights = options.path.pretrain_network_g
    if weights is not None and not os.path.isfile(resolve(weights)):
        problems.append(OptionProblem(('path', 'pretrain_network_g'), f'weights {weights} not found; '
                                      f'{weights_hint(weights, root)}'))
    state = options.path.resume_state
    if state is not None and not os.path.isfile(resolve(state)):
        problems.append(OptionProblem(('path', 'resume_state'), f'training state {state} not found'))
    for location, block in _iter_callable_blocks(options):
        if isinstance(block, MetricOptions) and block.arguments().get('optional'):
            continue  # an optional metric without its weights is left out at run time, with a warning
        for key, value in block.arguments().items():
            if key.endswith('_weights') and isinstance(value, str) and not os.path.isfile(resolve(value)):
                problems.append(OptionProblem(location + (key,), f'{key} file {value} not found; '
                                              + WEIGHT_FILE_HINTS.get(key, 'give the path of an existing file')))
    return problems


#: How to get the weight files that loss and metric blocks name (``<something>_weights: <path>``).
WEIGHT_FILE_HINTS = {
    'vgg_weights': ("torchvision's VGG19 (vgg19-dcbd5c4.pth) cannot be downloaded by mtkd: fetch "
                    'https://download.pytorch.org/models/vgg19-dcbd5c4.pth on a machine with internet and copy it '
                    'there, or use the option file without the VGG term'),
}


def teacher_problems(options: SROptions, check_files: bool, root: str) -> list[OptionProblem]:
    """Teachers: unique names, the data's scale, a known key format, weights that exist."""
    from mtkd.weights.formats import CONVERTERS

    teachers = getattr(options, 'teachers', None) or []
    problems, seen = [], set()
    for index, teacher in enumerate(teachers):
        location = ('teachers', index)
        if teacher.name in seen:
            problems.append(OptionProblem(location + ('name',), f"teacher name '{teacher.name}' is used twice"))
        seen.add(teacher.name)
        problems += network_scale_problems(teacher.network, options.scale, location + ('network',))
        if teacher.key_format not in CONVERTERS:
            problems.append(OptionProblem(location + ('key_format',), f"unknown key format '{teacher.key_format}'; "
                                          f'choose one of {", ".join(sorted(CONVERTERS))}'))
        if check_files:
            if teacher.weights is None:
                problems.append(OptionProblem(location + ('weights',), f"teacher '{teacher.name}' has no weights"))
            elif not os.path.isfile(_resolve_path(teacher.weights, root)):
                problems.append(OptionProblem(location + ('weights',), f"weights {teacher.weights} of teacher "
                                              f"'{teacher.name}' not found; "
                                              f'{weights_hint(teacher.weights, root)}'))
    return problems


def _resolve_path(path: str, root: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(root, path)


def semantic_problems(options: SROptions, is_train: bool) -> list[OptionProblem]:
    """Combinations that single fields cannot express."""
    from mtkd.weights.formats import CONVERTERS

    problems = network_scale_problems(options.network_g, options.scale, ('network_g',))
    if options.path.key_format_g not in CONVERTERS:
        problems.append(OptionProblem(('path', 'key_format_g'), f"unknown key format '{options.path.key_format_g}'; "
                                      f'choose one of {", ".join(sorted(CONVERTERS))}'))
    if is_train and options.train is None:
        problems.append(OptionProblem(('train',), 'training needs a train block (optim_g, scheduler, total_iter)'))
    if (is_train and type(options.train) is TrainOptions and options.train.pixel_opt is None
            and options.train.perceptual_opt is None and options.train.edge_opt is None):
        problems.append(OptionProblem(('train',), 'no loss: set pixel_opt, perceptual_opt and/or edge_opt'))
    if (is_train and options.train is not None and options.train.accumulate > 1
            and options.logger.save_checkpoint_freq % options.train.accumulate):
        problems.append(OptionProblem(('logger', 'save_checkpoint_freq'), f'with train.accumulate '
                                      f'{options.train.accumulate}, checkpoints must fall at the end of an '
                                      f'accumulation window (a multiple of {options.train.accumulate}) so that a '
                                      'resumed run continues exactly'))
    if not is_train and options.val is None:
        problems.append(OptionProblem(('val',), 'testing needs a val block (metrics, save_img)'))
    return problems


def validation_notes(options: SROptions) -> list[str]:
    """Legal settings that usually are mistakes, to print (not refuse): a metric's ``crop_border`` that differs
    from the scale (the field's protocol crops ``scale`` pixels)."""
    notes = []
    for name, metric in ((options.val.metrics if options.val is not None else None) or {}).items():
        crop_border = metric.arguments().get('crop_border')
        if crop_border is not None and crop_border != options.scale:
            notes.append(f'val.metrics.{name}.crop_border is {crop_border} but the scale is {options.scale}: the SR '
                         f'papers crop {options.scale} pixels (crop_border = scale); numbers will not be comparable')
    return notes


def schema_for(model_type: str) -> type[SROptions]:
    """The option schema registered for ``model_type`` (SROptions when it registered none)."""
    return MODEL_OPTION_SCHEMAS.get(model_type, SROptions)


def validate_options(raw: Mapping, *, is_train: bool, check_files: bool = True, root: str = '.',
                     source: str = '') -> ValidatedOptions:
    """Validate an option dict (as loaded from YAML); raise :class:`OptionError` listing every problem."""
    from basicsr.utils.registry import MODEL_REGISTRY

    if not isinstance(raw, Mapping):
        raise OptionError([OptionProblem((), f'an option file must be a mapping of keys, got {type(raw).__name__}')],
                          source)
    raw = copy.deepcopy(dict(raw))
    model_type = raw.get('model_type')
    problems = []
    if model_type is not None and model_type not in MODEL_REGISTRY:
        suggestion = nearest_name(str(model_type), list(MODEL_REGISTRY.keys()))
        hint = f"did you mean '{suggestion}'?" if suggestion else f'registered: {", ".join(sorted(MODEL_REGISTRY.keys()))}'
        problems.append(OptionProblem(('model_type',), f"unknown model type '{model_type}'; {hint}"))
    schema = schema_for(str(model_type))
    raw, unknown = split_unknown_keys(raw, schema)
    problems += unknown
    try:
        options = schema.model_validate(raw)
    except ValidationError as error:
        raise OptionError(problems + pydantic_problems(error), source) from None
    datasets, dataset_issues = dataset_problems(options.datasets, options.scale, is_train)
    problems += dataset_issues + callable_problems(options) + semantic_problems(options, is_train)
    problems += teacher_problems(options, check_files, root)
    problems += options.extra_problems(is_train)
    notes = validation_notes(options)
    if is_train and isinstance(options.train, TrainOptions):
        schedule_issues, schedule_notes = schedule_problems(options.train)
        problems += schedule_issues
        notes += schedule_notes
    aggregator = getattr(options, 'aggregator', None)
    if check_files and aggregator is not None and (aggregator.weights is None or
                                                   not os.path.isfile(_resolve_path(aggregator.weights, root))):
        problems.append(OptionProblem(('aggregator', 'weights'), f'stage-1 checkpoint {aggregator.weights} not found; '
                                      + (weights_hint(aggregator.weights, root) if aggregator.weights else
                                         'set it to the stage-1 checkpoint (the stage-1 option file named in this '
                                         "file's header trains it)")))
    if check_files:
        absent, absent_notes = absent_optional_datasets(datasets, root)
        datasets = {key: dataset for key, dataset in datasets.items() if key not in absent}
        notes += absent_notes
        if absent and not is_train and not datasets:
            problems.append(OptionProblem(('datasets',), 'every test dataset is optional and absent: build one (see '
                                          'the notes above) or add a dataset that exists'))
        problems += file_problems(options, datasets, root)
    if problems:
        raise OptionError(problems, source)
    return ValidatedOptions(schema=options, datasets=datasets, is_train=is_train, notes=tuple(notes))


__all__ = ['ValidatedOptions', 'validate_options', 'schema_for', 'OptionError', 'StrictBlock']
