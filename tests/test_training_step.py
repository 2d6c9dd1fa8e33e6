"""The shared training step (mtkd/training/optimization.py via PlainSRModel): accumulation, clipping, the non-finite
guard, bf16 autocast, channels_last, compile, and keeping the newest N checkpoints."""
from __future__ import annotations

import os

import pytest
import torch

from mtkd.config import validate_options
from mtkd.models.plain_sr_model import PlainSRModel
from mtkd.training.optimization import NonFiniteLossError

SCALE = 2
TINY_EDSR = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': SCALE}


def build(tmp_path, train=None, **top) -> PlainSRModel:
    folder = tmp_path / 'img'
    folder.mkdir(exist_ok=True)
    options = {'name': 'step_unit', 'model_type': 'PlainSRModel', 'scale': SCALE, 'num_gpu': 0, 'manual_seed': 0,
               'datasets': {'train': {'name': 't', 'type': 'PairedImageDataset', 'dataroot_gt': str(folder),
                                      'dataroot_lq': str(folder), 'gt_size': 16}},
               'network_g': TINY_EDSR,
               'train': {'optim_g': {'type': 'Adam', 'lr': 1e-2}, 'scheduler': {'type': 'MultiStepLR',
                                                                               'milestones': [100]},
                         'total_iter': 10, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}, **(train or {})},
               **top}
    plain = validate_options(options, is_train=True, check_files=False).to_basicsr_dict()
    plain.update(dist=False, rank=0, world_size=1, is_train=True, root_path=str(tmp_path), num_gpu=0)
    plain['path'].update(models=str(tmp_path / 'models'), training_states=str(tmp_path / 'states'),
                         experiments_root=str(tmp_path))
    torch.manual_seed(0)
    return PlainSRModel(plain)


def _batch(seed, size=2):
    generator = torch.Generator().manual_seed(seed)
    return {'lq': torch.rand(size, 3, 8, 8, generator=generator), 'gt': torch.rand(size, 3, 16, 16, generator=generator)}


def _parameters(model):
    return {name: p.detach().clone() for name, p in model.net_g.named_parameters()}


def test_two_accumulated_batches_equal_one_batch_twice_as_large(tmp_path):
    accumulated = build(tmp_path, train={'accumulate': 2})
    single = build(tmp_path)
    single.net_g.load_state_dict(accumulated.net_g.state_dict())
    first, second = _batch(1), _batch(2)
    before = _parameters(accumulated)
    accumulated.feed_data(first)
    accumulated.optimize_parameters(1)
    assert all(torch.equal(p, before[n]) for n, p in accumulated.net_g.named_parameters())  # no step yet
    accumulated.feed_data(second)
    accumulated.optimize_parameters(2)
    single.feed_data({key: torch.cat([first[key], second[key]]) for key in first})
    single.optimize_parameters(1)
    for (name, p_acc), p_single in zip(accumulated.net_g.named_parameters(), single.net_g.parameters()):
        # The gradient the optimizer stepped with. (The weights after Adam's first step are not compared: it
        # divides by |g| + eps, which turns float rounding in tiny gradients into large relative differences.)
        torch.testing.assert_close(p_acc.grad, p_single.grad, rtol=1e-5, atol=1e-7, msg=name)
        assert not torch.equal(p_acc, before[name])


def test_gradients_are_clipped_to_the_norm(tmp_path):
    model = build(tmp_path, train={'grad_clip_norm': 1e-3})
    model.feed_data(_batch(1))
    model.optimize_parameters(1)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.net_g.parameters()]))
    torch.testing.assert_close(norm, torch.tensor(1e-3), rtol=1e-4, atol=0)


def test_nonfinite_losses_skip_the_update_then_stop_the_run(tmp_path, caplog):
    model = build(tmp_path, train={'max_nonfinite_losses': 3})
    poisoned = _batch(1)
    poisoned['gt'][0, 0, 0, 0] = float('nan')
    before = _parameters(model)
    for iteration in (1, 2):
        model.feed_data(poisoned)
        model.optimize_parameters(iteration)
    assert all(torch.equal(p, before[n]) for n, p in model.net_g.named_parameters())
    assert 'update skipped (2 in a row, the run stops at 3)' in caplog.text
    model.feed_data(_batch(2))  # a finite loss resets the count
    model.optimize_parameters(3)
    assert model.optimizer_step.nonfinite_in_a_row == 0
    for iteration in (4, 5):
        model.feed_data(poisoned)
        model.optimize_parameters(iteration)
    model.feed_data(poisoned)
    with pytest.raises(NonFiniteLossError, match='3 non-finite losses in a row .last at iteration 6.: training '
                                                 'diverged.*last saved checkpoint is intact'):
        model.optimize_parameters(6)


