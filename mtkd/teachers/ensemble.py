"""The one teacher layer: build teachers from the option list, load their weights, freeze them, run them.

The three KD models of mtkd obtain teacher outputs only through this module (and its on-disk cache,
:mod:`mtkd.teachers.cache`): the MTKD stage-1 knowledge-aggregation model (Jiang et al., "Multi-Teacher
Knowledge Distillation for Image Super-Resolution", ECCV 2024), the stage-2 distillation model, and the
DTKD dual-teacher model. They differ in what they do with the outputs, not in how they get them.

Option schema (one entry of the YAML list ``teachers:``)::

    teachers:
      - name: IMDN                      # unique; names the cache folder and the validation rows
        network: {type: IMDN, num_feat: 64, num_block: 6, upscale: 4}
        weights: pretrained/official/IMDN_x4.pth
        param_key: auto                 # optional, as load_weights
        key_format: basicsr             # optional, as load_weights
        strict_load: true               # optional
        pad_multiple: ~                 # optional: pad inputs to this multiple (window attention), crop back
        pad_mode: symmetric             # optional
        self_ensemble: false            # optional: mean of the 8 rotated/mirrored runs (EDSR's "+", 8x cost)

Frozen means all three (STYLE.md): ``eval()``, ``requires_grad_(False)``, and every forward under
``torch.no_grad()``. Not ``torch.inference_mode()``: teacher outputs enter the trainee's loss, and autograd
refuses to save inference tensors for backward. The networks live in a private list of a plain object, so no
optimiser, ``state_dict`` or ``Module.train()`` of a trained model can reach them, and each one's ``train``
is pinned to eval mode.

Each teacher takes RGB ``(B, 3, H, W)`` in [0, 1]; its input range inside (e.g. RLFN's [0, 255]) is its
arch's business (``img_range``). Outputs are ``(B, 3, sH, sW)``, nominally [0, 1], and NOT clamped: clamping
would change the distillation target and hide a teacher fed the wrong range; whoever needs [0, 1] clamps.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from mtkd.transforms.padding import PAD_MODES, run_padded
from mtkd.transforms.self_ensemble import self_ensemble
from mtkd.utils.errors import MtkdError
from mtkd.weights.loading import file_sha256, load_weights

#: The repository (option files and pretrained/manifest.yaml, for the hints of missing weights).
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
#: Where to get missing teacher weights (shown in errors).
TEACHER_WEIGHTS_HINT = ('link the shared weights with `make link-shared` or fetch the official ones with '
                        '`python scripts/download_pretrained.py` (pretrained/README.md); option-file tests may '
                        'pass allow_random_weights=True instead')
#: A teacher name becomes a folder name of the teacher-output cache.
_NAME_PATTERN = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.+-]*$')
_SCALE_ARGUMENTS = ('upscale', 'scale', 'upscale_factor')


class TeacherMismatchError(MtkdError, ValueError):
    """Saved teachers (a KA checkpoint, a teacher-output cache) differ from the configured ones."""


class TeacherWeightsError(MtkdError, FileNotFoundError):
    """A teacher's weights file is missing (or not given)."""


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher as the option file describes it: a BasicSR network block, its weights and how to run it.

    ``network``: BasicSR network options including ``type`` (any registered arch). ``weights``: checkpoint
    path, or None for random weights (refused unless the ensemble allows them). ``param_key``,
    ``key_format``, ``strict_load``: as :func:`mtkd.weights.loading.load_weights`. ``pad_multiple``/``pad_mode``:
    pad inputs at the bottom/right to a multiple (window-attention teachers such as SwinIR) and crop the
    output back, :func:`mtkd.transforms.padding.run_padded`. ``self_ensemble``: the teacher's output is the mean of
    its 8 rotated/mirrored runs (:func:`mtkd.transforms.self_ensemble.self_ensemble`, EDSR's "+"), 8x its cost.
    ``weights_sha256``: the weights file's expected sha256, checked before it is loaded (committed weights).
    """
    name: str
    network: dict = field(hash=False)
    weights: str | None
    param_key: str | None = 'auto'
    key_format: str = 'basicsr'
    strict_load: bool = True
    pad_multiple: int | None = None
    pad_mode: str = 'symmetric'
    self_ensemble: bool = False
    weights_sha256: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise ValueError(f'teacher name {self.name!r} is not valid: use letters, digits and _ . + - '
                             '(it names a folder of the teacher-output cache), e.g. name: IMDN')
        if not isinstance(self.network, Mapping) or not isinstance(self.network.get('type'), str):
            raise ValueError(f"teacher '{self.name}': network must be a block with a 'type' (a registered arch) "
                             f'and its arguments, e.g. network: {{type: IMDN, upscale: 4}}; got {self.network!r}')
        # A private deep copy, so neither the caller's dict nor BasicSR's build_network can change the spec.
        object.__setattr__(self, 'network', json.loads(json.dumps(dict(self.network))))
        if self.weights is not None and not isinstance(self.weights, (str, os.PathLike)):
            raise ValueError(f"teacher '{self.name}': weights must be a path or null, got {self.weights!r}")
        if self.weights is not None:
            object.__setattr__(self, 'weights', os.fspath(self.weights))
        if self.pad_multiple is not None and (not isinstance(self.pad_multiple, int) or self.pad_multiple < 1):
            raise ValueError(f"teacher '{self.name}': pad_multiple must be a positive integer or null, "
                             f'got {self.pad_multiple!r}')
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"teacher '{self.name}': pad_mode {self.pad_mode!r} is not one of {PAD_MODES}")
        if self.weights_sha256 is not None and not re.fullmatch(r'[0-9a-f]{64}', str(self.weights_sha256)):
            raise ValueError(f"teacher '{self.name}': weights_sha256 must be 64 lower-case hex digits, got "
                             f'{self.weights_sha256!r}')
        if not isinstance(self.self_ensemble, bool):
            raise ValueError(f"teacher '{self.name}': self_ensemble must be true or false, got {self.self_ensemble!r}")

    @classmethod
    def from_options(cls, mapping: Mapping, root: str | None = None) -> TeacherSpec:
        """A spec from one entry of ``teachers:``; unknown or missing keys raise naming the key.

        ``root``: relative ``weights`` paths are taken from this folder (the repository root); None keeps
        them as given.
        """
        if hasattr(mapping, 'model_dump'):  # a validated pydantic block of the option schema
            mapping = mapping.model_dump(mode='python')
        if not isinstance(mapping, Mapping):
            raise ValueError(f'each entry of teachers: must be a block with name, network, weights; got {mapping!r}')
        known = [item.name for item in fields(cls)]
        unknown = sorted(set(mapping) - set(known))
        label = mapping.get('name', '?')
        if unknown:
            raise ValueError(f"teacher '{label}': unknown key(s) {unknown}; valid keys: {', '.join(known)}")
        missing = [key for key in ('name', 'network', 'weights') if key not in mapping]
        if missing:
            raise ValueError(f"teacher '{label}': missing key(s) {missing} (weights may be null for random "
                             'weights in tests)')
        values = dict(mapping)
        weights = values.get('weights')
        if root is not None and weights is not None and not os.path.isabs(os.path.expanduser(weights)):
            values['weights'] = os.path.join(root, weights)
        return cls(**values)


def teacher_specs_from_options(entries: Iterable, root: str | None = None) -> list[TeacherSpec]:
    """Specs from the ``teachers:`` list of an option file; names must be unique."""
    if entries is None or isinstance(entries, (str, Mapping)):
        raise ValueError(f'teachers: must be a list of teacher blocks (name, network, weights), got {entries!r}')
    specs = [TeacherSpec.from_options(entry, root) for entry in entries]
    check_unique_names(specs)
    return specs


def check_unique_names(specs: Sequence[TeacherSpec]) -> None:
    """Raise naming the duplicates when two teachers share a name (names key the cache and the logs)."""
    if not specs:
        raise ValueError('teachers: is empty; list at least one teacher (name, network, weights)')
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f'teacher names must be unique, {duplicates} appear more than once in {names}; '
                         'rename them (e.g. IMDN_a, IMDN_b)')


def canonical_network_args(network: Mapping) -> dict[str, Any]:
    """The arch's constructor arguments with its defaults filled in, JSON-normalised (tuples become lists).

    So that ``{type: IMDN}`` and ``{type: IMDN, num_feat: 64}`` have one fingerprint. Needs the arch to be
    registered (``import mtkd`` registers mtkd's; BasicSR's register on import of ``basicsr.archs``).
    """
    import basicsr.archs  # noqa: F401  (registers BasicSR's archs)
    from basicsr.utils.registry import ARCH_REGISTRY

    arguments = {key: value for key, value in network.items() if key != 'type'}
    try:
        arch = ARCH_REGISTRY.get(network['type'])
    except KeyError as error:
        raise ValueError(f"teacher network type '{network['type']}' is not a registered arch: {error}") from None
    signature = inspect.signature(arch)
    try:
        bound = signature.bind_partial(**arguments)
    except TypeError as error:
        raise ValueError(f"teacher network {network['type']}: {error}") from None
    bound.apply_defaults()
    canonical = {}
    for key, value in bound.arguments.items():
        kind = signature.parameters[key].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            canonical.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            canonical[key] = value
    return json.loads(json.dumps(canonical, sort_keys=True, default=repr))


def spec_fingerprint(spec: TeacherSpec, weights_sha256: str | None) -> dict[str, Any]:
    """What identifies a teacher's outputs: name, arch, its arguments, the weights' sha256 and how it runs.

    Keys: ``name``, ``type``, ``args`` (defaults filled in), ``weights_sha256`` (None: random weights),
    ``param_key`` and ``key_format`` (which tensors of the file are loaded), ``pad_multiple`` and
    ``pad_mode`` (padding changes the outputs of window networks; ``pad_mode`` is None without padding), and
    ``self_ensemble: true`` only for a self-ensembled teacher (so fingerprints saved before the switch existed
    still describe the plain teacher). The weights' path is not part of it: a moved file is the same teacher.
    """
    fingerprint = {
        'name': spec.name,
        'type': spec.network['type'],
        'args': canonical_network_args(spec.network),
        'weights_sha256': weights_sha256,
        'param_key': spec.param_key,
        'key_format': spec.key_format,
        'pad_multiple': spec.pad_multiple,
        'pad_mode': spec.pad_mode if spec.pad_multiple else None,
    }
    if spec.self_ensemble:
        fingerprint['self_ensemble'] = True
    return fingerprint


def fingerprint_specs(specs: Sequence[TeacherSpec]) -> list[dict[str, Any]]:
    """Fingerprints of teachers without building them (hashes each weights file; None where it is absent).

    Equals :meth:`TeacherEnsemble.fingerprint` of an ensemble built from the same specs; the option layer
    can use it to tell a dataset which cache to read (``teacher_fingerprints``) before any model exists.
    """
    return [spec_fingerprint(spec, file_sha256(spec.weights) if spec.weights and os.path.isfile(spec.weights)
                             else None) for spec in specs]


def _describe_teacher(entry: Mapping | None) -> str:
    if entry is None:
        return '(none)'
    sha = entry.get('weights_sha256')
    return f"{entry.get('name')} [{entry.get('type')}, weights {sha[:12] if sha else 'random'}]"


def _normalise(entries: Sequence[Mapping]) -> list[dict]:
    return json.loads(json.dumps([dict(entry) for entry in entries], sort_keys=True, default=repr))


def _arch_defaults(arch_type: str) -> dict[str, Any] | None:
    """The arch's constructor defaults, canonical as in fingerprints; None for an arch not registered."""
    try:
        return canonical_network_args({'type': arch_type})
    except ValueError:
        return None


def _fill_added_arguments(saved: list[dict], current: list[dict]) -> None:
    """Give each saved teacher the arguments its arch gained since it was saved, where the current teacher
    uses them at their default (in place). A switch added later, off by default, leaves the network as it was."""
    for old, new in zip(saved, current):
        old_args, new_args = old.get('args'), new.get('args')
        if old.get('type') != new.get('type') or not isinstance(old_args, dict) or not isinstance(new_args, dict):
            continue
        added = set(new_args) - set(old_args)
        defaults = _arch_defaults(new['type']) if added else None
        for key in added:
            if defaults is not None and key in defaults and new_args[key] == defaults[key]:
                old_args[key] = new_args[key]


def check_fingerprint(saved: Sequence[Mapping], current: Sequence[Mapping], what: str = 'KA checkpoint') -> None:
    """Raise :class:`TeacherMismatchError` unless ``saved`` and ``current`` describe the same teachers in order.

    Order matters: teacher ``i`` is channel group ``i`` of the KA network's input and folder ``i`` of the
    cache, so a reordered list is a mismatch. The message shows both lists side by side, marks each row
    that differs with the fields that differ, and names both orders. An argument the arch gained after the
    fingerprint was saved matches when the current teacher leaves it at its default (so a new switch does not
    orphan checkpoints); any other difference in ``args``, a changed default included, is a mismatch.
    """
    saved, current = _normalise(saved), _normalise(current)
    _fill_added_arguments(saved, current)
    if saved == current:
        return
    left_title, right_title = f'saved ({what})', 'current (options)'
    rows = []
    for index in range(max(len(saved), len(current))):
        left = saved[index] if index < len(saved) else None
        right = current[index] if index < len(current) else None
        if left == right:
            note = ''
        elif left is None or right is None:
            note = '<- only on one side'
        else:
            keys = sorted(key for key in set(left) | set(right) if left.get(key) != right.get(key))
            note = '<- differs: ' + ', '.join(keys)
        rows.append((index, _describe_teacher(left), _describe_teacher(right), note))
    width = max([len(left_title)] + [len(row[1]) for row in rows])
    lines = [f'The teachers of the {what} differ from the configured teachers.',
             f"  {'#':>2}  {left_title:<{width}}  {right_title}"]
    lines += [f'  {index:>2}  {left:<{width}}  {right}  {note}'.rstrip() for index, left, right, note in rows]
    saved_names = [entry.get('name') for entry in saved]
    current_names = [entry.get('name') for entry in current]
    lines.append(f"  saved order:   {', '.join(map(str, saved_names))}")
    lines.append(f"  current order: {', '.join(map(str, current_names))}")
    same_set = sorted(json.dumps(entry, sort_keys=True) for entry in saved) == \
        sorted(json.dumps(entry, sort_keys=True) for entry in current)
    if same_set:
        lines.append('  The same teachers in another order: order matters (teacher i is channel group i of the KA '
                     "network's input and of the dataset's teacher_outputs); list the teachers in the saved order.")
    else:
        lines.append(f'  Restore the teachers the {what} was made with, or make the {what} again with these '
                     'teachers.')
    raise TeacherMismatchError('\n'.join(lines))


def check_checkpoint_teachers(checkpoint_path: str, ensemble: 'TeacherEnsemble', what: str, logger=None) -> None:
    """Refuse a checkpoint (a KA network) whose recorded teacher list differs from ``ensemble`` (order included).

    A checkpoint that records no list (trained elsewhere) cannot be checked: a warning says so.
    """
    from mtkd.weights.loading import read_checkpoint

    checkpoint = read_checkpoint(checkpoint_path)
    saved = checkpoint.get('teachers') if isinstance(checkpoint, dict) else None
    if saved is None:
        (logger or logging.getLogger('basicsr')).warning(
            f'{checkpoint_path} records no teacher list: cannot check that it was trained on {ensemble.names} in '
            'this order.')
        return
    check_fingerprint(saved, ensemble.fingerprint(), what=f'{what} {checkpoint_path}')


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """``Module.train`` of a teacher: whatever is asked, the teacher stays in eval mode."""
    return nn.Module.train(module, False)


def freeze_network(network: nn.Module) -> nn.Module:
    """Freeze a network for good: eval mode (pinned, so a parent's ``.train()`` cannot undo it) and no
    parameter requires grad. The third part of freezing, running it under ``torch.no_grad()``, is the caller's."""
    network.eval()
    network.requires_grad_(False)
    network.train = functools.partial(_stay_in_eval, network)  # a partial still pickles and deep-copies
    return network


def _same_device(first: torch.device, second: torch.device) -> bool:
    return first.type == second.type and (first.index is None or second.index is None or first.index == second.index)


def run_tiled(run, images: torch.Tensor, scale: int, tile_size: int | None, tile_overlap: int) -> list[torch.Tensor]:
    """``run(images)`` (a list of ``(B, C, sH, sW)`` outputs) on overlapping tiles when H or W exceeds ``tile_size``.

    Each tile is the ``tile_size`` core plus ``tile_overlap`` LR pixels of context on every side (clipped at
    the image border); only the core of each tile output is kept (cropped, not blended). For a network
    whose receptive-field radius is at most ``tile_overlap`` LR pixels and that has no image-global operation,
    the result equals the untiled output up to float rounding. Networks with global statistics (IMDN's
    contrast-aware channel attention, RCAN's channel attention, LBNet's attention over the whole image) or
    with stride-grid dependent parts (the ESA of RFDN and RLFN) give slightly different outputs tiled:
    tile those only when memory demands it.
    """
    height, width = images.shape[-2:]
    if tile_size is None or (height <= tile_size and width <= tile_size):
        return list(run(images))
    if tile_size < 1 or tile_overlap < 0:
        raise ValueError(f'tile_size must be >= 1 and tile_overlap >= 0, got {tile_size} and {tile_overlap}')
    outputs = None
    for top in range(0, height, tile_size):
        for left in range(0, width, tile_size):
            bottom, right = min(top + tile_size, height), min(left + tile_size, width)
            in_top, in_left = max(top - tile_overlap, 0), max(left - tile_overlap, 0)
            in_bottom, in_right = min(bottom + tile_overlap, height), min(right + tile_overlap, width)
            tile_outputs = run(images[..., in_top:in_bottom, in_left:in_right])
            if outputs is None:
                outputs = [tile.new_empty(tile.shape[:-2] + (height * scale, width * scale)) for tile in tile_outputs]
            for output, tile in zip(outputs, tile_outputs):
                output[..., top * scale:bottom * scale, left * scale:right * scale] = tile[
                    ..., (top - in_top) * scale:(bottom - in_top) * scale,
                    (left - in_left) * scale:(right - in_left) * scale]
    return outputs


def run_teacher(network: nn.Module, spec: TeacherSpec, scale: int, images: torch.Tensor) -> torch.Tensor:
    """``network`` run as ``spec`` says: inputs padded to ``spec.pad_multiple`` and the output cropped back, and the
    mean of the 8 rotated/mirrored runs with ``spec.self_ensemble``. No ``no_grad`` here: that is the caller's."""
    def run(batch: torch.Tensor) -> torch.Tensor:
        return run_padded(network, batch, spec.pad_multiple, scale, spec.pad_mode)

    return self_ensemble(run, images) if spec.self_ensemble else run(images)


class TeacherEnsemble:
    """Frozen teachers in a fixed order: ``forward(lq)`` gives each one's SR image of an LR batch.

    Multi-teacher KD for SR (Jiang et al., ECCV 2024, Sec. 3.1: the KA network takes the teachers' outputs
    concatenated; DTKD: two teachers). Input ``(B, 3, H, W)`` RGB in [0, 1] on the ensemble's device;
    each output ``(B, 3, sH, sW)``, not clamped (see the module docstring).

    Not an ``nn.Module``: keep it as a plain attribute of a model, never inside a module that is optimised
    or saved. ``train()`` is accepted and keeps every teacher in eval mode.
    """

    def __init__(self, specs: Sequence[TeacherSpec], scale: int, device: str | torch.device = 'cpu',
                 allow_random_weights: bool = False, logger: logging.Logger | None = None):
        from basicsr.archs import build_network

        specs = [spec if isinstance(spec, TeacherSpec) else TeacherSpec.from_options(spec) for spec in specs]
        check_unique_names(specs)
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f'scale must be a positive integer, got {scale!r}')
        self.logger = logger or logging.getLogger('basicsr')
        self.scale = scale
        self._specs = tuple(specs)
        self._networks: list[nn.Module] = []
        self._fingerprints: list[dict] = []
        for spec in specs:
            for key in _SCALE_ARGUMENTS:
                if key in spec.network and spec.network[key] != scale:
                    raise ValueError(f"teacher '{spec.name}': network {key} is {spec.network[key]} but the scale is "
                                     f'{scale}; use weights for x{scale} and set {key}: {scale}')
            # Built under a forked RNG: which teachers a run has must not change the student's initialisation,
            # so methods compared from one seed start from the same student weights.
            with torch.random.fork_rng(devices=[]):
                network = build_network(dict(spec.network))
            weights_sha256 = self._load(network, spec, allow_random_weights)
            self._networks.append(freeze_network(network))
            self._fingerprints.append(spec_fingerprint(spec, weights_sha256))
        self.device = torch.device(device)
        self.to(device)

    def _load(self, network: nn.Module, spec: TeacherSpec, allow_random_weights: bool) -> str | None:
        """Load ``spec.weights`` strictly; returns its sha256 (None for random weights)."""
        if spec.weights is None or not os.path.isfile(spec.weights):
            where = 'no weights given' if spec.weights is None else f'weights file {spec.weights} not found'
            if not allow_random_weights:
                from mtkd.config.hints import weights_hint

                hint = weights_hint(spec.weights, REPO_ROOT) if spec.weights else TEACHER_WEIGHTS_HINT
                raise TeacherWeightsError(f"teacher '{spec.name}' ({spec.network['type']}): {where}; {hint}.")
            self.logger.warning(f"teacher '{spec.name}' ({spec.network['type']}): {where}; RANDOM weights "
                                '(allow_random_weights=True): its outputs mean nothing.')
            return None
        sha256 = file_sha256(spec.weights)
        if spec.weights_sha256 is not None and sha256 != spec.weights_sha256:
            raise TeacherWeightsError(f"teacher '{spec.name}': {spec.weights} has sha256 {sha256}, not the "
                                      f'{spec.weights_sha256} the option file expects: the file was changed or '
                                      'replaced. Restore it (git checkout / the download), or retrain it with its '
                                      'option file and update weights_sha256.')
        load_weights(network, spec.weights, param_key=spec.param_key, strict=spec.strict_load,
                     key_format=spec.key_format, logger=self.logger)
        self.logger.info(f"teacher '{spec.name}': loaded {spec.network['type']} from {spec.weights}")
        return sha256

    # ---- description ---------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Teacher names, in order."""
        return [spec.name for spec in self._specs]

    @property
    def specs(self) -> tuple[TeacherSpec, ...]:
        return self._specs

    def __len__(self) -> int:
        return len(self._networks)

    def __repr__(self) -> str:
        return f'TeacherEnsemble({", ".join(self.names)}; x{self.scale}; {self.device})'

    def fingerprint(self) -> list[dict[str, Any]]:
        """One dict per teacher, in order (see :func:`spec_fingerprint`); weights hashed once, at construction."""
        return json.loads(json.dumps(self._fingerprints))

    def network(self, name: str) -> nn.Module:
        """The frozen network of teacher ``name`` (to tap its features; never to train or save it)."""
        if name not in self.names:
            raise KeyError(f"no teacher named '{name}'; the teachers are {', '.join(self.names)}")
        return self._networks[self.names.index(name)]

    def parameters(self):
        """Every teacher parameter (for checks: none requires grad); never give these to an optimiser."""
        for network in self._networks:
            yield from network.parameters()

    # ---- state ---------------------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> TeacherEnsemble:
        """Move every teacher to ``device`` (once; inputs must then be there too)."""
        device = torch.device(device)
        for network in self._networks:
            network.to(device)
        self.device = device
        return self

    def train(self, mode: bool = True) -> TeacherEnsemble:
        """Teachers are frozen: this keeps them in eval mode whatever ``mode`` is."""
        return self.eval()

    def eval(self) -> TeacherEnsemble:
        for network in self._networks:
            nn.Module.train(network, False)
        return self

    # ---- inference -----------------------------------------------------------------------------------
    def _check_frozen(self) -> None:
        for spec, network in zip(self._specs, self._networks):
            if network.training or any(parameter.requires_grad for parameter in network.parameters()):
                raise RuntimeError(f"teacher '{spec.name}' was unfrozen (train mode or requires_grad) by code "
                                   'outside TeacherEnsemble; teachers must stay frozen.')

    def _run_all(self, lq: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        height, width = lq.shape[-2:]
        for spec, network in zip(self._specs, self._networks):
            output = run_teacher(network, spec, self.scale, lq)
            expected = (lq.shape[0], 3, height * self.scale, width * self.scale)
            if tuple(output.shape) != expected:
                raise RuntimeError(f"teacher '{spec.name}' returned {tuple(output.shape)} for input "
                                   f'{tuple(lq.shape)}, expected {expected}: check its upscale and num_out_ch.')
            outputs.append(output)
        return outputs

    def forward(self, lq: torch.Tensor, tile_size: int | None = None, tile_overlap: int = 16) -> list[torch.Tensor]:
        """Each teacher's SR image of ``lq``: ``(B, 3, H, W)`` in [0, 1] → N × ``(B, 3, sH, sW)``, not clamped.

        Runs under ``torch.no_grad()``: the outputs do not require grad and can be used in a trainee's loss.
        ``tile_size``: run on overlapping tiles when H or W exceeds it (:func:`run_tiled`).
        """
        if not torch.is_tensor(lq) or lq.dim() != 4:
            raise ValueError(f'lq must be a (B, C, H, W) tensor, got {getattr(lq, "shape", type(lq))}')
        if not _same_device(lq.device, self.device):
            raise ValueError(f'lq is on {lq.device} but the teachers are on {self.device}; move lq with '
                             '.to(ensemble.device)')
        self._check_frozen()
        with torch.no_grad():
            return run_tiled(self._run_all, lq, self.scale, tile_size, tile_overlap)

    __call__ = forward

    def stacked(self, lq: torch.Tensor) -> torch.Tensor:
        """The outputs concatenated on channels, teacher order: ``(B, 3N, sH, sW)`` (the KA network's input)."""
        return torch.cat(self.forward(lq), dim=1)

    def average(self, outputs: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Pixel mean of teacher outputs (a list of ``(B, 3, sH, sW)`` or a stacked ``(B, 3N, sH, sW)``)."""
        if torch.is_tensor(outputs):
            if outputs.dim() != 4 or outputs.shape[1] != 3 * len(self):
                raise ValueError(f'expected stacked outputs (B, {3 * len(self)}, H, W), got {tuple(outputs.shape)}')
            batch, _, height, width = outputs.shape
            return outputs.view(batch, len(self), 3, height, width).mean(dim=1)
        outputs = list(outputs)
        if len(outputs) != len(self):
            raise ValueError(f'expected {len(self)} teacher outputs, got {len(outputs)}')
        return torch.stack(outputs, dim=0).mean(dim=0)


def ensemble_from_options(opt: Mapping, device: str | torch.device, logger: logging.Logger | None = None
                          ) -> TeacherEnsemble:
    """The frozen teachers of a model's option dict (``teachers``, ``scale``; weights resolved from
    ``root_path``). ``allow_random_teachers`` is a run-time flag for smoke tests, not an option-file key."""
    specs = teacher_specs_from_options(opt['teachers'], root=opt.get('root_path'))
    return TeacherEnsemble(specs, scale=opt['scale'], device=device,
                           allow_random_weights=bool(opt.get('allow_random_teachers', False)), logger=logger)


__all__ = ['TeacherSpec', 'TeacherEnsemble', 'ensemble_from_options', 'freeze_network', 'check_checkpoint_teachers', 'TeacherMismatchError', 'TeacherWeightsError', 'check_fingerprint',
           'check_unique_names', 'canonical_network_args', 'fingerprint_specs', 'run_teacher', 'run_tiled',
           'spec_fingerprint',
           'teacher_specs_from_options']
