"""The teacher layer: frozen three ways, order-sensitive fingerprints, clear errors, tiling, published PSNR."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from torch import nn

from basicsr.archs import build_network
from mtkd.metrics.evaluation import benchmark_pairs, image_to_tensor, read_image, score_images, tensor_to_image
from mtkd.teachers.ensemble import (TeacherEnsemble, TeacherMismatchError, TeacherSpec, TeacherWeightsError,
                                    check_fingerprint, fingerprint_specs, run_tiled, teacher_specs_from_options)
from mtkd.transforms.self_ensemble import self_ensemble
from mtkd.weights.loading import load_weights

from conftest import dataset_dir, official_weight

SCALE = 2
IMDN_NETWORK = {'type': 'IMDN', 'num_feat': 16, 'num_block': 1, 'upscale': SCALE}
EDSR_NETWORK = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_block': 1, 'upscale': SCALE}


def save_random_weights(network_options: dict, path, seed: int) -> str:
    torch.manual_seed(seed)
    network = build_network(dict(network_options))
    for parameter in network.parameters():  # non-trivial values everywhere (some archs zero-init biases)
        nn.init.uniform_(parameter, -0.2, 0.2)
    torch.save(network.state_dict(), str(path))
    return str(path)


@pytest.fixture
def specs(tmp_path):
    return [TeacherSpec('imdn_tiny', IMDN_NETWORK, save_random_weights(IMDN_NETWORK, tmp_path / 'imdn.pth', 1)),
            TeacherSpec('edsr_tiny', EDSR_NETWORK, save_random_weights(EDSR_NETWORK, tmp_path / 'edsr.pth', 2))]


def test_outputs_are_the_loaded_networks_outputs(specs):
    ensemble = TeacherEnsemble(specs, SCALE)
    lq = torch.rand(2, 3, 9, 11)
    outputs = ensemble.forward(lq)
    assert ensemble.names == ['imdn_tiny', 'edsr_tiny'] and len(ensemble) == 2
    for spec, output in zip(specs, outputs):
        reference = build_network(dict(spec.network)).eval()
        load_weights(reference, spec.weights)
        with torch.no_grad():
            expected = reference(lq)
        assert output.shape == (2, 3, 18, 22)
        assert torch.equal(output, expected)
    assert torch.equal(ensemble.stacked(lq), torch.cat(outputs, dim=1))
    expected_mean = (outputs[0] + outputs[1]) / 2
    assert torch.allclose(ensemble.average(outputs), expected_mean, atol=1e-7)
    assert torch.allclose(ensemble.average(ensemble.stacked(lq)), expected_mean, atol=1e-7)


def test_a_self_ensembled_teacher_outputs_the_mean_of_its_eight_runs(specs):
    plain = TeacherEnsemble(specs[:1], SCALE)
    ensembled_spec = dataclasses.replace(specs[0], self_ensemble=True)
    ensembled = TeacherEnsemble([ensembled_spec], SCALE)
    lq = torch.rand(1, 3, 6, 9)
    with torch.no_grad():
        expected = self_ensemble(plain.network('imdn_tiny'), lq)
    output = ensembled.forward(lq)[0]
    assert torch.allclose(output, expected, atol=1e-6)
    assert not torch.allclose(output, plain.forward(lq)[0], atol=1e-3)
    # The switch is part of the fingerprint only when on: fingerprints saved before it existed stay valid.
    assert 'self_ensemble' not in plain.fingerprint()[0] and ensembled.fingerprint()[0]['self_ensemble'] is True
    assert fingerprint_specs([ensembled_spec]) == ensembled.fingerprint()
    with pytest.raises(TeacherMismatchError, match='differs: self_ensemble'):
        check_fingerprint(plain.fingerprint(), ensembled.fingerprint())
    with pytest.raises(ValueError, match='self_ensemble must be true or false'):
        dataclasses.replace(specs[0], self_ensemble='yes')


def test_teachers_are_frozen_and_outputs_feed_autograd(specs):
    ensemble = TeacherEnsemble(specs, SCALE)
    student = nn.Sequential(nn.Conv2d(3, 3 * SCALE ** 2, 3, padding=1), nn.PixelShuffle(SCALE))
    student.train()
    ensemble.train()  # offered, and a no-op: teachers stay in eval
    lq = torch.rand(2, 3, 8, 8)
    outputs = ensemble.forward(lq)
    assert all(not output.requires_grad and not output.is_inference() for output in outputs)
    prediction = student(lq)
    loss = (sum((prediction - output).abs().mean() for output in outputs)
            + (prediction - ensemble.average(outputs)).pow(2).mean())
    loss.backward()  # would raise "Inference tensors cannot be saved for backward" under inference_mode
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in student.parameters())
    teacher_parameters = list(ensemble.parameters())
    assert teacher_parameters
    assert all(parameter.grad is None and not parameter.requires_grad for parameter in teacher_parameters)

    # train() cannot unfreeze them: neither the ensemble's, nor the network's own, nor a parent module's.
    networks = ensemble._networks
    networks[0].train()
    nn.ModuleList(networks).train(True)
    assert not any(module.training for network in networks for module in network.modules())
    # A teacher must not show up among a model's trainable parameters: the ensemble is not a Module.
    assert not isinstance(ensemble, nn.Module)


def test_unfreezing_from_outside_is_caught(specs):
    ensemble = TeacherEnsemble(specs, SCALE)
    next(iter(ensemble.parameters())).requires_grad_(True)
    with pytest.raises(RuntimeError, match="teacher 'imdn_tiny' was unfrozen"):
        ensemble.forward(torch.rand(1, 3, 8, 8))


def test_fingerprints_equal_for_same_specs_and_order_matters(specs, tmp_path):
    first, second = TeacherEnsemble(specs, SCALE), TeacherEnsemble(specs, SCALE)
    assert first.fingerprint() == second.fingerprint() == fingerprint_specs(specs)
    check_fingerprint(first.fingerprint(), second.fingerprint())
    # Defaults filled in: writing a default argument explicitly is the same teacher.
    explicit = TeacherSpec('imdn_tiny', dict(IMDN_NETWORK, img_range=1.0, num_in_ch=3), specs[0].weights)
    assert fingerprint_specs([explicit]) == fingerprint_specs(specs[:1])

    reordered = TeacherEnsemble(specs[::-1], SCALE)
    with pytest.raises(TeacherMismatchError) as caught:
        check_fingerprint(first.fingerprint(), reordered.fingerprint(), what='KA checkpoint')
    message = str(caught.value)
    assert 'saved order:   imdn_tiny, edsr_tiny' in message
    assert 'current order: edsr_tiny, imdn_tiny' in message
    assert 'another order' in message and 'saved (KA checkpoint)' in message
    assert isinstance(caught.value, ValueError)


def test_an_argument_added_to_the_arch_later_matches_only_at_its_default(specs):
    current = TeacherEnsemble(specs, SCALE).fingerprint()
    saved = [dict(entry, args=dict(entry['args'])) for entry in current]
    del saved[0]['args']['img_range']  # saved before IMDN had img_range; the current teacher uses the default 1.0
    check_fingerprint(saved, current)
    assert 'img_range' not in saved[0]['args']  # the saved list itself is left as it was
    scaled = [TeacherSpec('imdn_tiny', dict(IMDN_NETWORK, img_range=255.0), specs[0].weights), specs[1]]
    with pytest.raises(TeacherMismatchError, match=r'imdn_tiny.*<- differs: args'):
        check_fingerprint(saved, fingerprint_specs(scaled))  # not the default: not the network that was saved
    saved[1]['args']['res_scale'] = 0.5  # a changed value of an argument both sides have
    with pytest.raises(TeacherMismatchError, match=r'edsr_tiny.*<- differs: args'):
        check_fingerprint(saved, current)
    removed = [dict(entry, args=dict(entry['args'])) for entry in current]
    removed[1]['args']['retired_switch'] = False  # an argument the arch no longer has
    with pytest.raises(TeacherMismatchError, match=r'edsr_tiny.*<- differs: args'):
        check_fingerprint(removed, current)


def test_changed_weights_change_the_fingerprint(specs):
    before = TeacherEnsemble(specs, SCALE).fingerprint()
    save_random_weights(EDSR_NETWORK, specs[1].weights, seed=3)
    after = TeacherEnsemble(specs, SCALE).fingerprint()
    assert before[0] == after[0]
    assert before[1]['weights_sha256'] != after[1]['weights_sha256']
    assert len(after[1]['weights_sha256']) == 64
    with pytest.raises(TeacherMismatchError, match=r'edsr_tiny.*<- differs: weights_sha256'):
        check_fingerprint(before, after)


def test_missing_weights_name_the_teacher(specs, tmp_path, caplog):
    broken = [specs[0], TeacherSpec('edsr_tiny', EDSR_NETWORK, str(tmp_path / 'absent.pth'))]
    with pytest.raises(TeacherWeightsError, match=r"teacher 'edsr_tiny' \(EDSR\): weights file .*absent.pth not "
                                                  r'found; .*download_pretrained.py'):
        TeacherEnsemble(broken, SCALE)
    logger = logging.getLogger('mtkd.test_teachers')
    with caplog.at_level(logging.WARNING, logger='mtkd.test_teachers'):
        ensemble = TeacherEnsemble(broken, SCALE, allow_random_weights=True, logger=logger)
    assert "teacher 'edsr_tiny'" in caplog.text and 'RANDOM weights' in caplog.text
    assert ensemble.fingerprint()[1]['weights_sha256'] is None
    assert ensemble.forward(torch.rand(1, 3, 6, 6))[1].shape == (1, 3, 12, 12)


def test_expected_weights_sha256_is_checked_before_loading(specs):
    from mtkd.utils.fileio import file_sha256

    good = dataclasses.replace(specs[0], weights_sha256=file_sha256(specs[0].weights))
    reference = TeacherEnsemble(specs[:1], SCALE)
    checked = TeacherEnsemble([good], SCALE)
    lq = torch.rand(1, 3, 6, 6)
    assert torch.equal(checked(lq)[0], reference(lq)[0])
    wrong = dataclasses.replace(specs[0], weights_sha256='0' * 64)
    with pytest.raises(TeacherWeightsError, match=r"has sha256 [0-9a-f]{64}, not the 0{64} the option file expects"):
        TeacherEnsemble([wrong], SCALE)
    with pytest.raises(ValueError, match='64 lower-case hex digits'):
        dataclasses.replace(specs[0], weights_sha256='abc')


def test_option_errors(specs):
    entry = {'name': 'a', 'network': IMDN_NETWORK, 'weights': specs[0].weights}
    assert teacher_specs_from_options([entry])[0] == TeacherSpec('a', IMDN_NETWORK, specs[0].weights)
    with pytest.raises(ValueError, match=r"names must be unique, \['a'\]"):
        teacher_specs_from_options([entry, dict(entry)])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['weight'\]"):
        TeacherSpec.from_options({'name': 'a', 'network': IMDN_NETWORK, 'weight': 'x'})
    with pytest.raises(ValueError, match='upscale is 2 but the scale is 4'):
        TeacherEnsemble(specs, 4)
    with pytest.raises(ValueError, match="pad_mode 'wrap'"):
        TeacherSpec('a', IMDN_NETWORK, None, pad_mode='wrap')


def test_padding_per_teacher(tmp_path):
    """A teacher with pad_multiple sees a padded input and returns exactly scale × the unpadded size."""
    weights = save_random_weights(EDSR_NETWORK, tmp_path / 'edsr.pth', 4)
    plain = TeacherEnsemble([TeacherSpec('plain', EDSR_NETWORK, weights)], SCALE)
    padded = TeacherEnsemble([TeacherSpec('padded', EDSR_NETWORK, weights, pad_multiple=8)], SCALE)
    lq = torch.rand(1, 3, 13, 10)
    out_plain, out_padded = plain.forward(lq)[0], padded.forward(lq)[0]
    assert out_padded.shape == out_plain.shape == (1, 3, 26, 20)
    # Away from the padded bottom/right border (receptive field < 8 LR px) both agree; near it they differ.
    assert torch.allclose(out_padded[..., :10, :6], out_plain[..., :10, :6], atol=1e-6)
    assert not torch.allclose(out_padded, out_plain, atol=1e-4)


def test_tiled_equals_untiled_for_a_conv_teacher(tmp_path):
    network = {**EDSR_NETWORK, 'num_block': 2}
    ensemble = TeacherEnsemble([TeacherSpec('edsr', network, save_random_weights(network, tmp_path / 'e.pth', 5))],
                               SCALE)
    lq = torch.rand(1, 3, 37, 45)
    whole = ensemble.forward(lq)[0]
    tiled = ensemble.forward(lq, tile_size=16, tile_overlap=8)[0]
    assert tiled.shape == whole.shape == (1, 3, 74, 90)
    assert (tiled - whole).abs().max().item() < 1e-5
    # Without context the tile borders differ: the comparison above can fail.
    no_context = run_tiled(ensemble._run_all, lq, SCALE, 16, 0)[0]
    assert (no_context - whole).abs().max().item() > 1e-3


def test_published_psnr_through_the_teacher_layer():
    """IMDN (input [0, 1]) and RLFN (input [0, 255] inside) x4 on Set5 give the published PSNR (shared README)."""
    set5 = dataset_dir('Set5')
    specs = teacher_specs_from_options([
        {'name': 'IMDN', 'network': {'type': 'IMDN', 'num_feat': 64, 'num_block': 6, 'upscale': 4},
         'weights': official_weight('IMDN_x4.pth')},
        {'name': 'RLFN', 'network': {'type': 'RLFN', 'num_feat': 52, 'num_block': 6, 'upscale': 4,
                                     'img_range': 255.0}, 'weights': official_weight('rlfn_x4.pth')}])
    ensemble = TeacherEnsemble(specs, 4)
    scores = {name: [] for name in ensemble.names}
    for _, hr_path, lr_path in benchmark_pairs(set5, 4):
        ground_truth = read_image(hr_path)
        for name, output in zip(ensemble.names, ensemble.forward(image_to_tensor(read_image(lr_path)))):
            scores[name].append(score_images(tensor_to_image(output), ground_truth, 4).psnr)
    assert np.mean(scores['IMDN']) == pytest.approx(32.210, abs=0.002)
    assert np.mean(scores['RLFN']) == pytest.approx(32.238, abs=0.002)
