"""scripts/gpu_check.sh --dry: the one-shot GPU check runs on the CPU (tiny networks, ~20 s), so it cannot rot before
a GPU session runs it. The report lists every step; every model type trains through the real entry point without a
host synchronisation in its timed steps; the AMP + channels_last + compile run compiles once and does not recompile
at validation; the benchmark times fp32 and AMP; what needs CUDA or subprocesses says why it was skipped."""
from __future__ import annotations

import json
import math
import os
import subprocess

from conftest import REPO_ROOT

from mtkd.analysis.gpu_check import MODEL_TYPES


def test_the_dry_gpu_check_writes_a_complete_passing_report(tmp_path):
    environment = dict(os.environ, OMP_NUM_THREADS='1')
    process = subprocess.run(['bash', os.path.join(REPO_ROOT, 'scripts', 'gpu_check.sh'), '--dry', '--out',
                              str(tmp_path / 'out'), '--work', str(tmp_path / 'work')],
                             env=environment, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, (process.stdout + process.stderr)[-4000:]
    report = json.loads((tmp_path / 'out' / 'gpu_check.json').read_text())
    steps = {step['name']: step for step in report['steps']}
    expected = ['environment', 'data'] + [f'train/{kind}/fp32' for kind in MODEL_TYPES] + [
        'train/kd/amp', 'benchmark', 'torchrun_gloo_2proc', 'torchrun_nccl_1proc', 'kill_resume', 'amp_psnr']
    assert list(steps) == expected
    assert report['dry'] and report['summary'] == {'pass': 11, 'fail': 0, 'warn': 0, 'skip': 4}
    for name in expected[2:10]:
        details = steps[name]['details']
        assert steps[name]['status'] == 'pass' and details['host_syncs_per_step'] == 0, (name, details)
        assert details['median_step_ms'] > 0 and math.isfinite(details['psnr']), (name, details)
    amp = steps['train/kd/amp']['details']
    assert amp['compiled_graphs'] >= 1 and amp['recompiles'] == 0  # validation ran the uncompiled network
    assert steps['environment']['details']['float32'] == {'matmul': 'ieee', 'conv': 'ieee'}
    rounding = {(row['dtype'], row['what']): row['max_grey_levels']
                for row in steps['environment']['details']['amp_rounding']}
    assert rounding[('fp16', 'network under autocast')] < rounding[('bf16', 'network under autocast')]
    rows = steps['benchmark']['details']['rows']['tiny']
    assert {(row['precision'], row['mode']) for row in rows} >= {('fp32', 'student_alone'), ('amp_fp16', 'cached')}
    assert steps['torchrun_nccl_1proc']['error'].startswith('needs CUDA')
    assert all('dry mode' in steps[name]['error'] for name in ('torchrun_gloo_2proc', 'kill_resume', 'amp_psnr'))
    markdown = (tmp_path / 'out' / 'gpu_check.md').read_text()
    assert '| train/dtkd/fp32 | pass |' in markdown and '| fp16 | round trip of the image |' in markdown
    assert sorted(os.listdir(tmp_path / 'out')) == ['gpu_check.json', 'gpu_check.md']  # the work stays elsewhere
