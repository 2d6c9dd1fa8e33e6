"""mtkd.weights.loading: every container format loads the same tensors; unsafe and mismatched files fail clearly."""
from __future__ import annotations

import hashlib
import pathlib

import pytest
import torch

import mtkd  # noqa: F401  (compat first)
from basicsr.archs.edsr_arch import EDSR
from mtkd.weights.loading import (WeightLoadError, describe_mismatch, file_sha256, load_weights, read_checkpoint,
                                  read_state_dict, select_state_dict, strip_prefix)


def _tiny_edsr(upscale=4, seed=0):
    torch.manual_seed(seed)
    return EDSR(3, 3, num_feat=8, num_block=1, upscale=upscale)


def _save(obj, path: pathlib.Path) -> str:
    if path.suffix == '.safetensors':
        from safetensors.torch import save_file
        save_file(obj, str(path))
    else:
        torch.save(obj, path)
    return str(path)


CONTAINERS = {
    'raw.pth': lambda sd, other: sd,
    'raw.pt': lambda sd, other: sd,
    'params.pth': lambda sd, other: {'params': sd},
    # auto prefers the EMA weights when both are present (BasicSR saves both)
    'params_ema.pth': lambda sd, other: {'params': other, 'params_ema': sd},
    'state_dict.pth': lambda sd, other: {'state_dict': sd, 'epoch': 3},
    'module.pth': lambda sd, other: {f'module.{k}': v for k, v in sd.items()},
    'params_module.pth': lambda sd, other: {'params': {f'module.{k}': v for k, v in sd.items()}},
    'raw.safetensors': lambda sd, other: sd,
}


@pytest.mark.parametrize('file_name', sorted(CONTAINERS))
def test_every_container_loads_the_same_tensors(tmp_path, file_name):
    source = _tiny_edsr(seed=1).state_dict()
    other = _tiny_edsr(seed=2).state_dict()
    path = _save(CONTAINERS[file_name](source, other), tmp_path / file_name)

    state = read_state_dict(path)
    assert sorted(state) == sorted(source)
    for key, value in source.items():
        assert torch.equal(state[key], value), key

    network = _tiny_edsr(seed=3)
    load_weights(network, path)
    for key, value in network.state_dict().items():
        assert torch.equal(value, source[key]), key


def test_explicit_param_key_overrides_auto(tmp_path):
    source, other = _tiny_edsr(seed=1).state_dict(), _tiny_edsr(seed=2).state_dict()
    path = _save({'params': other, 'params_ema': source}, tmp_path / 'both.pth')
    assert torch.equal(read_state_dict(path, param_key='params')['conv_first.weight'], other['conv_first.weight'])
    assert torch.equal(read_state_dict(path)['conv_first.weight'], source['conv_first.weight'])
    with pytest.raises(WeightLoadError, match=r"no 'params_g' in the checkpoint \(top-level keys: \['params', "
                                               r"'params_ema'\]\)"):
        read_state_dict(path, param_key='params_g')


def test_load_weights_unwraps_a_data_parallel_network(tmp_path):
    source = _tiny_edsr(seed=1).state_dict()
    path = _save({'params': source}, tmp_path / 'net.pth')
    wrapped = torch.nn.DataParallel(_tiny_edsr(seed=4))
    load_weights(wrapped, path)
    assert torch.equal(wrapped.module.conv_last.weight, source['conv_last.weight'])


