"""Option validation: every problem is named with its place in the file and a fix; nothing is mutated."""
from __future__ import annotations

import copy
import glob
import os

import pytest
import yaml

from mtkd.config import OptionError, validate_options
from mtkd.config.cli import apply_overrides, build_argument_parser, load_option_file

from conftest import REPO_ROOT


def base_options(tmp_path) -> dict:
    """A small valid training option file whose folders exist under ``tmp_path``."""
    for folder in ('hr', 'lr'):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / 'a.png').write_bytes(b'')
    return {
        'name': 'unit', 'model_type': 'PlainSRModel', 'scale': 2, 'num_gpu': 0, 'manual_seed': 1,
        'datasets': {
            'train': {'name': 'toy', 'type': 'PairedImageDataset', 'dataroot_gt': str(tmp_path / 'hr'),
                      'dataroot_lq': str(tmp_path / 'lr'), 'gt_size': 32, 'batch_size_per_gpu': 2},
            'val': {'name': 'toyval', 'type': 'PairedImageDataset', 'dataroot_gt': str(tmp_path / 'hr'),
                    'dataroot_lq': str(tmp_path / 'lr')},
        },
        'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': 2},
        'train': {'optim_g': {'type': 'Adam', 'lr': '1e-4', 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [10], 'gamma': 0.5},
                  'total_iter': 20, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'val': {'val_freq': 10, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2,
                                                     'test_y_channel': True}}},
    }


def problems_of(options, **kwargs) -> list[str]:
    kwargs.setdefault('is_train', True)
    with pytest.raises(OptionError) as caught:
        validate_options(options, **kwargs)
    return [str(problem) for problem in caught.value.problems]


def test_valid_file_gets_defaults_and_is_not_mutated(tmp_path):
    options = base_options(tmp_path)
    before = copy.deepcopy(options)
    validated = validate_options(options, is_train=True)
    assert options == before
    plain = validated.to_basicsr_dict()
    assert plain['logger']['print_freq'] == 100 and plain['logger']['save_checkpoint_freq'] == 5000
    assert plain['train']['optim_g'] == {'type': 'Adam', 'lr': 1e-4, 'betas': [0.9, 0.99]}  # '1e-4' became a float
    assert plain['datasets']['train']['phase'] == 'train' and plain['datasets']['val']['scale'] == 2
    assert plain['path']['param_key_g'] == 'auto' and plain['path']['strict_load_g'] is True
    plain['train']['optim_g'].pop('type')  # BasicSR does this; the validated options must not change
    assert validated.to_basicsr_dict()['train']['optim_g']['type'] == 'Adam'