def test_bf16_autocast_step_on_cpu(tmp_path):
    model = build(tmp_path, use_amp=True, amp_dtype='bf16')
    before = _parameters(model)
    dtypes = []
    model.net_g.conv_first.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    model.feed_data(_batch(1))
    model.optimize_parameters(1)
    assert dtypes == [torch.bfloat16]  # the convolutions really ran in bf16
    assert all(p.dtype == torch.float32 for p in model.net_g.parameters())  # master weights stay fp32
    assert any(not torch.equal(p, before[n]) for n, p in model.net_g.named_parameters())


def test_channels_last_gives_the_same_output(tmp_path):
    plain, nhwc = build(tmp_path), build(tmp_path, channels_last=True)
    nhwc.net_g.load_state_dict(plain.net_g.state_dict())
    assert nhwc.net_g.conv_first.weight.is_contiguous(memory_format=torch.channels_last)
    batch = _batch(3)
    for model in (plain, nhwc):
        model.feed_data(batch)
        model.optimize_parameters(1)
    assert nhwc.lq.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc.output, plain.output, rtol=1e-5, atol=1e-6)


def test_compiled_network_matches_eager_and_keeps_parameter_names(tmp_path):
    pytest.importorskip('torch._inductor')
    eager, compiled = build(tmp_path), build(tmp_path, compile=True)
    compiled.net_g.load_state_dict(eager.net_g.state_dict())
    assert set(compiled.net_g.state_dict()) == set(eager.net_g.state_dict())  # no _orig_mod. prefix
    lq = _batch(4)['lq']
    try:
        with torch.no_grad():
            result = compiled.net_g(lq)
    except Exception as error:  # inductor needs a C++ compiler on the CPU
        pytest.skip(f'torch.compile cannot build on this machine: {type(error).__name__}')
    with torch.no_grad():
        torch.testing.assert_close(result, eager.net_g(lq), rtol=1e-4, atol=1e-5)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    model = build(tmp_path, logger={'keep_checkpoints': 2, 'print_freq': 1, 'save_checkpoint_freq': 1})
    os.makedirs(tmp_path / 'models')
    os.makedirs(tmp_path / 'states')
    for iteration in (1, 2, 3, 4):
        model.feed_data(_batch(iteration))
        model.optimize_parameters(iteration)
        model.save(0, iteration)
    model.save(0, -1)
    assert sorted(os.listdir(tmp_path / 'models')) == ['net_g_3.pth', 'net_g_4.pth', 'net_g_latest.pth']
    assert sorted(os.listdir(tmp_path / 'states')) == ['3.state', '4.state']


def test_validation_sends_the_first_images_to_tensorboard(tmp_path):
    import cv2
    import numpy as np
    from basicsr.data import build_dataloader, build_dataset

    folder = tmp_path / 'val'
    (folder / 'HR').mkdir(parents=True)
    (folder / 'LR').mkdir()
    for index in range(3):
        image = np.full((16, 16, 3), 40 * index, np.uint8)
        cv2.imwrite(str(folder / 'HR' / f'im{index}.png'), image)
        cv2.imwrite(str(folder / 'LR' / f'im{index}.png'), image[::2, ::2])
    model = build(tmp_path, val={'val_freq': 1, 'tb_images': 2, 'metrics': {
        'psnr': {'type': 'calculate_psnr', 'crop_border': 2, 'test_y_channel': True}}})
    options = {'name': 'v', 'type': 'PairedImageDataset', 'dataroot_gt': str(folder / 'HR'),
               'dataroot_lq': str(folder / 'LR'), 'io_backend': {'type': 'disk'}, 'phase': 'val', 'scale': SCALE}
    loader = build_dataloader(build_dataset(options), options, num_gpu=0, dist=False)

    class Recorder:
        def __init__(self):
            self.images, self.scalars = [], []

        def add_image(self, tag, image, step):
            self.images.append((tag, tuple(image.shape), step))

        def add_scalar(self, tag, value, step):
            self.scalars.append(tag)

    recorder = Recorder()
    model.validation(loader, 7, recorder, False)
    # The first two images of the loader's order (BasicSR lists the folder unsorted).
    assert len(recorder.images) == 2 and all(shape == (3, 16, 16) and step == 7 for _, shape, step in recorder.images)
    assert {tag for tag, _, _ in recorder.images} < {'val/v/im0', 'val/v/im1', 'val/v/im2'}
    assert 'metrics/v/psnr' in recorder.scalars
