"""Training states of a DDP job keep every rank's random stream, and resume on fewer processes (real 2-process
gloo job, then a 1-process resume)."""
from __future__ import annotations

import os
import subprocess
import sys

import torch
import yaml

from mtkd.training.resume import rank_rng_states

from conftest import REPO_ROOT, write_photo_pairs

LAUNCHER = """import sys
sys.path.insert(0, {repo!r})
import torch
import mtkd
import basicsr.train
import mtkd.training.resume as resume
from mtkd.config.cli import run_pipeline

original = resume.rng_states


def recording_rng_states():  # what each rank hands over when a checkpoint is saved
    states = original()
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    torch.save(states, {root!r} + f'/rng_rank{{rank}}.pth')
    return states


resume.rng_states = recording_rng_states
run_pipeline(basicsr.train.train_pipeline, {root!r})
"""


def test_each_rank_saves_its_own_stream_and_a_smaller_job_resumes(tmp_path):
    root = write_photo_pairs(tmp_path / 'data', ('astronaut', 'chelsea', 'coffee', 'rocket'))
    options = {
        'name': 'ddp_rng', 'model_type': 'PlainSRModel', 'scale': 2, 'num_gpu': 0, 'manual_seed': 5,
        'datasets': {'train': {'name': 'Tiny', 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'HR'),
                               'dataroot_lq': str(root / 'LR'), 'gt_size': 16, 'batch_size_per_gpu': 2,
                               'num_worker_per_gpu': 0, 'dataset_enlarge_ratio': 4}},
        'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 1, 'upscale': 2},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [10]},
                  'total_iter': 2, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
        'dist_params': {'backend': 'nccl'},  # as the shipped files: falls back to gloo on this CPU machine
    }
    (tmp_path / 'run.yml').write_text(yaml.safe_dump(options))
    (tmp_path / 'launch.py').write_text(LAUNCHER.format(repo=REPO_ROOT, root=str(tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    job = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2', '--master-port',
                          '29531', str(tmp_path / 'launch.py'), '-opt', str(tmp_path / 'run.yml'), '--launcher',
                          'pytorch'], env=env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
    assert 'using gloo' in job.stderr
    state = torch.load(tmp_path / 'experiments' / 'ddp_rng' / 'training_states' / '2.state', weights_only=True)
    ranks = [torch.load(tmp_path / f'rng_rank{rank}.pth', weights_only=True) for rank in (0, 1)]
    assert len(state['rng_per_rank']) == 2
    for rank in (0, 1):  # the state holds each rank's own generators as they were at the checkpoint
        saved = rank_rng_states(state, rank)
        assert torch.equal(saved['torch'], ranks[rank]['torch'])
        assert saved['python'] == tuple(ranks[rank]['python']) or list(saved['python']) == list(ranks[rank]['python'])
        assert torch.equal(saved['numpy']['keys'], ranks[rank]['numpy']['keys'])
    assert not torch.equal(ranks[0]['torch'], ranks[1]['torch'])  # seed + rank: two streams, both kept

    # The same job continued on one process: rank 0 takes its own stream back, nothing asks for rank 1's.
    options['train']['total_iter'] = 4
    (tmp_path / 'run.yml').write_text(yaml.safe_dump(options))
    single = subprocess.run([sys.executable, str(tmp_path / 'launch.py'), '-opt', str(tmp_path / 'run.yml'),
                             '--auto_resume'], env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, (single.stdout + single.stderr)[-4000:]
    resumed = torch.load(tmp_path / 'experiments' / 'ddp_rng' / 'training_states' / '4.state', weights_only=True)
    assert resumed['iter'] == 4 and len(resumed['rng_per_rank']) == 1
