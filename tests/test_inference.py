"""mtkd.tools.inference and scripts/infer.py: tiled = untiled for a tile-exact network, written PNG = network output,
clear errors for unreadable images and weights that do not fit.

Tile-exact archs (no image-global operation, finite receptive field): EDSR, MSRResNet, PAN, EdgeSRN. Not exact:
IMDN and RCAN (channel attention pools the whole image), RFDN and RLFN (ESA pooling on a stride grid), LBNet and
window-attention networks; those are not used for the equality test.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import dataset_dir, load_script, official_weight

from mtkd.metrics.evaluation import (ImageReadError, image_to_tensor, mean_score, read_image, score_images,
                                     tensor_to_image)
from mtkd.tools.inference import (ModelSpec, build_network, list_images, load_model, model_spec_from_arch,
                                  model_spec_from_options, output_path, run_inference, super_resolve)
from mtkd.transforms.padding import run_padded
from mtkd.transforms.self_ensemble import self_ensemble
from mtkd.weights.loading import WeightLoadError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE = 2
# Tiny EDSR: receptive radius in LR pixels = conv_first 1 + one residual block 2 + conv_after_body 1
# + upsampler conv 1 + conv_last (1 HR pixel, rounded up to 1 LR pixel) = 6.
TINY_EDSR = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': SCALE,
             'img_range': 1.0}
RECEPTIVE_RADIUS = 6


def random_edsr(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    network = build_network({**TINY_EDSR, **overrides}).eval()
    with torch.no_grad():  # larger weights than the default init, so tile seams would show
        for parameter in network.parameters():
            parameter.mul_(3.0)
    return network


def save_checkpoint(network: torch.nn.Module, path) -> str:
    torch.save({'params': network.state_dict()}, str(path))
    return str(path)


def write_random_image(path, height: int, width: int, seed: int) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return image


def test_tiled_equals_untiled_for_tile_exact_network():
    network = random_edsr()
    lr = torch.rand(1, 3, 21, 27, generator=torch.Generator().manual_seed(1))
    whole = super_resolve(network, lr, SCALE)
    tiled = super_resolve(network, lr, SCALE, tile_size=8, tile_overlap=RECEPTIVE_RADIUS)
    assert tiled.shape == whole.shape == (1, 3, 42, 54)
    assert (tiled - whole).abs().max().item() < 1e-5
    # With too little context the seams differ, so the check above is not vacuous.
    short_context = super_resolve(network, lr, SCALE, tile_size=8, tile_overlap=RECEPTIVE_RADIUS - 3)
    assert (short_context - whole).abs().max().item() > 1e-3


def test_self_ensemble_of_tiles_equals_the_self_ensemble_of_the_whole_image():
    network = random_edsr()
    lr = torch.rand(1, 3, 13, 17, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = self_ensemble(network, lr)
    whole = super_resolve(network, lr, SCALE, self_ensemble=True)
    tiled = super_resolve(network, lr, SCALE, tile_size=8, tile_overlap=RECEPTIVE_RADIUS, self_ensemble=True)
    assert torch.allclose(whole, expected, atol=1e-6) and (tiled - expected).abs().max().item() < 1e-5
    assert (whole - super_resolve(network, lr, SCALE)).abs().max().item() > 1e-2


def test_padded_tiles_crop_back_to_the_input_size():
    network = random_edsr()
    lr = torch.rand(1, 3, 13, 11, generator=torch.Generator().manual_seed(2))
    tiled = super_resolve(network, lr, SCALE, tile_size=6, tile_overlap=8, pad_multiple=4)
    assert tiled.shape == (1, 3, 26, 22)
    # EDSR is translation-equivariant: padding at the bottom/right changes only pixels near those borders.
    whole = run_padded(network, lr, None, SCALE)
    assert (tiled - whole)[..., :10, :10].abs().max().item() < 1e-5


def test_written_png_equals_network_output(tmp_path):
    network = random_edsr(seed=3)
    weights = save_checkpoint(network, tmp_path / 'edsr.pth')
    inputs = tmp_path / 'lr'
    inputs.mkdir()
    images = {'a': write_random_image(inputs / 'a.png', 10, 12, 4), 'b': write_random_image(inputs / 'b.bmp', 9, 7, 5)}
    (inputs / 'notes.txt').write_text('not an image, not listed')
    spec = model_spec_from_arch(TINY_EDSR, weights=weights)
    written = run_inference(spec, str(inputs), str(tmp_path / 'sr'), device='cpu', progress=False)
    assert [os.path.basename(path) for path in written] == ['a_EDSR_x2.png', 'b_EDSR_x2.png']
    for path, (name, image) in zip(written, sorted(images.items())):
        with torch.no_grad():
            expected = tensor_to_image(network(image_to_tensor(image)))
        assert np.array_equal(read_image(path), expected), name


def test_corrupt_file_in_folder_is_named(tmp_path):
    network = random_edsr()
    inputs = tmp_path / 'lr'
    inputs.mkdir()
    write_random_image(inputs / 'a.png', 8, 8, 6)
    (inputs / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 20)
    spec = model_spec_from_arch(TINY_EDSR, weights=save_checkpoint(network, tmp_path / 'w.pth'))
    with pytest.raises(ImageReadError, match='broken.png'):
        run_inference(spec, str(inputs), str(tmp_path / 'sr'), device='cpu', progress=False)


def test_missing_input_and_misfitting_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere'):
        list_images(str(tmp_path / 'nowhere'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no image files'):
        list_images(str(tmp_path / 'empty'))
    weights = save_checkpoint(random_edsr(), tmp_path / 'edsr8.pth')
    wider = model_spec_from_arch({**TINY_EDSR, 'num_feat': 16}, weights=weights)
    with pytest.raises(WeightLoadError, match='shape mismatches'):
        load_model(wider, 'cpu')


def test_spec_from_option_file_and_scale_checks(tmp_path):
    options = {'name': 'tiny', 'scale': SCALE, 'network_g': TINY_EDSR,
               'path': {'pretrain_network_g': 'experiments/w.pth', 'param_key_g': 'params', 'key_format_g': 'basicsr'},
               'val': {'pad_multiple': 8}}
    spec = model_spec_from_options(options, root='/repo')
    assert (spec.weights, spec.param_key, spec.pad_multiple, spec.scale, spec.name) == \
        ('/repo/experiments/w.pth', 'params', 8, SCALE, 'tiny')
    with pytest.raises(ValueError, match='x2.*scale is x4'):
        model_spec_from_options(options, scale=4)
    with pytest.raises(ValueError, match="unknown arch 'Nope'"):
        build_network({'type': 'Nope'})
    with pytest.raises(ValueError, match='no weights given'):
        load_model(ModelSpec(network=TINY_EDSR, scale=SCALE), 'cpu')


def test_script_end_to_end(tmp_path, capsys):
    script = load_script('infer')
    network = random_edsr(seed=7)
    weights = save_checkpoint(network, tmp_path / 'edsr.pth')
    inputs = tmp_path / 'lr'
    inputs.mkdir()
    image = write_random_image(inputs / 'photo.jpg', 16, 20, 8)
    image = read_image(str(inputs / 'photo.jpg'))  # JPEG is lossy: compare with what was decoded
    option_file = tmp_path / 'tiny.yml'
    option_file.write_text(yaml.safe_dump({'name': 'tiny', 'scale': SCALE, 'network_g': TINY_EDSR,
                                           'path': {'pretrain_network_g': weights}}))
    output = tmp_path / 'sr'
    assert script.main(['--opt', str(option_file), '--input', str(inputs), '--output', str(output),
                        '--device', 'cpu', '--tile-size', '8', '--tile-overlap', '8', '--no-progress']) == 0
    with torch.no_grad():
        expected = tensor_to_image(network(image_to_tensor(image)))
    written = read_image(output_path('photo.jpg', str(output), 'EDSR_x2'))
    assert written.shape == (32, 40, 3)
    # Tiled float outputs equal within 1e-5; after rounding to uint8 at most one level can flip.
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1
    assert '1 image(s) written' in capsys.readouterr().out

    # --arch with --weights, single file input, own suffix; then the errors the script reports.
    assert script.main(['--arch', yaml.safe_dump(TINY_EDSR, default_flow_style=True), '--weights', weights,
                        '--input', str(inputs / 'photo.jpg'), '--output', str(output), '--suffix', 'mine',
                        '--device', 'cpu', '--no-progress']) == 0
    assert np.array_equal(read_image(str(output / 'photo_mine.png')), expected)
    assert script.main(['--opt', str(option_file), '--input', str(inputs / 'photo.jpg'), '--output', str(output),
                        '--suffix', 'plus', '--self-ensemble', '--device', 'cpu', '--no-progress']) == 0
    with torch.no_grad():
        plus = tensor_to_image(super_resolve(network, image_to_tensor(image), SCALE, self_ensemble=True))
    assert np.array_equal(read_image(str(output / 'photo_plus.png')), plus) and not np.array_equal(plus, expected)
    plus_file = tmp_path / 'tiny_plus.yml'  # val.self_ensemble of a test file does the same
    plus_file.write_text(yaml.safe_dump({'name': 'tiny', 'scale': SCALE, 'network_g': TINY_EDSR,
                                         'path': {'pretrain_network_g': weights}, 'val': {'self_ensemble': True}}))
    assert script.main(['--opt', str(plus_file), '--input', str(inputs / 'photo.jpg'), '--output', str(output),
                        '--suffix', 'plus_file', '--device', 'cpu', '--no-progress']) == 0
    assert np.array_equal(read_image(str(output / 'photo_plus_file.png')), plus)
    (inputs / 'zz_corrupt.png').write_bytes(b'not a png')
    assert script.main(['--opt', str(option_file), '--input', str(inputs), '--output', str(output),
                        '--device', 'cpu', '--no-progress']) == 2
    assert 'zz_corrupt.png' in capsys.readouterr().err
    assert script.main(['--arch', '{"type": "EDSR", "num_feat": 16, "num_block": 1, "upscale": 2, '
                        '"num_in_ch": 3, "num_out_ch": 3}', '--weights', weights, '--input', str(inputs / 'photo.jpg'),
                        '--output', str(output), '--device', 'cpu', '--no-progress']) == 2
    assert 'does not fit EDSR' in capsys.readouterr().err


def test_official_imdn_reproduces_the_paper_on_set5(tmp_path):
    """IMDN x4 (Hui et al., ACM MM 2019, Table 3): 32.21 dB / 0.8948 on Set5, with the official weights."""
    set5 = dataset_dir('Set5')
    options = yaml.safe_load(open(os.path.join(REPO_ROOT, 'options', 'test_imdn_x4.yml'), encoding='utf-8'))
    spec = model_spec_from_options(options, weights=official_weight('IMDN_x4.pth'))
    written = run_inference(spec, os.path.join(set5, 'LR_bicubic', 'X4'), str(tmp_path), device='cpu', progress=False)
    scores = {}
    for path in written:
        name = os.path.basename(path).split('x4_')[0]
        scores[name] = score_images(read_image(path), read_image(os.path.join(set5, 'HR', f'{name}.png')), 4)
    assert len(scores) == 5
    mean = mean_score(scores)
    assert round(mean.psnr, 2) == 32.21 and round(mean.ssim, 4) == 0.8948