@pytest.mark.parametrize('mutate, expected', [
    (lambda o: o.update(nmae='x'), "nmae: unknown key 'nmae'; did you mean 'name'?"),
    (lambda o: o['train'].update(totl_iter=5), "train.totl_iter: unknown key 'totl_iter'; did you mean 'total_iter'?"),
    (lambda o: o['datasets']['train'].update(gt_szie=32), "datasets.train.gt_szie: unknown key 'gt_szie'; did you mean 'gt_size'?"),
    (lambda o: o['network_g'].update(num_feats=8), "network_g.num_feats: arch 'EDSR' does not take 'num_feats'; did you mean 'num_feat'?"),
    (lambda o: o['network_g'].pop('num_in_ch'), "network_g.num_in_ch: arch 'EDSR' requires this argument"),
    (lambda o: o['train']['optim_g'].update(eps='1e-8'), "train.optim_g.eps: '1e-8' is text, not a number"),
    (lambda o: o['train']['optim_g'].update(beta=[0.9, 0.9]), "train.optim_g.beta: optimizer 'Adam' does not take 'beta'; did you mean 'betas'?"),
    (lambda o: o['val']['metrics']['psnr'].update(crop_boarder=2), "val.metrics.psnr.crop_boarder: metric 'calculate_psnr' does not take 'crop_boarder'; did you mean 'crop_border'?"),
    (lambda o: o['train']['pixel_opt'].update(type='L1loss'), "train.pixel_opt.type: unknown loss 'L1loss'; did you mean 'L1Loss'?"),
    (lambda o: o['network_g'].update(type='EDSRR'), "network_g.type: unknown arch 'EDSRR'; did you mean 'EDSR'?"),
    (lambda o: o.update(model_type='PlainSRModle'), "model_type: unknown model type 'PlainSRModle'; did you mean 'PlainSRModel'?"),
    (lambda o: o['datasets']['train'].update(type='PairedImageDatset'), "datasets.train.type: unknown dataset type 'PairedImageDatset'; did you mean 'PairedImageDataset'?"),
    (lambda o: o['network_g'].update(upscale=4), 'network_g.upscale: EDSR upscales by 4 but the data has scale 2; set both to the same factor'),
    (lambda o: o['datasets']['val'].update(scale=3), 'datasets.val.scale: dataset scale 3 differs from the top-level scale 2; remove it or make them equal'),
    (lambda o: o['datasets']['train'].update(gt_size=33), 'datasets.train.gt_size: gt_size 33 is not a multiple of scale 2'),
    (lambda o: o['datasets'].update(vall={'name': 'x'}), "datasets.vall: dataset key 'vall' must be 'train', 'val', 'val_<n>', 'test' or 'test_<n>'"),
    (lambda o: o['train']['scheduler'].update(type='StepLR'), "train.scheduler.type: unsupported scheduler 'StepLR'; choose one of MultiStepLR, MultiStepRestartLR, CosineAnnealingRestartLR"),
    (lambda o: o['train'].pop('pixel_opt'), 'train: no loss: set pixel_opt, perceptual_opt and/or edge_opt'),
    (lambda o: o.pop('train'), 'train: training needs a train block (optim_g, scheduler, total_iter)'),
    (lambda o: o['path'] if 'path' in o else o.update(path={'key_format_g': 'edsr'}), "path.key_format_g: unknown key format 'edsr'"),
    (lambda o: o.update(amp_dtype='fp8'), "amp_dtype: Input should be 'bf16' or 'fp16'"),
    (lambda o: o.update(compile_mode='fastest'), "compile_mode: Input should be 'default', 'reduce-overhead'"),
    (lambda o: o.update(use_ampp=True), "use_ampp: unknown key 'use_ampp'; did you mean 'use_amp'?"),
    (lambda o: o['train'].update(accumulate=0), 'train.accumulate: Input should be greater than or equal to 1'),
    (lambda o: o['train'].update(grad_clip_norm=-1.0), 'train.grad_clip_norm: Input should be greater than 0'),
    (lambda o: o['train'].update(grad_clip=1.0), "train.grad_clip: unknown key 'grad_clip'; did you mean 'grad_clip_norm'?"),
    (lambda o: o['train'].update(accumulate=3), 'logger.save_checkpoint_freq: with train.accumulate 3, checkpoints must fall'),
    (lambda o: o.setdefault('logger', {}).update(keep_checkpoints=0), 'logger.keep_checkpoints: Input should be greater than or equal to 1'),
    (lambda o: o['train'].update(edge_opt={'type': 'EdgeLoss', 'operator': 'canny2'}) or o['train'].update(edge_opt={'type': 'EdgeLos'}), "train.edge_opt.type: unknown loss 'EdgeLos'; did you mean 'EdgeLoss'?"),
    (lambda o: o['train'].update(perceptual_opt={'type': 'VGGPerceptualLoss', 'vgg_weights': 'pretrained/vgg/none.pth'}), 'train.perceptual_opt.vgg_weights: vgg_weights file pretrained/vgg/none.pth not found'),
])
def test_each_mistake_is_named_with_a_fix(tmp_path, mutate, expected):
    options = base_options(tmp_path)
    mutate(options)
    found = problems_of(options)
    assert any(problem.startswith(expected) for problem in found), found


def test_wrong_types_and_ranges(tmp_path):
    options = base_options(tmp_path)
    options['scale'] = 'four'
    options['train']['total_iter'] = 0
    found = problems_of(options)
    assert any(p.startswith('scale: Input should be a valid integer') and "'four'" in p for p in found), found
    assert any(p.startswith('train.total_iter: Input should be greater than or equal to 1') for p in found), found


def test_missing_files_are_named_with_how_to_get_them(tmp_path):
    options = base_options(tmp_path)
    options['datasets']['train']['dataroot_gt'] = 'datasets/NoSuchSet/HR'
    options['path'] = {'pretrain_network_g': 'pretrained/official/nothing.pth'}
    found = problems_of(options, root=str(tmp_path))
    assert any('datasets.train.dataroot_gt: folder datasets/NoSuchSet/HR does not exist' in p and 'make link-shared' in p
               for p in found), found
    assert any('path.pretrain_network_g: weights pretrained/official/nothing.pth not found' in p
               and 'download_pretrained.py' in p for p in found), found
    validate_options(options, is_train=True, check_files=False)  # the same file is fine when files are not checked


def test_empty_data_folder_is_refused(tmp_path):
    options = base_options(tmp_path)
    (tmp_path / 'empty').mkdir()
    options['datasets']['val']['dataroot_lq'] = str(tmp_path / 'empty')
    assert any('is empty' in p for p in problems_of(options))


def test_all_problems_are_reported_together(tmp_path):
    options = base_options(tmp_path)
    options['nmae'] = 1
    options['network_g']['num_feats'] = 8
    options['network_g']['upscale'] = 3
    assert len(problems_of(options)) == 3


def test_force_yml_overrides_a_copy_and_typos_are_still_caught(tmp_path):
    options = base_options(tmp_path)
    changed = apply_overrides(options, ['train:ema_decay=0.999', 'datasets:train:batch_size_per_gpu=4'])
    assert changed['train']['ema_decay'] == 0.999 and changed['datasets']['train']['batch_size_per_gpu'] == 4
    assert 'ema_decay' not in options['train']
    typo = apply_overrides(options, ['train:ema_decey=0.999'])
    assert any("did you mean 'ema_decay'" in p for p in problems_of(typo))