class ArbitraryObject:
    """Unpickling this would touch a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_checkpoint_with_a_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / 'code_ran'
    path = tmp_path / 'evil.pth'
    torch.save({'params': _tiny_edsr().state_dict(), 'payload': ArbitraryObject(marker)}, path)
    with pytest.raises(WeightLoadError, match=r'Refused checkpoint .*evil\.pth: it pickles Python objects '
                                              r'\(\S+\) .*mtkd never unpickles code'):
        read_checkpoint(str(path))
    assert not marker.exists()
    with pytest.raises(WeightLoadError):
        load_weights(_tiny_edsr(), str(path))
    assert not marker.exists()


def test_missing_and_corrupt_files_fail_clearly(tmp_path):
    with pytest.raises(WeightLoadError, match=r'Checkpoint not found: .*nothing\.pth.*download_pretrained\.py'):
        read_checkpoint(str(tmp_path / 'nothing.pth'))
    truncated = tmp_path / 'truncated.pth'
    torch.save(_tiny_edsr().state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(WeightLoadError, match=r'Cannot read checkpoint .*truncated\.pth'):
        read_checkpoint(str(truncated))
    not_a_checkpoint = tmp_path / 'notes.pth'
    not_a_checkpoint.write_bytes(b'plain text, not a checkpoint')
    with pytest.raises(WeightLoadError, match=r'Cannot read checkpoint .*notes\.pth: not a PyTorch checkpoint'):
        read_checkpoint(str(not_a_checkpoint))
    broken = tmp_path / 'broken.safetensors'
    broken.write_bytes(b'not a safetensors file')
    with pytest.raises(WeightLoadError, match=r'Cannot read safetensors file .*broken\.safetensors'):
        read_checkpoint(str(broken))


def test_a_training_state_is_not_mistaken_for_weights(tmp_path):
    path = _save({'epoch': torch.tensor(3), 'optimizers': [{'lr': 1e-4}]}, tmp_path / 'state.pth')
    with pytest.raises(WeightLoadError, match=r"expected a state dict of tensors at the top level, found "
                                              r"\['epoch', 'optimizers'\]\. Set param_key"):
        read_state_dict(path)


def test_describe_mismatch_names_missing_unexpected_and_shapes(tmp_path):
    x3_weights = _tiny_edsr(upscale=3).state_dict()
    x4_network = _tiny_edsr(upscale=4)
    message = describe_mismatch(x4_network, x3_weights, 'edsr_x3.pth')
    assert message.splitlines() == [
        'Checkpoint edsr_x3.pth does not fit EDSR:',
        '  missing keys: upsample.2.bias, upsample.2.weight',
        '  shape mismatches: upsample.0.bias (network (32,), file (72,)), '
        'upsample.0.weight (network (32, 8, 3, 3), file (72, 8, 3, 3))',
        '  likely cause: the file has fewer layers: a shallower network (num_block) or another upscale factor.',
    ]

    x4_weights = _tiny_edsr(upscale=4).state_dict()
    message = describe_mismatch(_tiny_edsr(upscale=2), x4_weights)
    assert '  unexpected keys: upsample.2.bias, upsample.2.weight' in message.splitlines()
    assert 'shape mismatches' not in message
    assert describe_mismatch(_tiny_edsr(upscale=4, seed=9), x4_weights) is None


def test_strict_load_raises_and_non_strict_load_reports_every_skipped_key(tmp_path):
    x3_weights = _tiny_edsr(upscale=3, seed=1).state_dict()
    path = _save(x3_weights, tmp_path / 'edsr_x3.pth')
    network = _tiny_edsr(upscale=4, seed=2)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with pytest.raises(WeightLoadError, match=r'(?s)missing keys: upsample\.2\.bias.*loading is strict'):
        load_weights(network, path)
    for key, value in network.state_dict().items():  # a failed strict load changes nothing
        assert torch.equal(value, before[key]), key

    with pytest.warns(UserWarning, match=r'(?s)upsample\.0\.weight \(network \(32, 8, 3, 3\).*non-strict load'):
        used = load_weights(network, path, strict=False)
    assert 'upsample.0.weight' not in used
    assert torch.equal(network.conv_first.weight, x3_weights['conv_first.weight'])
    assert torch.equal(network.upsample[0].weight, before['upsample.0.weight'])
    assert torch.equal(network.upsample[2].weight, before['upsample.2.weight'])


def test_non_strict_load_logs_through_the_given_logger(tmp_path):
    path = _save(_tiny_edsr(upscale=3).state_dict(), tmp_path / 'edsr_x3.pth')
    messages = []

    class Logger:
        def warning(self, message):
            messages.append(message)

    load_weights(_tiny_edsr(upscale=4), path, strict=False, logger=Logger())
    assert len(messages) == 1 and 'missing keys: upsample.2.bias, upsample.2.weight' in messages[0]


def test_unknown_key_format_fails_before_reading(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown key_format 'rcan' for .*absent\.pth"):
        load_weights(_tiny_edsr(), str(tmp_path / 'absent.pth'), key_format='rcan')


def test_helpers():
    assert strip_prefix({'module.a': 1, 'b': 2, 'x.module.c': 3}) == {'a': 1, 'b': 2, 'x.module.c': 3}
    assert select_state_dict({'a': torch.ones(1)}, None) == {'a': torch.ones(1)}


def test_file_sha256(tmp_path):
    path = tmp_path / 'abc.bin'
    path.write_bytes(b'abc')
    assert file_sha256(str(path)) == 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    big = tmp_path / 'big.bin'
    data = bytes(range(256)) * 5000
    big.write_bytes(data)
    assert file_sha256(str(big), chunk_size=1000) == hashlib.sha256(data).hexdigest()
