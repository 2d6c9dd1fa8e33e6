"""End to end through BasicSR's pipelines: train, resume on CPU, test with metrics.json, load errors."""
from __future__ import annotations

import json
import os
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

from mtkd.config.cli import run_pipeline
from mtkd.metrics.evaluation import evaluate_on_benchmark
from mtkd.models.plain_sr_model import PlainSRModel
from mtkd.transforms.self_ensemble import self_ensemble
from mtkd.weights.loading import WeightLoadError

SCALE = 2
TINY_EDSR = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': SCALE}


@pytest.fixture
def tiny_set(tmp_path):
    """Three real photo crops (48x48 HR, 24x24 LR) in the benchmark layout HR/ and LR_bicubic/X2/."""
    root = tmp_path / 'datasets' / 'Tiny'
    (root / 'HR').mkdir(parents=True)
    (root / 'LR_bicubic' / f'X{SCALE}').mkdir(parents=True)
    for name in ('astronaut', 'chelsea', 'coffee'):
        rgb = getattr(skimage_data, name)()[100:148, 100:148]
        hr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(root / 'HR' / f'{name}.png'), hr)
        cv2.imwrite(str(root / 'LR_bicubic' / f'X{SCALE}' / f'{name}x{SCALE}.png'),
                    cv2.resize(hr, (24, 24), interpolation=cv2.INTER_AREA))
    return root


def paired(root, name, phase_options=None):
    return {'name': name, 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'HR'),
            'dataroot_lq': str(root / 'LR_bicubic' / f'X{SCALE}'), 'filename_tmpl': f'{{}}x{SCALE}',
            **(phase_options or {})}


METRICS = {'psnr': {'type': 'calculate_psnr', 'crop_border': SCALE, 'test_y_channel': True},
           'ssim': {'type': 'calculate_ssim', 'crop_border': SCALE, 'test_y_channel': True}}


def train_options(tiny_set, total_iter):
    return {
        'name': 'tiny_train', 'model_type': 'PlainSRModel', 'scale': SCALE, 'num_gpu': 0, 'manual_seed': 3,
        'datasets': {'train': paired(tiny_set, 'Tiny', {'gt_size': 16, 'batch_size_per_gpu': 2,
                                                         'num_worker_per_gpu': 0, 'dataset_enlarge_ratio': 4}),
                     'val': paired(tiny_set, 'TinyVal')},
        'network_g': TINY_EDSR,
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [100]},
                  'total_iter': total_iter, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'val': {'val_freq': 2, 'metrics': METRICS},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
    }


def run(monkeypatch, pipeline, root, options, *extra):
    path = root / f"{options['name']}.yml"
    path.write_text(yaml.safe_dump(options))
    monkeypatch.setattr(sys, 'argv', ['mtkd', '-opt', str(path), *extra])
    run_pipeline(pipeline, str(root))


