"""The comparison is fair: for each student and scale, the method files differ only in the method.

For every paper student (edsr_baseline, rcan_light, swinir_light) at x2/x3/x4 and the small CPU setting
(light_edsr32, x4), every method file (student alone, KD, AT, FAKD, DUKD, CrossKD, MTKD, v5-v7 where they exist)
is validated (``check_files=False``: no data, no weights) and compared key by key with the MTKD file of the same
student and scale. Outside each method's own blocks (``distill``, ``aggregator``, ``teachers``, the teacher-cache
settings of the training set) and the extras listed per method in ``EXTRAS`` (documented in docs/baselines.md),
everything must be equal: data, patch, batch, augmentation, student, schedule, optimiser, seed, iterations, EMA,
validation, logging. The single-teacher methods must learn from the student's own full version, and every
method's loss weights must be the ones docs/baselines.md gives with their source. Cheap: YAML and validation only.
"""
from __future__ import annotations

import glob
import os

import pytest
import yaml

from mtkd.config import validate_options

from conftest import REPO_ROOT

OPTIONS = os.path.join(REPO_ROOT, 'options')
PAPER_STUDENTS = {'edsr_baseline': 'edsr', 'rcan_light': 'rcan', 'swinir_light': 'swinir'}  # student → its "Full"
LIGHT = 'light_edsr32'
LIGHT_TEACHER = 'rlfn'  # the small setting's single teacher (best light teacher on Set5)

#: Keys every method owns (the method itself). Dotted paths into the validated option dict.
METHOD_KEYS = ('name', 'teachers', 'aggregator', 'distill')
#: The training set's teacher-cache settings: the cache a method can use depends on what it needs from the teachers.
TEACHER_CACHE_KEYS = ('datasets.train.type', 'datasets.train.teacher_cache_root',
                      'datasets.train.teacher_cache_content', 'datasets.train.accept_stale_teacher_cache')
#: Each method's documented extras (docs/baselines.md, "What each method file may change").
EXTRAS = {
    'mtkd': (),
    'v5_l1': (), 'v6_dct': (), 'v7_highfreq': (),
    'alone': ('model_type', 'train.pixel_opt.loss_weight'),  # PlainSRModel, L1 to GT with weight 1
    'kd': ('train.pixel_opt.loss_weight',),       # each source's weight on L1(S, GT)
    'at': ('train.pixel_opt.loss_weight',),
    'fakd': ('train.pixel_opt.loss_weight',),
    'dukd': ('train.pixel_opt.loss_weight',),     # DUKD's lambda_pix
    'crosskd': ('train.pixel_opt.loss_weight',),
}
SINGLE_TEACHER = ('kd', 'at', 'fakd', 'dukd', 'crosskd')

#: The weights each method file ships, from one source each (docs/baselines.md): pixel = train.pixel_opt.loss_weight.
FAKD_FEATURE_WEIGHT = 10 / 255  # official 10*SA with the L1 terms on [0, 255] images
SOURCE_WEIGHTS = {
    'kd': {'pixel': 1.0, 'output': 1.0},                                  # yun224/DUKD kd_edsr_x4 config
    'at': {'pixel': 1.0, 'feature': ('AttentionTransferLoss', 1000.0)},   # szagoruyko/attention-transfer, beta 1e3
    'fakd': {'pixel': 0.5, 'output': 0.5, 'feature': ('FeatureAffinityLoss', FAKD_FEATURE_WEIGHT)},  # official FAKD
    'crosskd': {'pixel': 1.0, 'crosskd': {'teacher_weight': 1.0, 'gt_weight': 0.0, 'dual_teacher_weight': 0.0,
                                          'dual_gt_weight': 0.0}},
}
#: yun224/DUKD @1ab4419 options/{EDSR,RCAN,Swinir}/dukd_*.yml: lambda_pix, zoom_out, n_gt_sub, augmentation prob.
DUKD_OFFICIAL = {
    ('edsr_baseline', 2): (5.0, True, 2, 0.3), ('edsr_baseline', 3): (5.0, True, 1, 0.3),
    ('edsr_baseline', 4): (5.0, True, 1, 0.3),
    ('rcan_light', 2): (1.0, False, 1, 0.0), ('rcan_light', 3): (2.0, True, 1, 0.3),
    ('rcan_light', 4): (1.0, False, 1, 0.0),
    ('swinir_light', 2): (5.0, False, 1, 0.3), ('swinir_light', 3): (5.0, False, 1, 0.3),
    ('swinir_light', 4): (5.0, False, 1, 0.3),
    (LIGHT, 4): (5.0, True, 1, 0.3),  # the small setting follows DUKD's EDSR x4 file (an EDSR student)
}


def expected_methods(student: str, scale: int) -> set[str]:
    methods = {'mtkd', 'alone', 'kd', 'at', 'fakd', 'dukd'}
    if scale == 4:
        methods |= {'v5_l1', 'v6_dct', 'v7_highfreq'}
    if student in ('rcan_light', LIGHT):  # CrossKD where the pair allows it (RCAN/RCAN_lightweight: both 64 wide)
        methods.add('crosskd')
    return methods


GROUPS = [(student, scale) for student in PAPER_STUDENTS for scale in (2, 3, 4)] + [(LIGHT, 4)]


