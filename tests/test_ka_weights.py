"""The committed light KA (pretrained/mtkd/): loads strictly against its four teachers and reproduces its MT."""
from __future__ import annotations

import os

import numpy as np
import torch
import yaml

from basicsr.archs import build_network

from mtkd.metrics.evaluation import benchmark_pairs, image_to_tensor, read_image, score_images, tensor_to_image
from mtkd.teachers.ensemble import TeacherEnsemble, check_checkpoint_teachers, teacher_specs_from_options
from mtkd.weights.loading import load_weights

from conftest import REPO_ROOT, dataset_dir, official_weight

KA_WEIGHTS = os.path.join(REPO_ROOT, 'pretrained', 'mtkd', 'ka_light_x4_global_residual_cpu1600.pth')
TEST_FILE = os.path.join(REPO_ROOT, 'options', 'test_ka_light_x4_global_residual.yml')


def test_committed_light_ka_reproduces_its_set5_score():
    with open(TEST_FILE, encoding='utf-8') as handle:
        options = yaml.safe_load(handle)
    assert options['path']['pretrain_network_g'] == 'pretrained/mtkd/ka_light_x4_global_residual_cpu1600.pth'
    for teacher in options['teachers']:
        official_weight(os.path.basename(teacher['weights']))
    set5 = dataset_dir('Set5')
    ensemble = TeacherEnsemble(teacher_specs_from_options(options['teachers'], REPO_ROOT), scale=4)
    check_checkpoint_teachers(KA_WEIGHTS, ensemble, 'KA checkpoint')  # raises on another teacher list or order
    network = build_network(dict(options['network_g']))
    load_weights(network, KA_WEIGHTS, strict=True)
    network.eval()
    scores, average_scores = [], []
    for _, gt_path, lq_path in benchmark_pairs(set5, 4):
        lq = image_to_tensor(read_image(lq_path))
        with torch.no_grad():
            outputs = ensemble.forward(lq)
            mt = network(torch.cat(outputs, dim=1))
        gt = read_image(gt_path)
        scores.append(score_images(tensor_to_image(mt), gt, 4).psnr)
        average_scores.append(score_images(tensor_to_image(ensemble.average(outputs)), gt, 4).psnr)
    # Measured at the end of its training run: MT 32.3543, teacher average 32.3495 (Y-PSNR, crop 4).
    assert abs(np.mean(scores) - 32.3543) < 0.002, np.mean(scores)
    assert abs(np.mean(average_scores) - 32.3495) < 0.002
    assert np.mean(scores) > np.mean(average_scores)