def test_train_resume_on_cpu_then_test_writes_per_image_metrics(tmp_path, tiny_set, monkeypatch):
    run(monkeypatch, basicsr_train.train_pipeline, tmp_path, train_options(tiny_set, 4))
    experiment = tmp_path / 'experiments' / 'tiny_train'
    assert (experiment / 'models' / 'net_g_4.pth').is_file()
    assert not [f for f in os.listdir(experiment / 'models') if f.endswith('.tmp')]
    state = torch.load(experiment / 'training_states' / '4.state', weights_only=True)
    assert state['iter'] == 4

    # Resume (a CUDA-only code path in BasicSR) on this CPU machine: the Adam state continues from step 4.
    run(monkeypatch, basicsr_train.train_pipeline, tmp_path, train_options(tiny_set, 6), '--auto_resume')
    resumed = torch.load(experiment / 'training_states' / '6.state', weights_only=True)
    adam_steps = {int(s['step']) for s in resumed['optimizers'][0]['state'].values()}
    assert adam_steps == {6}

    checkpoint = torch.load(experiment / 'models' / 'net_g_latest.pth', weights_only=True)
    assert set(checkpoint) == {'params'}

    test_options = {'name': 'tiny_test', 'model_type': 'PlainSRModel', 'scale': SCALE, 'num_gpu': 0,
                    'datasets': {'test_1': paired(tiny_set, 'Tiny')}, 'network_g': TINY_EDSR,
                    'path': {'pretrain_network_g': str(experiment / 'models' / 'net_g_latest.pth')},
                    'val': {'save_img': True, 'metrics': METRICS}}
    run(monkeypatch, basicsr_test.test_pipeline, tmp_path, test_options)
    with open(tmp_path / 'results' / 'tiny_test' / 'metrics.json') as handle:
        metrics = json.load(handle)

    # The same weights through mtkd.metrics.evaluation give the same per-image numbers, digit for digit.
    network = build_network(dict(TINY_EDSR))
    network.load_state_dict(checkpoint['params'])
    expected = evaluate_on_benchmark(network, str(tiny_set), SCALE)
    images = metrics['datasets']['Tiny']['images']
    assert set(images) == {'astronaut', 'chelsea', 'coffee'}
    for name, score in expected.items():
        assert images[name]['psnr'] == pytest.approx(score.psnr, abs=1e-9)
        assert images[name]['ssim'] == pytest.approx(score.ssim, abs=1e-9)
    assert metrics['datasets']['Tiny']['mean']['psnr'] == pytest.approx(
        np.mean([s.psnr for s in expected.values()]), abs=1e-9)
    assert (tmp_path / 'results' / 'tiny_test' / 'visualization' / 'Tiny' / 'coffee_tiny_test.png').is_file()


def test_test_run_with_self_ensemble_scores_the_mean_of_eight_runs(tmp_path, tiny_set, monkeypatch):
    torch.manual_seed(5)
    network = build_network(dict(TINY_EDSR)).eval()
    weights = tmp_path / 'tiny.pth'
    torch.save({'params': network.state_dict()}, weights)
    test_options = {'name': 'tiny_plus', 'model_type': 'PlainSRModel', 'scale': SCALE, 'num_gpu': 0,
                    'datasets': {'test_1': paired(tiny_set, 'Tiny')}, 'network_g': TINY_EDSR,
                    'path': {'pretrain_network_g': str(weights)},
                    'val': {'metrics': METRICS, 'self_ensemble': True}}
    run(monkeypatch, basicsr_test.test_pipeline, tmp_path, test_options)
    with open(tmp_path / 'results' / 'tiny_plus' / 'metrics.json') as handle:
        metrics = json.load(handle)
    assert metrics['self_ensemble'] is True

    class Ensembled(torch.nn.Module):
        def forward(self, images):
            return self_ensemble(network, images)

    with torch.no_grad():
        expected, plain = evaluate_on_benchmark(Ensembled(), str(tiny_set), SCALE), \
            evaluate_on_benchmark(network, str(tiny_set), SCALE)
    images = metrics['datasets']['Tiny']['images']
    for name, score in expected.items():
        assert images[name]['psnr'] == pytest.approx(score.psnr, abs=1e-9)
        assert images[name]['psnr'] != pytest.approx(plain[name].psnr, abs=1e-3)


def test_checkpoint_of_another_scale_is_refused_by_name(tmp_path, tiny_set, monkeypatch, capsys):
    from basicsr.archs import build_network

    other = build_network(dict(TINY_EDSR, upscale=3))
    torch.save({'params': other.state_dict()}, tmp_path / 'x3.pth')
    options = {'name': 'wrong_scale', 'model_type': 'PlainSRModel', 'scale': SCALE, 'num_gpu': 0,
               'datasets': {'test_1': paired(tiny_set, 'Tiny')}, 'network_g': TINY_EDSR,
               'path': {'pretrain_network_g': str(tmp_path / 'x3.pth')}, 'val': {'metrics': METRICS}}
    with pytest.raises(SystemExit) as exit_info:
        run(monkeypatch, basicsr_test.test_pipeline, tmp_path, options)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert 'does not fit EDSR' in message and 'upsample.0.weight' in message and 'shape mismatches' in message


