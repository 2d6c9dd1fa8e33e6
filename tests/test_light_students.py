"""The committed small-setting students (pretrained/mtkd/light_edsr32_x4_*): each test option file points at its
weights, they load strictly, and each reproduces the Set5 score of the comparison table in docs/mtkd_stage2.md."""
from __future__ import annotations

import glob
import os

import pytest
import torch
import yaml

from basicsr.archs import build_network

from mtkd.metrics.evaluation import evaluate_on_benchmark, mean_score
from mtkd.weights.loading import load_weights

from conftest import REPO_ROOT, dataset_dir

# Set5 Y-PSNR (crop 4) of each student, measured by mtkd/test.py with options/test_light_edsr32_x4_<method>.yml.
SET5_PSNR = {
    'alone': 29.5249,
    'kd': 29.6354,
    'at': 29.7612,
    'fakd': 29.7634,
    'dukd': 29.4811,
    'mtkd': 29.8008,
    'v5_l1': 29.6568,
    'v6_dct': 29.8851,
    'v7_highfreq': 30.0788,
}


@pytest.mark.parametrize('method', sorted(SET5_PSNR))
def test_committed_light_student_reproduces_its_set5_score(method):
    with open(os.path.join(REPO_ROOT, 'options', f'test_light_edsr32_x4_{method}.yml'), encoding='utf-8') as handle:
        options = yaml.safe_load(handle)
    weights = options['path']['pretrain_network_g']
    assert weights == f'pretrained/mtkd/light_edsr32_x4_{method}_cpu1200.pth'
    set5 = dataset_dir('Set5')
    network = build_network(dict(options['network_g']))
    load_weights(network, os.path.join(REPO_ROOT, weights), strict=True)
    with torch.no_grad():
        score = mean_score(evaluate_on_benchmark(network, set5, 4))
    assert abs(score.psnr - SET5_PSNR[method]) < 0.002, score.psnr


def test_every_student_test_file_has_committed_weights_and_a_recorded_score():
    files = glob.glob(os.path.join(REPO_ROOT, 'options', 'test_light_edsr32_x4_*.yml'))
    methods = {os.path.basename(path)[len('test_light_edsr32_x4_'):-len('.yml')] for path in files}
    assert methods == set(SET5_PSNR)
    for method in methods:
        assert os.path.isfile(os.path.join(REPO_ROOT, 'pretrained', 'mtkd', f'light_edsr32_x4_{method}_cpu1200.pth'))