def test_force_yml_indexes_lists(tmp_path):
    options = {'teachers': [{'name': 'a', 'network': {'type': 'EDSR'}}, {'name': 'b', 'network': {'type': 'EDSR'}}]}
    changed = apply_overrides(options, ['teachers:1:self_ensemble=true', 'teachers:-2:network:num_feat=8',
                                        'teachers:0:name=c'])
    assert changed['teachers'][1]['self_ensemble'] is True and 'self_ensemble' not in changed['teachers'][0]
    assert changed['teachers'][0]['network'] == {'type': 'EDSR', 'num_feat': 8} and changed['teachers'][0]['name'] == 'c'
    assert options['teachers'][0] == {'name': 'a', 'network': {'type': 'EDSR'}}  # the caller's dict is untouched
    with pytest.raises(OptionError, match=r"'teachers' is a list of 2 entries: index it with 0 to 1, not '2'"):
        apply_overrides(options, ['teachers:2:self_ensemble=true'])
    with pytest.raises(OptionError, match=r"not 'rlfn'"):
        apply_overrides(options, ['teachers:rlfn:self_ensemble=true'])
    with pytest.raises(OptionError, match="'name' is not a block or list of options"):
        apply_overrides(options, ['teachers:0:name:first=x'])


def test_command_line_accepts_torchrun_local_rank():
    parser = build_argument_parser()
    assert parser.parse_args(['-opt', 'x.yml', '--local-rank=3']).local_rank == 3
    assert parser.parse_args(['-opt', 'x.yml', '--local_rank', '2']).local_rank == 2


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(OptionError, match='does not exist'):
        load_option_file(str(tmp_path / 'nothing.yml'))
    broken = tmp_path / 'broken.yml'
    broken.write_text('name: [unclosed\n')
    with pytest.raises(OptionError, match='not valid YAML'):
        load_option_file(str(broken))


OPTION_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, 'options', '**', '*.yml'), recursive=True))


@pytest.mark.parametrize('path', OPTION_FILES, ids=[os.path.relpath(p, REPO_ROOT) for p in OPTION_FILES])
def test_every_option_file_validates_and_builds(path):
    """Each shipped option file validates (files not required) and its network builds with the parameter count
    its arch's published structure gives (tests/param_formulas.py): a misread option (a block count, a head, an
    upsampler) changes the count."""
    from basicsr.archs import build_network

    from param_formulas import expected_parameters

    with open(path, encoding='utf-8') as handle:
        raw = yaml.safe_load(handle)
    is_train = not os.path.basename(path).startswith('test_')
    validated = validate_options(raw, is_train=is_train, check_files=False, root=REPO_ROOT, source=path)
    network_options = validated.to_basicsr_dict()['network_g']
    network = build_network(dict(network_options))
    expected = expected_parameters(dict(network_options))
    assert expected is not None, f'no parameter formula or released count for {network_options}'
    assert sum(p.numel() for p in network.parameters()) == expected


def test_parameter_formulas_give_the_papers_counts():
    """The formulas of tests/param_formulas.py against the papers' tables (rounded as printed)."""
    from param_formulas import dctswin, edgesrn, edsr, rcan, rfdn, swinir

    assert edsr(64, 16, 4) == 1_517_571  # EDSR baseline, 1.5M (Lim et al., Table 1)
    assert round(edsr(256, 32, 4) / 1e6, 1) == 43.1  # EDSR x4, 43M
    assert round(rcan(64, 10, 20, 4) / 1e6, 1) == 15.6  # RCAN, ~16M (Zhang et al., Fig. 1: 15.6M)
    assert round(swinir(180, [6] * 6, [6] * 6, 8, 2, 4, 'pixelshuffle') / 1e6, 1) == 11.9  # SwinIR x4, 11.9M
    # SwinIR-light: the paper's 878K / 897K leave out the relative-position bias tables (24 x 225 x 6 = 32,400).
    light_tables = 24 * 15 ** 2 * 6
    assert round((swinir(60, [6] * 4, [6] * 4, 8, 2, 2, 'pixelshuffledirect') - light_tables) / 1e3) == 878
    assert round((swinir(60, [6] * 4, [6] * 4, 8, 2, 4, 'pixelshuffledirect') - light_tables) / 1e3) == 897
    assert dctswin(3, 24, 4, 2, 8, 6, 2., 4) == 117_360  # MTKD's KA network, docs/dctswin.md
    assert edgesrn() == 7_345_475  # the DTKD authors' released EdgeSRN_x4.pth
    assert rfdn(50, 4, 4) == 433_448 and rfdn(64, 4, 4) == 704_560  # RFDN_AIM.pth, the DTKD RFDN students