def test_option_typo_ends_in_one_message(tmp_path, tiny_set, monkeypatch, capsys):
    options = train_options(tiny_set, 2)
    options['train']['total_iters'] = 2
    with pytest.raises(SystemExit):
        run(monkeypatch, basicsr_train.train_pipeline, tmp_path, options)
    assert "train.total_iters: unknown key 'total_iters'; did you mean 'total_iter'?" in capsys.readouterr().err
    assert not (tmp_path / 'experiments').exists()  # refused before anything was created


def test_options_blocks_are_not_popped_by_the_model(tiny_set):
    from mtkd.config import validate_options

    options = validate_options(train_options(tiny_set, 2), is_train=True).to_basicsr_dict()
    options.update(dist=False, rank=0, world_size=1, is_train=True, root_path='.')
    model = PlainSRModel(options)
    assert options['train']['optim_g']['type'] == 'Adam' and options['train']['scheduler']['type'] == 'MultiStepLR'
    assert isinstance(model.optimizer_g, torch.optim.Adam)


def test_missing_params_ema_falls_back_and_raw_files_load(tmp_path, tiny_set):
    """EMA start from a raw (official-style) state dict; a file of another arch is refused."""
    from basicsr.archs import build_network
    from mtkd.config import validate_options

    source = build_network(dict(TINY_EDSR))
    torch.save(source.state_dict(), tmp_path / 'raw.pth')
    options = train_options(tiny_set, 2)
    options['train']['ema_decay'] = 0.9
    options['path'] = {'pretrain_network_g': str(tmp_path / 'raw.pth')}
    plain = validate_options(options, is_train=True).to_basicsr_dict()
    plain.update(dist=False, rank=0, world_size=1, is_train=True, root_path='.')
    model = PlainSRModel(plain)
    for name, value in source.state_dict().items():
        assert torch.equal(model.net_g.state_dict()[name], value)
        assert torch.equal(model.net_g_ema.state_dict()[name], value)
    torch.save({'params': {'conv.weight': torch.zeros(1)}}, tmp_path / 'other.pth')
    with pytest.raises(WeightLoadError, match='missing keys'):
        model.load_network(model.net_g, str(tmp_path / 'other.pth'))


def test_shipped_option_file_reproduces_published_set5(tmp_path, monkeypatch):
    """options/test_imdn_x4.yml through mtkd/test.py's pipeline: IMDN x4 on Set5 is 32.210 dB / 0.8948."""
    from conftest import REPO_ROOT, dataset_dir, official_weight

    dataset_dir('Set5')
    official_weight('IMDN_x4.pth')
    with open(os.path.join(REPO_ROOT, 'options', 'test_imdn_x4.yml')) as handle:
        options = yaml.safe_load(handle)
    options['datasets'] = {'test_1': options['datasets']['test_1']}
    options['name'] = f'pytest_imdn_x4_set5_{os.getpid()}'
    path = tmp_path / 'imdn.yml'
    path.write_text(yaml.safe_dump(options))
    monkeypatch.setattr(sys, 'argv', ['mtkd', '-opt', str(path)])
    run_pipeline(basicsr_test.test_pipeline, REPO_ROOT)
    results = os.path.join(REPO_ROOT, 'results', options['name'])
    with open(os.path.join(results, 'metrics.json')) as handle:
        mean = json.load(handle)['datasets']['Set5']['mean']
    import shutil
    shutil.rmtree(results)
    assert mean['psnr'] == pytest.approx(32.210, abs=0.01)
    assert mean['ssim'] == pytest.approx(0.8948, abs=0.0005)
