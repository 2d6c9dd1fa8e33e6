"""Multi-process training through torchrun on CPU (gloo): BasicSR's DDP path, teachers outside DDP, both ranks
end with identical student weights (a real 2-process job); and one job for the GPU path of issue 18: the teacher cache
built by every rank, sharded validation, a NaN and a Ctrl-C on one rank only, one all-reduce per accumulation window."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO_ROOT, write_photo_pairs

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
    root = write_photo_pairs(tmp_path / 'data', ('astronaut', 'chelsea', 'coffee', 'rocket'))
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


# ---- issue 18: the GPU path under torchrun (one 2-process gloo job, several checks) -------------------------------
GPU_PATH_LAUNCHER = r'''import os, signal, sys
sys.path.insert(0, os.environ['MTKD_REPO'])
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
import mtkd
import basicsr.train
from mtkd.teachers import cache as teacher_cache
from mtkd.config.cli import run_pipeline
from mtkd.models.plain_sr_model import PlainSRModel

root = os.environ['MTKD_ROOT']
record = {'builds': [], 'validated': [], 'allreduces': 0, 'iterations': 0}
built = []
original_build_model = basicsr.train.build_model


def build_model(opt):
    model = original_build_model(opt)

    def counting_hook(state, bucket):
        record['allreduces'] += 1
        return allreduce_hook(state, bucket)

    model.net_g.register_comm_hook(None, counting_hook)
    built.append(model)
    return model


basicsr.train.build_model = build_model
original_cache_build = teacher_cache.TeacherOutputCache.build


def cache_build(self, *args, **kwargs):
    report = original_cache_build(self, *args, **kwargs)
    record['builds'].append(report.computed)
    return report


teacher_cache.TeacherOutputCache.build = cache_build
original_validate = PlainSRModel._validate


def validate(self, dataloader, current_iter, tb_logger, save_img, rank, world):
    names, feed = [], self.feed_data
    self.feed_data = lambda data: names.append(os.path.basename(data['lq_path'][0])) or feed(data)
    try:
        original_validate(self, dataloader, current_iter, tb_logger, save_img, rank, world)
    finally:
        del self.feed_data
    record['validated'].append(names)
    record['sharded'] = self.image_metric_results['result']
    if world > 1 and rank == 0:  # the same validation in one process, for comparison
        original_validate(self, dataloader, current_iter, None, False, 0, 1)
        record['single'] = self.image_metric_results['result']


PlainSRModel._validate = validate
original_optimize = PlainSRModel.optimize_parameters


def optimize(self, current_iter):
    record['iterations'] = current_iter
    if dist.get_rank() == 1 and current_iter == 3:  # Ctrl-C reaches this rank only, in the middle of a window
        os.kill(os.getpid(), signal.SIGINT)
    if dist.get_rank() == 1 and current_iter == 1:  # a NaN loss on this rank only
        compute = self.compute_losses
        self.compute_losses = lambda loss_dict: compute(loss_dict) * float('nan')
        try:
            return original_optimize(self, current_iter)
        finally:
            del self.compute_losses
    return original_optimize(self, current_iter)


PlainSRModel.optimize_parameters = optimize
try:
    run_pipeline(basicsr.train.train_pipeline, root)
    record['exit'] = 0
except SystemExit as error:
    record['exit'] = error.code
finally:
    if built:
        model = built[0]
        record['state'] = {k: v.detach().clone() for k, v in model.get_bare_model(model.net_g).state_dict().items()}
        record['adam_steps'] = sorted({int(state['step']) for state in model.optimizer_g.state.values()})
    torch.save(record, os.path.join(root, f'record{dist.get_rank()}.pth'))
'''


@pytest.fixture(scope='module')
def gpu_path_job(tmp_path_factory):
    """KD from a teacher-output cache built at start, accumulate 2, validation at iteration 2 on 3 images; rank 1
    alone gets a NaN loss at iteration 1 and Ctrl-C at iteration 3. Returns both ranks' records and the output."""
    root = tmp_path_factory.mktemp('gpu_path')
    write_photo_pairs(root / 'train', ('astronaut', 'chelsea', 'coffee', 'rocket'), hr_size=64, top=100)
    write_photo_pairs(root / 'val', ('astronaut', 'chelsea', 'coffee'), hr_size=24, top=20)
    teacher = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 1, 'upscale': 2}
    from basicsr.archs import build_network

    torch.save(build_network(dict(teacher)).state_dict(), root / 'teacher.pth')
    options = {
        'name': 'gpu_path', 'model_type': 'DistillModel', 'scale': 2, 'num_gpu': 0, 'manual_seed': 5,
        'teachers': [{'name': 't', 'network': teacher, 'weights': str(root / 'teacher.pth')}],
        'distill': {'target': 'teacher', 'output_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'datasets': {'train': {'name': 'Tiny', 'type': 'TeacherPairedImageDataset',
                               'dataroot_gt': str(root / 'train' / 'HR'), 'dataroot_lq': str(root / 'train' / 'LR'),
                               'teacher_cache_root': str(root / 'cache'), 'gt_size': 16, 'batch_size_per_gpu': 2,
                               'num_worker_per_gpu': 0, 'dataset_enlarge_ratio': 4},
                     'val': {'name': 'TinyVal', 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'val' / 'HR'),
                             'dataroot_lq': str(root / 'val' / 'LR')}},
        'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': 2},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [100]},
                  'total_iter': 8, 'accumulate': 2, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 0.1}},
        'val': {'val_freq': 2, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2}}},
        'logger': {'print_freq': 2, 'save_checkpoint_freq': 100, 'use_tb_logger': False},
        'dist_params': {'backend': 'gloo', 'timeout': 120},  # a rank left waiting fails in 2 minutes, not 30
    }
    (root / 'gpu_path.yml').write_text(yaml.safe_dump(options))
    (root / 'launch.py').write_text(GPU_PATH_LAUNCHER)
    env = dict(os.environ, OMP_NUM_THREADS='1', MTKD_REPO=REPO_ROOT, MTKD_ROOT=str(root))
    process = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', '2',
                                '--master-port', '29523', str(root / 'launch.py'), '-opt', str(root / 'gpu_path.yml'),
                                '--launcher', 'pytorch'], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # end the workers too, not only torchrun
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    records = [torch.load(root / f'record{rank}.pth', weights_only=True) if (root / f'record{rank}.pth').exists()
               else None for rank in (0, 1)]
    return root, records, output


