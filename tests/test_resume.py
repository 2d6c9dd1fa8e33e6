"""Training that survives: a run killed with SIGKILL (or stopped with Ctrl-C) resumes with --auto_resume and its
losses equal those of an uninterrupted run, iteration by iteration (CPU, fixed seed, real processes)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from mtkd.training.resume import restore_rng_states, rng_states

from conftest import REPO_ROOT, write_photo_pairs

SCALE = 2
LAUNCHER = """import sys
sys.path.insert(0, {repo!r})
import mtkd
from mtkd.config.cli import run_pipeline
from basicsr.train import train_pipeline
run_pipeline(train_pipeline, {root!r})
"""


@pytest.fixture
def workspace(tmp_path):
    write_photo_pairs(tmp_path / 'datasets' / 'Tiny', ('astronaut', 'chelsea', 'coffee'))
    (tmp_path / 'launch.py').write_text(LAUNCHER.format(repo=REPO_ROOT, root=str(tmp_path)))
    return tmp_path


def options(workspace, name, total_iter=24):
    root = workspace / 'datasets' / 'Tiny'
    return {'name': name, 'model_type': 'PlainSRModel', 'scale': SCALE, 'num_gpu': 0, 'manual_seed': 7,
            'datasets': {'train': {'name': 'Tiny', 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'HR'),
                                   'dataroot_lq': str(root / 'LR'), 'gt_size': 16, 'batch_size_per_gpu': 2,
                                   'num_worker_per_gpu': 0, 'dataset_enlarge_ratio': 4}},  # 6 iterations per epoch
            'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 2,
                          'upscale': SCALE},
            'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3},
                      'scheduler': {'type': 'MultiStepLR', 'milestones': [10], 'gamma': 0.5},
                      'total_iter': total_iter, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
            'logger': {'print_freq': 1, 'save_checkpoint_freq': 4, 'use_tb_logger': False, 'loss_jsonl': True}}


def start(workspace, opts, *extra):
    path = workspace / f"{opts['name']}.yml"
    path.write_text(yaml.safe_dump(opts))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.Popen([sys.executable, str(workspace / 'launch.py'), '-opt', str(path), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def losses(workspace, name) -> dict[int, float]:
    """The last logged loss of each iteration (a resumed run logs the iterations after its checkpoint again)."""
    values = {}
    with open(workspace / 'experiments' / name / 'losses.jsonl', encoding='utf-8') as handle:
        for line in handle:
            record = json.loads(line)
            values[record['iter']] = record['l_pix']
    return values


def wait_for(path, process, timeout=120):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.time() < deadline, f'{path} did not appear'
        time.sleep(0.02)


def final_weights(workspace, name):
    return torch.load(workspace / 'experiments' / name / 'models' / 'net_g_latest.pth', weights_only=True)['params']


@pytest.fixture
def reference(workspace):
    process = start(workspace, options(workspace, 'reference'))
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-3000:]
    return losses(workspace, 'reference'), final_weights(workspace, 'reference')


def _assert_same_run(workspace, name, reference):
    expected_losses, expected_weights = reference
    got = losses(workspace, name)
    assert sorted(got) == list(range(1, 25))
    with open(workspace / 'experiments' / name / 'losses.jsonl', encoding='utf-8') as handle:
        logged = [json.loads(line)['iter'] for line in handle]
    assert logged == list(range(1, 25))  # the resume dropped the lines of the iterations it replays
    assert got == expected_losses  # exactly, every iteration
    for key, value in final_weights(workspace, name).items():
        assert torch.equal(value, expected_weights[key]), key


def test_sigkill_then_auto_resume_continues_exactly(workspace, reference):
    opts = options(workspace, 'killed')
    process = start(workspace, opts)
    # Iteration 8 is in the second epoch (6 iterations each): the resume must skip 2 batches of epoch 1.
    wait_for(workspace / 'experiments' / 'killed' / 'training_states' / '8.state', process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    states = os.listdir(workspace / 'experiments' / 'killed' / 'training_states')
    assert '24.state' not in states  # really killed before the end
    resumed = start(workspace, opts, '--auto_resume')
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-3000:]
    _assert_same_run(workspace, 'killed', reference)


def test_ctrl_c_saves_a_resumable_state_then_continues_exactly(workspace, reference):
    opts = options(workspace, 'interrupted')
    opts['logger']['save_checkpoint_freq'] = 100  # no periodic checkpoint: only Ctrl-C's
    process = start(workspace, opts)
    wait_for(workspace / 'experiments' / 'interrupted' / 'losses.jsonl', process)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output[-3000:]
    assert 'Interrupted: saved a resumable state at iteration' in output
    states = os.listdir(workspace / 'experiments' / 'interrupted' / 'training_states')
    assert len(states) == 1 and states[0] != '24.state'
    resumed = start(workspace, opts, '--auto_resume')
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-3000:]
    _assert_same_run(workspace, 'interrupted', reference)


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    states = rng_states()
    torch.save({'rng': states}, tmp_path / 's.state')
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_states(torch.load(tmp_path / 's.state', weights_only=True)['rng'])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
