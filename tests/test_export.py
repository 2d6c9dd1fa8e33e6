"""mtkd.tools.export and scripts/export_model.py: the ONNX model reproduces PyTorch at sizes other than the export size
(dynamic height/width), the safetensors file reloads strictly into identical tensors, a frozen size is caught by
the onnxruntime check, and an arch that cannot be exported fails with its name.

The ONNX parts skip when onnx or onnxruntime is not importable (both are in requirements.txt).
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtkd.tools.export import (DEFAULT_EXPORT_SIZE, INPUT_NAME, OUTPUT_NAME, ExportError, PaddedNetwork,
                               compare_with_onnx, export_model, export_onnx, onnx_session, onnxruntime_available,
                               save_safetensors)
from mtkd.tools.inference import ModelSpec, build_network, model_spec_from_arch
from mtkd.transforms.padding import run_padded
from mtkd.weights.loading import load_weights

from conftest import load_script
TOLERANCE = 1e-4
TINY_EDSR = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': 2,
             'img_range': 255.0, 'rgb_mean': [0.4488, 0.4371, 0.404]}
# Two blocks of 8 channels: ESA (strided conv, 7x7/3 max pool, bilinear resize back to the input size) included.
TINY_RFDN = {'type': 'RFDN', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 2, 'upscale': 3,
             'img_range': 1.0}


def _onnx_missing() -> str | None:
    missing = [name for name in ('onnx', 'onnxruntime') if importlib.util.find_spec(name) is None]
    if missing or not onnxruntime_available():
        return (f'{" and ".join(missing) or "onnxruntime"} not importable: install requirements.txt '
                '(pip install -r requirements.txt) to run the ONNX export tests')
    return None


requires_onnx = pytest.mark.skipif(_onnx_missing() is not None, reason=_onnx_missing() or '')


def random_network(block: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    network = build_network(block).eval()
    with torch.no_grad():  # larger weights than the default init, so that export errors are not hidden
        for parameter in network.parameters():
            parameter.mul_(2.0)
    return network


def write_checkpoint(network: torch.nn.Module, path) -> str:
    torch.save({'params': network.state_dict()}, str(path))
    return str(path)


@requires_onnx
@pytest.mark.parametrize('block', [TINY_EDSR, TINY_RFDN], ids=['EDSR', 'RFDN'])
def test_onnx_reproduces_pytorch_at_other_sizes(block, tmp_path):
    import onnx

    network = random_network(block, seed=1)
    spec = ModelSpec(network=block, scale=block['upscale'], weights=write_checkpoint(network, tmp_path / 'net.pth'))
    result = export_model(spec, str(tmp_path / 'exported'))
    assert result.onnx_path == str(tmp_path / 'exported.onnx') and os.path.isfile(result.onnx_path)
    assert result.matches and len(result.checks) == 2
    export_shape = (3, *DEFAULT_EXPORT_SIZE)
    assert all(check.input_shape != export_shape for check in result.checks)
    assert all(check.max_abs_diff <= TOLERANCE for check in result.checks)

    # The graph's input/output: names 'lr'/'sr', batch 1, height and width symbolic (dynamic axes).
    model = onnx.load(result.onnx_path)
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert (graph_input.name, graph_output.name) == (INPUT_NAME, OUTPUT_NAME)
    input_dims = graph_input.type.tensor_type.shape.dim
    assert [input_dims[0].dim_value, input_dims[1].dim_value] == [1, 3]
    assert input_dims[2].dim_param and input_dims[3].dim_param
    assert model.opset_import[0].version == 17

    # Independently of export_model's own checks: an odd size, far from the export size, against the network
    # rebuilt from the checkpoint.
    images = torch.rand(1, 3, 17, 45, generator=torch.Generator().manual_seed(5))
    session = onnx_session(result.onnx_path)
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    with torch.no_grad():
        expected = network(images).numpy()
    scale = block['upscale']
    assert actual.shape == (1, 3, 17 * scale, 45 * scale)
    assert np.abs(actual - expected).max() <= TOLERANCE
    assert np.abs(expected).max() > 0.1  # a real output, not a network that outputs ~0 everywhere


def test_safetensors_reload_strictly_into_identical_tensors(tmp_path):
    import json

    from safetensors import safe_open

    network = random_network(TINY_RFDN, seed=2)
    path = save_safetensors(network, str(tmp_path / 'rfdn.safetensors'), {'network': json.dumps(TINY_RFDN)})
    fresh = random_network(TINY_RFDN, seed=3)
    original = network.state_dict()
    assert any(not torch.equal(fresh.state_dict()[key], value) for key, value in original.items())
    load_weights(fresh, path, strict=True)
    reloaded = fresh.state_dict()
    assert reloaded.keys() == original.keys()
    for key, value in original.items():
        assert reloaded[key].dtype == value.dtype and torch.equal(reloaded[key], value), key
    with safe_open(path, framework='pt') as handle:
        assert json.loads(handle.metadata()['network']) == TINY_RFDN


@pytest.mark.parametrize('size', [(16, 24), (13, 21), (9, 16)])
def test_padded_network_equals_run_padded(size):
    """The branch-free padding of the exported graph = mtkd.transforms.padding (symmetric), cropped back."""
    network = random_network(TINY_EDSR, seed=4)
    images = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = run_padded(network, images, 8, 2, 'symmetric')
        actual = PaddedNetwork(network, 8, 2)(images)
    assert actual.shape == (1, 3, size[0] * 2, size[1] * 2)
    assert torch.equal(actual, expected)


@requires_onnx
def test_exported_padding_is_dynamic(tmp_path):
    """Padding to a multiple of 8 inside the graph: exported at a padded size, right at a size needing none."""
    network = PaddedNetwork(random_network(TINY_EDSR, seed=4), 8, 2).eval()
    export_onnx(network, str(tmp_path / 'padded.onnx'), torch.rand(1, 3, 13, 21))
    inputs = [torch.rand(1, 3, 16, 24), torch.rand(1, 3, 9, 30)]
    checks = compare_with_onnx(network, onnx_session(str(tmp_path / 'padded.onnx')), inputs)
    assert [check.output_shape for check in checks] == [(32, 48), (18, 60)]
    assert max(check.max_abs_diff for check in checks) <= TOLERANCE


class SizeBranchNetwork(torch.nn.Module):
    """x2 nearest upsampling, doubled only for wide inputs: a Python branch that tracing freezes."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        upsampled = F.interpolate(images, scale_factor=2, mode='nearest')
        return upsampled * 2 if images.shape[-1] > 30 else upsampled


