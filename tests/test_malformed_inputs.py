"""The malformed-input suite: what a new user gets wrong, and what mtkd answers.

Each case runs the real entry point (``run_pipeline`` of ``mtkd/train.py`` / ``mtkd/test.py``, in process, or a
script's ``main``) on one malformed input and checks the message (it names the thing and the fix), the exit
status, that no traceback is printed, and that nothing was written where it should not be. docs/options.md
counts the cases (``MALFORMED_CASES``) and how many end in a bare traceback (none).
"""
from __future__ import annotations

import json
import os
import stat
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml
from skimage import data as skimage_data

import basicsr.test as basicsr_test
import basicsr.train as basicsr_train
from basicsr.archs import build_network

from mtkd.config import OptionError, validate_options
from mtkd.config.cli import init_distributed, load_option_file, resolve_num_gpu, run_pipeline
from mtkd.utils.errors import TRACEBACK_VARIABLE, MtkdError

from conftest import REPO_ROOT, load_script

SCALE = 2
TINY_EDSR = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 1, 'upscale': SCALE}
METRICS = {'psnr': {'type': 'calculate_psnr', 'crop_border': SCALE, 'test_y_channel': True}}
NAMES = ('astronaut', 'chelsea', 'coffee')


def write_set(root, scale=SCALE, hr_size=48):
    """``root/HR`` and ``root/LR_bicubic/X<scale>`` with three photo crops, the benchmark layout."""
    (root / 'HR').mkdir(parents=True, exist_ok=True)
    (root / 'LR_bicubic' / f'X{scale}').mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        hr = cv2.cvtColor(np.ascontiguousarray(getattr(skimage_data, name)()[100:100 + hr_size, 100:100 + hr_size]),
                          cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(root / 'HR' / f'{name}.png'), hr)
        cv2.imwrite(str(root / 'LR_bicubic' / f'X{scale}' / f'{name}x{scale}.png'),
                    cv2.resize(hr, (hr_size // scale, hr_size // scale), interpolation=cv2.INTER_AREA))
    return root


@pytest.fixture
def tiny_set(tmp_path):
    root = write_set(tmp_path / 'datasets' / 'Tiny')
    write_set(root, scale=4)  # an X4 folder beside X2, as in the shared benchmarks
    return root


def paired(root, name='Tiny', scale=SCALE, **extra):
    return {'name': name, 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'HR'),
            'dataroot_lq': str(root / 'LR_bicubic' / f'X{scale}'), 'filename_tmpl': f'{{}}x{scale}', **extra}


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / 'tiny.pth'
    torch.save({'params': build_network(dict(TINY_EDSR)).state_dict()}, path)
    return path


def test_options(tiny_set, tiny_weights, **changes):
    options = {'name': 'malformed_test', 'model_type': 'PlainSRModel', 'scale': SCALE, 'num_gpu': 0,
               'datasets': {'test_1': paired(tiny_set)}, 'network_g': dict(TINY_EDSR),
               'path': {'pretrain_network_g': str(tiny_weights)}, 'val': {'metrics': METRICS}}
    options.update(changes)
    return options


test_options.__test__ = False  # a helper, not a test


def train_options(tiny_set, total_iter=4, **changes):
    options = {'name': 'malformed_train', 'model_type': 'PlainSRModel', 'scale': SCALE, 'num_gpu': 0,
               'manual_seed': 1,
               'datasets': {'train': paired(tiny_set, gt_size=16, batch_size_per_gpu=2, num_worker_per_gpu=0,
                                                     dataset_enlarge_ratio=4),
                            'val': paired(tiny_set, 'TinyVal')},
               'network_g': dict(TINY_EDSR),
               'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3},
                         'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                         'total_iter': total_iter, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
               'val': {'val_freq': 100, 'metrics': METRICS},
               'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False, 'loss_jsonl': True}}
    options.update(changes)
    return options


class Outcome:
    """Exit status and stderr of one entry-point run."""

    def __init__(self, code, err):
        self.code, self.err = code, err

    def refused(self, *fragments, code=2):
        assert self.code == code, f'exit status {self.code}, stderr:\n{self.err}'
        assert 'Traceback' not in self.err, self.err
        for fragment in fragments:
            assert fragment in self.err, f'{fragment!r} not in:\n{self.err}'
        return self


def run_entry(monkeypatch, capsys, tmp_path, pipeline, options=None, *extra, text=None):
    """Run ``pipeline`` (BasicSR's train/test pipeline through mtkd's entry) on ``options`` written as YAML
    (or on the raw ``text``); returns the :class:`Outcome`."""
    path = tmp_path / 'options.yml'
    path.write_text(text if text is not None else yaml.safe_dump(options))
    monkeypatch.setattr(sys, 'argv', ['mtkd', '-opt', str(path), *extra])
    monkeypatch.delenv(TRACEBACK_VARIABLE, raising=False)
    capsys.readouterr()
    try:
        run_pipeline(pipeline, str(tmp_path))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return Outcome(code, capsys.readouterr().err)


def written(tmp_path, folder):
    return (tmp_path / folder).exists() and any((tmp_path / folder).iterdir())


# ---- silent wrong results -------------------------------------------------------------------------------------
def test_x2_model_on_an_x4_folder_is_refused_before_any_score(tmp_path, tiny_set, tiny_weights, monkeypatch, capsys):
    options = test_options(tiny_set, tiny_weights, datasets={'test_1': paired(tiny_set, scale=4)})
    options['datasets']['test_1']['filename_tmpl'] = '{}x4'
    run_entry(monkeypatch, capsys, tmp_path, basicsr_test.test_pipeline, options).refused(
        "datasets.test_1 ('Tiny'): 3 problem(s)", 'is 48x48 but its LR', 'is 12x12', 'at scale 2 the HR must be 24x24')
    assert not written(tmp_path, 'results')  # no metrics.json with 11 dB in it


def test_one_mis_sized_pair_in_a_test_folder_is_named(tmp_path, tiny_set, tiny_weights, monkeypatch, capsys):
    lr = tiny_set / 'LR_bicubic' / 'X2' / 'coffeex2.png'
    cv2.imwrite(str(lr), np.zeros((20, 24, 3), np.uint8))
    run_entry(monkeypatch, capsys, tmp_path, basicsr_test.test_pipeline, test_options(tiny_set, tiny_weights)).refused(
        '1 problem(s)', f'HR {tiny_set / "HR" / "coffee.png"} is 48x48 but its LR {lr} is 24x20')
    assert not written(tmp_path, 'results')


def test_a_wrong_validation_folder_stops_training_before_iteration_one(tmp_path, tiny_set, monkeypatch, capsys):
    options = train_options(tiny_set)
    options['datasets']['val'] = dict(paired(tiny_set, 'TinyVal', scale=4), filename_tmpl='{}x2')
    run_entry(monkeypatch, capsys, tmp_path, basicsr_train.train_pipeline, options).refused(
        "datasets.val ('TinyVal')", 'has no LR partner', 'nothing was trained')
    assert not (tmp_path / 'experiments').exists()


def test_a_training_image_smaller_than_the_patch_is_named(tmp_path, tiny_set, monkeypatch, capsys):
    options = train_options(tiny_set)
    options['datasets']['train']['gt_size'] = 64
    run_entry(monkeypatch, capsys, tmp_path, basicsr_train.train_pipeline, options).refused(
        'smaller than the training patch (gt_size 64', 'skip_images_smaller_than_patch')


@pytest.mark.parametrize('change, fragments', [
    ({'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': -1}},
     ['train.scheduler.gamma', 'greater than 0']),
    ({'scheduler': {'type': 'MultiStepLR', 'milestones': 420}}, ['train.scheduler.milestones', 'valid list']),
    ({'scheduler': {'type': 'MultiStepLR', 'milestones': [300, 100]}}, ['milestones must be strictly increasing']),
    ({'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9]}}, ['train.optim_g.betas']),
    ({'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 1.5]}}, ['train.optim_g.betas', 'less than 1']),
    ({'optim_g': {'type': 'Adam', 'lr': 1e-3, 'eps': 0}}, ['train.optim_g.eps', 'greater than 0']),
    ({'optim_g': {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': -0.1}}, ['train.optim_g.weight_decay']),
    ({'warmup_iter': 10}, ['train.warmup_iter', 'from 0 to total_iter - 1 (3)']),
    ({'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [2], 'restart_weights': [1]}},
     ['periods add up to 2 iterations but total_iter is 4']),
    ({'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [2, 2], 'restart_weights': [1]}},
     ['one weight per period']),
    ({'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'restarts': [0, 50]}}, ['one weight per restart']),
], ids=['gamma', 'milestones-int', 'milestones-unsorted', 'betas-one', 'betas-range', 'eps', 'weight-decay',
        'warmup', 'cosine-short', 'cosine-weights', 'restart-weights'])
def test_schedule_and_optimizer_arguments_are_range_checked(tmp_path, tiny_set, monkeypatch, capsys, change,
                                                            fragments):
    options = train_options(tiny_set)
    options['train'].update(change)
    run_entry(monkeypatch, capsys, tmp_path, basicsr_train.train_pipeline, options).refused(*fragments)
    assert not (tmp_path / 'experiments').exists()


def test_duplicate_yaml_keys_name_both_lines(tmp_path, tiny_set, tiny_weights, monkeypatch, capsys):
    text = yaml.safe_dump(test_options(tiny_set, tiny_weights), sort_keys=False).replace(
        'scale: 2\n', 'scale: 2\nscale: 4\n', 1)
    line = text.splitlines().index('scale: 2') + 1
    run_entry(monkeypatch, capsys, tmp_path, basicsr_test.test_pipeline, text=text).refused(
        f"key 'scale' is given twice in one block (lines {line} and {line + 1})")


def test_crop_border_other_than_the_scale_is_noted(tiny_set, tiny_weights):
    options = test_options(tiny_set, tiny_weights, val={'metrics': {'psnr': dict(METRICS['psnr'], crop_border=0)}})
    notes = validate_options(options, is_train=False).notes
    assert notes and 'val.metrics.psnr.crop_border is 0 but the scale is 2' in notes[0]
    assert not validate_options(test_options(tiny_set, tiny_weights), is_train=False).notes


def test_late_milestones_are_noted_not_refused(tiny_set):
    notes = validate_options(train_options(tiny_set), is_train=True).notes
    assert any('milestones [100] are at or after total_iter 4' in note for note in notes)


def test_an_absent_optional_test_set_is_left_out_with_the_command(tiny_set, tiny_weights):
    urban = paired(tiny_set.parent / 'Urban100', 'Urban100', optional=True)
    options = test_options(tiny_set, tiny_weights, datasets={'test_1': paired(tiny_set), 'test_4': urban})
    validated = validate_options(options, is_train=False)
    assert list(validated.datasets) == ['test_1'] and 'test_4' not in validated.to_basicsr_dict()['datasets']
    assert any("datasets.test_4 ('Urban100') left out (optional: true): folder" in note and
               'scripts/prepare_benchmark.py' in note for note in validated.notes)
    write_set(tiny_set.parent / 'Urban100')  # once built, it is scored like the others
    assert list(validate_options(options, is_train=False).datasets) == ['test_1', 'test_4']
    with pytest.raises(OptionError, match='every test dataset is optional and absent'):
        validate_options(test_options(tiny_set, tiny_weights, datasets={'test_1': dict(
            urban, dataroot_gt=str(tiny_set / 'missing'))}), is_train=False)


def test_optional_is_refused_for_a_training_set(tiny_set):
    options = train_options(tiny_set)
    options['datasets']['train']['optional'] = True
    with pytest.raises(OptionError, match='datasets.train.optional: only validation and test datasets can be optional'):
        validate_options(options, is_train=True)


def test_every_weights_file_of_a_loss_or_metric_block_is_checked(tiny_set, tiny_weights):
    options = train_options(tiny_set)
    options['train']['perceptual_opt'] = {'type': 'VGGPerceptualLoss', 'vgg_weights': 'pretrained/vgg/none.pth'}
    with pytest.raises(OptionError, match=r'train.perceptual_opt.vgg_weights: vgg_weights file pretrained/vgg/none.pth '
                                          r'not found; .*https://download.pytorch.org/models/vgg19-dcbd5c4.pth'):
        validate_options(options, is_train=True, root=str(tiny_set))
    lpips = {'type': 'calculate_lpips', 'crop_border': SCALE, 'backbone_weights': 'pretrained/lpips/none.pth'}
    options = test_options(tiny_set, tiny_weights, val={'metrics': {**METRICS, 'lpips': lpips}})
    with pytest.raises(OptionError, match='val.metrics.lpips.backbone_weights: backbone_weights file'):
        validate_options(options, is_train=False)
    options['val']['metrics']['lpips']['optional'] = True  # left to the run, which leaves LPIPS out with a warning
    validate_options(options, is_train=False)


def test_adan_is_an_optimizer_of_every_model(tiny_set):
    options = train_options(tiny_set)
    options['train']['optim_g'] = {'type': 'Adan', 'lr': 1e-3, 'betas': [0.98, 0.92, 0.99]}
    validate_options(options, is_train=True)
    options['train']['optim_g']['betas'] = [0.9, 0.99]
    with pytest.raises(OptionError, match='train.optim_g.betas'):
        validate_options(options, is_train=True)


# ---- messages instead of tracebacks ---------------------------------------------------------------------------
def test_user_errors_print_their_message_alone_and_the_traceback_on_request(tmp_path, monkeypatch, capsys):
    class Refused(MtkdError, ValueError):
        pass

    def pipeline(root):
        raise Refused('the thing, and how to fix it')

    monkeypatch.setattr(sys, 'argv', ['mtkd'])
    with pytest.raises(SystemExit) as exit_:
        run_pipeline(pipeline, str(tmp_path))
    assert exit_.value.code == 2 and capsys.readouterr().err == 'mtkd: the thing, and how to fix it\n'
    monkeypatch.setenv(TRACEBACK_VARIABLE, '1')
    with pytest.raises(Refused):
        run_pipeline(pipeline, str(tmp_path))

    def bug(root):
        raise KeyError('a bug keeps its traceback')

    monkeypatch.delenv(TRACEBACK_VARIABLE)
    with pytest.raises(KeyError):
        run_pipeline(bug, str(tmp_path))


@pytest.mark.parametrize('content, fragment', [(b'', 'is empty (0 bytes)'), (b'not an image at all', 'Cannot decode'),
                                               (None, 'Cannot decode')], ids=['zero-bytes', 'text', 'truncated'])
def test_unreadable_test_images_are_named(tmp_path, tiny_set, tiny_weights, monkeypatch, capsys, content, fragment):
    lr = tiny_set / 'LR_bicubic' / 'X2' / 'chelseax2.png'
    lr.write_bytes(lr.read_bytes()[:60] if content is None else content)
    run_entry(monkeypatch, capsys, tmp_path, basicsr_test.test_pipeline, test_options(tiny_set, tiny_weights)).refused(
        str(lr), fragment)


def test_an_image_that_breaks_during_training_is_named(tmp_path, tiny_set):
    """After the start-up check: BasicSR's dataset itself names a file that became unreadable."""
    from basicsr.data.paired_image_dataset import PairedImageDataset

    from mtkd.metrics.evaluation import ImageReadError

    options = validate_options(test_options(tiny_set, None), is_train=False, check_files=False).to_basicsr_dict()
    dataset_options = dict(options['datasets']['test_1'], phase='test', scale=SCALE)
    dataset = PairedImageDataset(dataset_options)
    (tiny_set / 'HR' / 'astronaut.png').write_bytes(b'')
    index = [os.path.basename(pair['gt_path']) for pair in dataset.paths].index('astronaut.png')
    with pytest.raises(ImageReadError, match=r'astronaut\.png is empty'):
        dataset[index]


def test_a_single_image_dataset_without_meta_file_is_built(tiny_set):
    """BasicSR's SingleImageDataset opens ``meta_info_file`` whenever the key exists: an unset one stays out."""
    from basicsr.data.single_image_dataset import SingleImageDataset

    options = test_options(tiny_set, None, datasets={'test_1': {
        'name': 'LROnly', 'type': 'SingleImageDataset', 'dataroot_lq': str(tiny_set / 'LR_bicubic' / 'X2')}})
    dataset = validate_options(options, is_train=False, check_files=False).to_basicsr_dict()['datasets']['test_1']
    assert 'meta_info_file' not in dataset
    assert len(SingleImageDataset(dict(dataset, phase='test'))) == 3


@pytest.mark.parametrize('entry, fragment', [
    ('train:total_iter=[3', "--force_yml 'train:total_iter=[3': the value '[3' is not valid YAML"),
    ('manual_seed=-1', 'manual_seed: Input should be greater than or equal to 0'),
    ('name=../../tmp/x', "the name '../../tmp/x' must be one folder name"),
    ('num_gpu=2', 'num_gpu is 2 but this machine has no CUDA GPU'),
    ('scale=5', 'cannot be built with these arguments: scale 5 is not supported'),
], ids=['yaml-syntax', 'seed', 'name-path', 'num-gpu-no-cuda', 'scale-5'])
def test_command_line_and_option_mistakes_get_one_paragraph(tmp_path, tiny_set, monkeypatch, capsys, entry, fragment):
    if entry == 'num_gpu=2' and torch.cuda.is_available():
        pytest.skip('checks a machine without CUDA')
    options = train_options(tiny_set)
    extra = ['--force_yml', entry] + (['network_g:upscale=5'] if entry == 'scale=5' else [])
    run_entry(monkeypatch, capsys, tmp_path, basicsr_train.train_pipeline, options, *extra).refused(fragment)
    assert not (tmp_path / 'experiments').exists() and not (tmp_path.parent / 'tmp' / 'x').exists()


def test_several_gpus_without_a_launcher_name_the_torchrun_command(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
    with pytest.raises(OptionError, match=r'num_gpu 2 without a launcher.*torchrun --nproc-per-node 2 mtkd/train.py '
                                          r'-opt x.yml --launcher pytorch'):
        resolve_num_gpu(2, 'none', 'x.yml')
    assert resolve_num_gpu('auto', 'none', 'x.yml')[0] == 1  # not BasicSR's DataParallel over all four
    assert 'torchrun --nproc-per-node 4' in resolve_num_gpu('auto', 'none', 'x.yml')[1][0]
    assert resolve_num_gpu('auto', 'pytorch', 'x.yml') == (4, [])
    with pytest.raises(OptionError, match='has 4 CUDA GPU'):
        resolve_num_gpu(8, 'pytorch', 'x.yml')


def test_nccl_on_a_machine_without_cuda_falls_back_to_gloo(monkeypatch, capsys):
    import torch.distributed as dist

    if torch.cuda.is_available():
        pytest.skip('checks a machine without CUDA')
    chosen = []
    monkeypatch.setattr(dist, 'init_process_group', lambda backend=None, **kwargs: chosen.append(backend))
    init_distributed('pytorch', 'nccl')
    assert chosen == ['gloo'] and 'using gloo' in capsys.readouterr().err


@pytest.mark.parametrize('blocker', ['file', 'read-only'])
def test_an_unwritable_experiments_folder_is_refused_at_start(tmp_path, tiny_set, monkeypatch, capsys, blocker):
    options = train_options(tiny_set)
    if blocker == 'file':
        (tmp_path / 'occupied').write_text('a file where a folder should be')
        options['path'] = {'experiments_root': str(tmp_path / 'occupied' / 'run')}
        fragment = 'is a file, not a folder'
    else:
        import mtkd.config.cli as cli

        original = os.access
        monkeypatch.setattr(cli.os, 'access', lambda path, mode: False if str(path) == str(tmp_path) else
                            original(path, mode))
        fragment = f'{tmp_path} is not writable'
    run_entry(monkeypatch, capsys, tmp_path, basicsr_train.train_pipeline, options).refused(
        'path.experiments_root: cannot write the run\'s folder', fragment)


def test_make_table_without_results_says_which_test_to_run(tmp_path, capsys, monkeypatch):
    make_table = load_script('make_table')
    monkeypatch.delenv(TRACEBACK_VARIABLE, raising=False)
    monkeypatch.setattr(sys, 'argv', ['make_table'])
    assert make_table.main([str(tmp_path / 'results' / 'test_imdn_x4')]) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    assert 'does not exist: test the model first with `python mtkd/test.py -opt options/test_imdn_x4.yml`' in err
    (tmp_path / 'broken').mkdir()
    (tmp_path / 'broken' / 'metrics.json').write_text('{"datasets": ')
    assert make_table.main([str(tmp_path / 'broken')]) == 2
    assert 'is not valid JSON' in capsys.readouterr().err


# ---- resume -----------------------------------------------------------------------------------------------------
@pytest.fixture
def trained(tmp_path, tiny_set, monkeypatch, capsys):
    """A 4-iteration run with states at 2 and 4 (and losses.jsonl)."""
    options = train_options(tiny_set)
    assert run_entry(monkeypatch, capsys, tmp_path, basicsr_train.train_pipeline, options).code == 0
    return tmp_path / 'experiments' / 'malformed_train', options


def test_a_corrupt_newest_state_falls_back_to_the_previous_one(tmp_path, tiny_set, trained, monkeypatch, capsys):
    experiment, options = trained
    (experiment / 'training_states' / '4.state').write_bytes(b'PK\x03\x04 cut short')
    options['train']['total_iter'] = 6
    outcome = run_entry(monkeypatch, capsys, tmp_path, basicsr_train.train_pipeline, options, '--auto_resume')
    assert outcome.code == 0, outcome.err
    assert f"training state {experiment / 'training_states' / '4.state'} cannot be read" in outcome.err
    assert 'trying the previous training state' in outcome.err
    state = torch.load(experiment / 'training_states' / '6.state', weights_only=True)
    assert {int(s['step']) for s in state['optimizers'][0]['state'].values()} == {6}  # 2 (resumed) + 4
    iterations = [json.loads(line)['iter'] for line in (experiment / 'losses.jsonl').read_text().splitlines()]
    assert iterations == [1, 2, 3, 4, 5, 6]  # 3 and 4 of the first run were dropped, then logged again


def test_a_truncated_resume_state_is_named(tmp_path, tiny_set, trained, monkeypatch, capsys):
    experiment, options = trained
    state = experiment / 'training_states' / '4.state'
    state.write_bytes(state.read_bytes()[:100])
    options['path'] = {'resume_state': str(state)}
    options['train']['total_iter'] = 6
    run_entry(monkeypatch, capsys, tmp_path, basicsr_train.train_pipeline, options).refused(
        f'training state {state} cannot be read', 'truncated or corrupt')


def test_no_complete_state_is_a_message_not_a_crash(tmp_path, tiny_set, trained, monkeypatch, capsys):
    experiment, options = trained
    for name in ('2.state', '4.state'):
        (experiment / 'training_states' / name).write_bytes(b'')
    run_entry(monkeypatch, capsys, tmp_path, basicsr_train.train_pipeline, options, '--auto_resume').refused(
        '--auto_resume found no complete training state', 'Delete that folder to start afresh')


def test_a_state_of_another_experiment_resumes_its_own_weights(tmp_path, tiny_set, trained, monkeypatch, capsys):
    experiment, options = trained
    options.update(name='continued')
    options['path'] = {'resume_state': str(experiment / 'training_states' / '2.state')}
    options['train']['total_iter'] = 4
    outcome = run_entry(monkeypatch, capsys, tmp_path, basicsr_train.train_pipeline, options)
    assert outcome.code == 0, outcome.err
    assert f"resuming the training state and weights of {experiment} into experiment 'continued'" in outcome.err
    continued = tmp_path / 'experiments' / 'continued'
    state = torch.load(continued / 'training_states' / '4.state', weights_only=True)
    assert state['iter'] == 4 and state['name'] == 'continued'


# ---- hints -------------------------------------------------------------------------------------------------------
def test_missing_teacher_weights_name_the_exact_command():
    options = load_option_file(os.path.join(REPO_ROOT, 'options', 'stage1_ka_x4.yml'))
    with pytest.raises(OptionError) as error:
        validate_options(options, is_train=True, root=REPO_ROOT)
    message = str(error.value)
    if 'teachers.0.weights' not in message:
        pytest.skip('the SwinIR teacher weights are present here')
    assert ('`python scripts/download_pretrained.py --only 001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth '
            '--allow-unverified`') in message
    assert 'RCAN_BIX4.pt has no direct download: get it by hand from https://www.dropbox.com' in message


def test_weights_trained_by_mtkd_name_the_training_option_file(tmp_path):
    options = load_option_file(os.path.join(REPO_ROOT, 'options', 'test_rcan_light_x4.yml'))
    options['path']['pretrain_network_g'] = 'experiments/stage2_rcan_light_x4/models/net_g_missing.pth'
    with pytest.raises(OptionError, match=r'trained with mtkd, not downloaded: run `python mtkd/train.py -opt '
                                          r'options/stage2_rcan_light_x4.yml` first'):
        validate_options(options, is_train=False, root=REPO_ROOT)


# ---- files and paths ----------------------------------------------------------------------------------------------
def test_written_files_get_the_usual_mode(tmp_path):
    from mtkd.utils.fileio import atomic_torch_save, atomic_write_json

    previous = os.umask(0o022)
    try:
        atomic_torch_save({'x': torch.zeros(1)}, str(tmp_path / 'a.pth'))
        atomic_write_json({'a': 1}, str(tmp_path / 'a.json'))
        assert stat.S_IMODE(os.stat(tmp_path / 'a.pth').st_mode) == 0o644
        assert stat.S_IMODE(os.stat(tmp_path / 'a.json').st_mode) == 0o644
        os.chmod(tmp_path / 'a.json', 0o664)
        atomic_write_json({'a': 2}, str(tmp_path / 'a.json'))  # a replaced file keeps its mode
        assert stat.S_IMODE(os.stat(tmp_path / 'a.json').st_mode) == 0o664
    finally:
        os.umask(previous)


def test_results_root_chooses_where_a_test_run_writes(tmp_path, tiny_set, tiny_weights, monkeypatch, capsys):
    options = test_options(tiny_set, tiny_weights)
    options['path']['results_root'] = str(tmp_path / 'elsewhere' / 'run1')
    outcome = run_entry(monkeypatch, capsys, tmp_path, basicsr_test.test_pipeline, options)
    assert outcome.code == 0, outcome.err
    assert (tmp_path / 'elsewhere' / 'run1' / 'metrics.json').is_file()
    assert not (tmp_path / 'results').exists()


def test_infer_into_its_own_input_folder_skips_its_outputs(tmp_path, tiny_set, tiny_weights, capsys):
    infer = load_script('infer')
    folder = tiny_set / 'LR_bicubic' / 'X2'
    arguments = ['--arch', json.dumps(TINY_EDSR), '--weights', str(tiny_weights), '--input', str(folder),
                 '--output', str(folder), '--no-progress', '--device', 'cpu']
    assert infer.main(arguments) == 0
    assert infer.main(arguments) == 0  # the second run must not super-resolve the first run's outputs
    names = sorted(os.listdir(folder))
    assert names == sorted([f'{name}x2.png' for name in NAMES] + [f'{name}x2_EDSR_x2.png' for name in NAMES])
    assert infer.main(arguments + ['--suffix', '']) == 2
    assert 'is an input image and would be overwritten' in capsys.readouterr().err


def test_exported_safetensors_load_through_the_original_option_file(tmp_path, tiny_set, tiny_weights):
    from mtkd.tools.export import save_safetensors
    from mtkd.weights.loading import load_weights

    network = build_network(dict(TINY_EDSR))
    load_weights(network, str(tiny_weights), param_key='params')
    exported = save_safetensors(network, str(tmp_path / 'tiny.safetensors'), {'key_format': 'basicsr'})
    fresh = build_network(dict(TINY_EDSR))
    load_weights(fresh, exported, param_key='params')  # the option file says param_key_g: params
    for key, value in network.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_the_real_entry_point_prints_one_message_and_exits_2(tmp_path, tiny_set, tiny_weights):
    """The same path through ``python mtkd/test.py`` in a fresh process (no pytest in between)."""
    import subprocess

    text = yaml.safe_dump(test_options(tiny_set, tiny_weights), sort_keys=False).replace('num_gpu: 0\n',
                                                                                          'num_gpu: 0\nnum_gpu: 0\n')
    (tmp_path / 'dup.yml').write_text(text)
    env = {key: value for key, value in os.environ.items() if key != TRACEBACK_VARIABLE}
    process = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'mtkd', 'test.py'), '-opt',
                              str(tmp_path / 'dup.yml')], capture_output=True, text=True, env=dict(env, OMP_NUM_THREADS='1'),
                             timeout=300)
    assert process.returncode == 2 and 'Traceback' not in process.stderr, process.stderr
    assert "key 'num_gpu' is given twice in one block" in process.stderr


#: The cases above, counted for docs/options.md (a parametrized test counts each of its cases).
MALFORMED_CASES = 49


def test_the_case_count_in_the_docs_is_this_suites():
    """docs/options.md states how many malformed cases there are: count this module's tests and their cases."""
    module = sys.modules[__name__]
    count = 0
    for name, function in vars(module).items():
        if not (name.startswith('test_') and callable(function)) or name in ('test_options',
                                                                             'test_the_case_count_in_the_docs_is_this_suites'):
            continue
        marks = [mark for mark in getattr(function, 'pytestmark', []) if mark.name == 'parametrize']
        count += int(np.prod([len(mark.args[1]) for mark in marks])) if marks else 1
    assert count == MALFORMED_CASES
    with open(os.path.join(REPO_ROOT, 'docs', 'options.md'), encoding='utf-8') as handle:
        assert f'**{MALFORMED_CASES} cases; 0 end in a bare traceback**' in handle.read()
