"""Multi-process training through torchrun on CPU (gloo): BasicSR's DDP path, teachers outside DDP, both ranks
end with identical student weights (a real 2-process job)."""
from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import torch
import yaml
from skimage import data as skimage_data

from conftest import REPO_ROOT

LAUNCHER = """import sys
sys.path.insert(0, {repo!r})
import torch
import torch.distributed as dist
import mtkd
import basicsr.train
from mtkd.config.cli import run_pipeline

built = []
original = basicsr.train.build_model
basicsr.train.build_model = lambda opt: built.append(original(opt)) or built[-1]
run_pipeline(basicsr.train.train_pipeline, {root!r})
model = built[0]
state = {{k: v.detach().clone() for k, v in model.get_bare_model(model.net_g).state_dict().items()}}
wrapped = type(model.net_g).__name__
teachers_wrapped = any(type(t).__name__ == 'DistributedDataParallel'
                       for t in (model.teachers.network(n) for n in model.teachers.names))
torch.save({{'state': state, 'wrapped': wrapped, 'teachers_wrapped': teachers_wrapped}},
           {root!r} + f'/rank{{dist.get_rank()}}.pth')
"""


def test_two_cpu_processes_with_gloo_end_with_identical_student_weights(tmp_path):
    root = tmp_path / 'data'
    (root / 'HR').mkdir(parents=True)
    (root / 'LR').mkdir(parents=True)
    for name in ('astronaut', 'chelsea', 'coffee', 'rocket'):
        hr = cv2.cvtColor(np.ascontiguousarray(getattr(skimage_data, name)()[100:164, 100:164]), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(root / 'HR' / f'{name}.png'), hr)
        cv2.imwrite(str(root / 'LR' / f'{name}.png'), cv2.resize(hr, (32, 32), interpolation=cv2.INTER_AREA))
    teacher = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 1, 'upscale': 2}
    from basicsr.archs import build_network

    torch.save(build_network(dict(teacher)).state_dict(), tmp_path / 'teacher.pth')
    options = {
        'name': 'ddp', 'model_type': 'DistillModel', 'scale': 2, 'num_gpu': 0, 'manual_seed': 5,
        'teachers': [{'name': 't', 'network': teacher, 'weights': str(tmp_path / 'teacher.pth')}],
        'distill': {'target': 'teacher', 'output_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'datasets': {'train': {'name': 'Tiny', 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'HR'),
                               'dataroot_lq': str(root / 'LR'), 'gt_size': 16, 'batch_size_per_gpu': 2,
                               'num_worker_per_gpu': 0, 'dataset_enlarge_ratio': 2}},
        'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': 2},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [10]},
                  'total_iter': 4, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 0.1}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 4, 'use_tb_logger': False},
        'dist_params': {'backend': 'gloo'},
    }
    (tmp_path / 'ddp.yml').write_text(yaml.safe_dump(options))
    (tmp_path / 'launch.py').write_text(LAUNCHER.format(repo=REPO_ROOT, root=str(tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS='1', MASTER_PORT='29517')
    process = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2',
                              '--master-port', '29517', str(tmp_path / 'launch.py'), '-opt', str(tmp_path / 'ddp.yml'),
                              '--launcher', 'pytorch'], env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, (process.stdout + process.stderr)[-4000:]
    ranks = [torch.load(tmp_path / f'rank{rank}.pth', weights_only=True) for rank in (0, 1)]
    assert ranks[0]['wrapped'] == 'DistributedDataParallel' and not ranks[0]['teachers_wrapped']
    # BasicSR seeds each rank differently (seed + rank) and gives it other batches: equal weights at the end mean
    # DDP broadcast the initial weights and averaged every gradient.
    for key, value in ranks[0]['state'].items():
        assert torch.equal(value, ranks[1]['state'][key]), key
    saved = torch.load(tmp_path / 'experiments' / 'ddp' / 'models' / 'net_g_latest.pth', weights_only=True)['params']
    assert all(torch.equal(saved[key], value) for key, value in ranks[0]['state'].items())