@requires_onnx
def test_frozen_size_branch_is_caught(tmp_path):
    network = SizeBranchNetwork()
    export_onnx(network, str(tmp_path / 'branch.onnx'), torch.rand(1, 3, 20, 28), name='SizeBranchNetwork')
    session = onnx_session(str(tmp_path / 'branch.onnx'))
    narrow, wide = torch.rand(1, 3, 24, 24) + 0.5, torch.rand(1, 3, 24, 40) + 0.5
    narrow_check, wide_check = compare_with_onnx(network, session, [narrow, wide], 'SizeBranchNetwork')
    assert narrow_check.max_abs_diff == 0.0
    # ONNX kept the narrow branch: the wide output is half of PyTorch's, off by the upsampled input (>= 0.5).
    assert wide_check.max_abs_diff == pytest.approx(float(wide.max()), abs=1e-6)


@requires_onnx
def test_arch_that_cannot_export_names_the_arch(tmp_path, capsys):
    """LBNet folds its 3x3 tokens back with F.fold (aten::col2im), which opset 17 cannot express."""
    script = load_script('export_model')
    block = ('{"type": "LBNet", "num_feat": 16, "num_heads": 2, "attention_reduction": 1, "upscale": 2, '
             '"img_range": 1.0}')
    status = script.main(['--arch', block, '--random-weights', '--output', str(tmp_path / 'lbnet')])
    error = capsys.readouterr().err
    assert status == 1
    assert 'LBNet' in error and 'col2im' in error and 'opset 17' in error
    assert not os.path.exists(tmp_path / 'lbnet.onnx')
    assert os.path.isfile(tmp_path / 'lbnet.onnx.log')  # the exporter's graph dump, kept for debugging

    with pytest.raises(ExportError, match='LBNet.*col2im'):
        export_model(model_spec_from_arch(block), str(tmp_path / 'again'), allow_random_weights=True)


def test_arch_without_weights_is_refused_naming_both_ways_out(tmp_path, capsys):
    script = load_script('export_model')
    status = script.main(['--arch', '{"type": "IMDN", "upscale": 4}', '--output', str(tmp_path / 'imdn')])
    assert status != 0
    assert '--arch needs --weights or --random-weights' in capsys.readouterr().err


@requires_onnx
def test_script_writes_both_files_and_fails_on_tolerance(tmp_path, capsys):
    script = load_script('export_model')
    network = random_network(TINY_EDSR, seed=7)
    weights = write_checkpoint(network, tmp_path / 'edsr.pth')
    arch = ('{"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 1, "upscale": 2, '
            '"img_range": 255.0, "rgb_mean": [0.4488, 0.4371, 0.404]}')
    assert script.main(['--arch', arch, '--weights', weights, '--output', str(tmp_path / 'edsr.onnx')]) == 0
    output = capsys.readouterr().out
    assert '| EDSR |' in output and output.count('| yes |') == 2
    assert os.path.isfile(tmp_path / 'edsr.onnx') and os.path.isfile(tmp_path / 'edsr.safetensors')
    # A tolerance no float32 export meets: exit status 1 with the reason.
    assert script.main(['--arch', arch, '--weights', weights, '--output', str(tmp_path / 'strict'),
                        '--tolerance', '0']) == 1
    assert 'does not reproduce PyTorch' in capsys.readouterr().err