def _records(job):
    root, records, output = job
    assert all(record is not None for record in records), output[-4000:]
    return records


def test_ddp_every_rank_builds_its_share_of_the_teacher_cache(gpu_path_job):
    assert [record['builds'] for record in _records(gpu_path_job)] == [[2], [2]]  # 4 images, one barrier


def test_ddp_validation_is_sharded_and_gives_the_one_process_metrics(gpu_path_job):
    first, second = _records(gpu_path_job)
    assert sorted(first['validated'][0] + second['validated'][0]) == ['astronaut.png', 'chelsea.png', 'coffee.png']
    assert (len(first['validated'][0]), len(second['validated'][0])) == (2, 1)
    assert first['sharded'] == second['sharded'] == first['single']  # every image, exactly as one process scores


def test_ddp_ctrl_c_on_one_rank_stops_every_rank_at_the_same_iteration_with_one_save(gpu_path_job):
    root, _, output = gpu_path_job
    first, second = _records(gpu_path_job)
    assert first['exit'] == second['exit'] == 130 and first['iterations'] == second['iterations'] == 4, output[-3000:]
    assert 'Interrupted: saved a resumable state at iteration 4' in output
    states = sorted(os.listdir(root / 'experiments' / 'gpu_path' / 'training_states'))
    assert states == ['4.state'] and 'net_g_4.pth' in os.listdir(root / 'experiments' / 'gpu_path' / 'models')
    for key, value in first['state'].items():
        assert torch.equal(value, second['state'][key]), key


def test_ddp_a_nan_on_one_rank_skips_the_window_on_every_rank_and_accumulation_all_reduces_once(gpu_path_job):
    _, _, output = gpu_path_job
    first, second = _records(gpu_path_job)
    assert first['adam_steps'] == second['adam_steps'] == [1]  # window 1 (NaN on rank 1) skipped on both ranks
    assert 'non-finite on another rank; update skipped' in output
    assert first['allreduces'] == second['allreduces'] == 2  # iterations 2 and 4, never inside a window