def method_files(student: str, scale: int) -> dict[str, str]:
    prefix = os.path.join(OPTIONS, f'stage2_{student}_x{scale}')
    files = {'mtkd': prefix + '.yml'}
    for path in glob.glob(prefix + '_*.yml'):
        files[path[len(prefix) + 1:-len('.yml')]] = path
    return files


def validated(path: str) -> dict:
    with open(path, encoding='utf-8') as handle:
        raw = yaml.safe_load(handle)
    return validate_options(raw, is_train=True, check_files=False).to_basicsr_dict()


def flatten(value, prefix: str = '') -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(flatten(item, f'{prefix}{key}.'))
        return flat
    return {prefix[:-1]: value}


def shared_settings(options: dict, method: str) -> dict:
    """Everything a method must share with the others: the validated options minus its own blocks and extras."""
    flat = flatten(options)
    owned = METHOD_KEYS + TEACHER_CACHE_KEYS + EXTRAS[method]
    shared = {key: value for key, value in flat.items()
              if not any(key == owned_key or key.startswith(owned_key + '.') for owned_key in owned)}
    # Only the cache dataset's schema has this switch; the plain PairedImageDataset never skips (same behaviour).
    shared.setdefault('datasets.train.skip_images_smaller_than_patch', False)
    return shared


@pytest.mark.parametrize('student, scale', GROUPS, ids=[f'{student}_x{scale}' for student, scale in GROUPS])
def test_method_files_differ_only_in_the_method(student, scale):
    files = method_files(student, scale)
    unknown = set(files) - set(EXTRAS)
    assert not unknown, (f'{sorted(unknown)}: a new method file; list its documented extras in EXTRAS (and in '
                         'docs/baselines.md)')
    missing = expected_methods(student, scale) - set(files)
    assert not missing, f'stage2_{student}_x{scale}: no file for {sorted(missing)}'
    mtkd = validated(files['mtkd'])
    for method, path in sorted(files.items()):
        options = validated(path)
        reference, shared = shared_settings(mtkd, method), shared_settings(options, method)
        differences = {key: (reference.get(key, '<absent>'), shared.get(key, '<absent>'))
                       for key in sorted(set(reference) | set(shared)) if reference.get(key) != shared.get(key)}
        assert not differences, (f'{os.path.basename(path)} differs from the MTKD file outside its method '
                                 f'(MTKD value, this value): {differences}')
        assert options['name'] == os.path.basename(path)[:-len('.yml')]


@pytest.mark.parametrize('student, scale', GROUPS, ids=[f'{student}_x{scale}' for student, scale in GROUPS])
def test_single_teacher_methods_learn_from_the_same_teacher(student, scale):
    """Paper students: their own full version (RCAN_lightweight ← RCAN, EDSR_baseline ← EDSR, SwinIR_lightweight ←
    SwinIR; the MTKD paper's "Full" row, DUKD's practice), with the same network and weights as in the MTKD file.
    The small setting: RLFN."""
    files = method_files(student, scale)
    mtkd_teachers = {teacher['name']: teacher for teacher in validated(files['mtkd'])['teachers']}
    name = PAPER_STUDENTS.get(student, LIGHT_TEACHER)
    for method in SINGLE_TEACHER:
        if method not in files:
            continue
        options = validated(files[method])
        assert options['distill']['teacher'] == name, (method, options['distill']['teacher'])
        teacher = next(t for t in options['teachers'] if t['name'] == name)
        for key in ('network', 'weights', 'key_format', 'param_key'):
            assert teacher[key] == mtkd_teachers[name][key], (method, key)
        if student in PAPER_STUDENTS:
            assert [t['name'] for t in options['teachers']] == [name], method


@pytest.mark.parametrize('student, scale', GROUPS, ids=[f'{student}_x{scale}' for student, scale in GROUPS])
def test_each_method_ships_the_weights_of_its_source(student, scale):
    files = method_files(student, scale)
    for method, expected in SOURCE_WEIGHTS.items():
        if method not in files:
            continue
        options = validated(files[method])
        distill = options['distill']
        assert options['train']['pixel_opt']['loss_weight'] == expected['pixel'], method
        output = distill.get('output_opt')
        assert (output['loss_weight'] if output else None) == expected.get('output'), method
        assert output is None or output['type'] == 'L1Loss'
        feature = distill.get('feature_opt')
        actual = (feature['type'], feature['loss_weight']) if feature else None
        assert actual == (pytest.approx(expected['feature']) if 'feature' in expected else None), method
        if 'crosskd' in expected:
            assert {key: distill['crosskd'][key] for key in expected['crosskd']} == expected['crosskd']
    pixel, zoom_out, tiles, probability = DUKD_OFFICIAL[(student, scale)]
    options = validated(files['dukd'])
    dukd = options['distill']['dukd']
    assert options['train']['pixel_opt']['loss_weight'] == pixel
    assert options['distill']['output_opt']['loss_weight'] == 1.0  # lambda_kd
    assert (dukd['zoom_in_weight'], dukd['zoom_out_kd_weight'], dukd['zoom_out_pixel_weight']) == (
        1.0, 1.0 if zoom_out else 0.0, pixel if zoom_out else 0.0)
    assert (dukd['num_tiles'], dukd['augmentation_probability'], dukd['separate_step']) == (tiles, probability, True)
    assert dukd['augmentations'] == ['invert', 'vflip', 'hflip', 'transpose']
    lr_patch = options['datasets']['train']['gt_size'] // scale
    assert dukd['crop_to_scale'] == bool(zoom_out and lr_patch % scale)
