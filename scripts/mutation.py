"""Mutation testing of the formula modules with mutmut (``make mutation``; docs/testing.md, "Mutation testing").

Each group below is one ``mutmut run`` in its own work folder outside the repository (``--work-dir``, default
``$MTKD_MUTATION_DIR`` or ``/tmp/mtkd-mutation``): mutmut copies ``mtkd/`` and ``tests/`` there, mutates the
group's files, runs only the group's test files, and runs for each mutant only the tests that reach the mutated
function. One process (``--max-children 1``), so that it can run beside trainings; the Makefile adds ``nice`` and
``OMP_NUM_THREADS=1``. Tests that need ``../shared`` skip (the score is what a fresh clone's suite catches).

The score of a file is killed / (mutants - equivalent), with the equivalent mutants listed, each with the reason,
in ``scripts/mutation_equivalent.txt``. A listed mutant that a test kills, or that no longer exists (its function
changed), is reported as stale so the list cannot drift silently.

    python scripts/mutation.py                      # every group, fresh work folders, then the table
    python scripts/mutation.py --groups dukd losses # some groups
    python scripts/mutation.py --report-only        # the table of the last run, from the work folders
    python scripts/mutation.py --baseline --work-dir /tmp/mtkd-mutation-before   # without the survivor tests
    python scripts/mutation.py --compare /tmp/mtkd-mutation-before   # before/after Markdown table (docs/testing.md)
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = REPO_ROOT / 'scripts' / 'mutation_equivalent.txt'

# Lines that only build a message (raise, warnings, logging, continuation lines of a message string): mutants of
# their strings change no value, only wording, and are not generated (mutmut's do_not_mutate_patterns).
MESSAGE_LINE_PATTERNS = (r'^\s*raise\s', r'warnings\.warn\(', r'logger\.(info|warning|debug|error)\(',
                         r'^\s*(f|rf|fr)?[\'"].*[\'"]\)*,?$', r'^\s*print\(')

#: Tests written to kill survivors, one file for every group (mutmut runs a test only for the functions it reaches).
SURVIVOR_TESTS = 'tests/test_mutation_survivors.py'

#: group -> files mutated, mutant-name globs (None: every function of the files), test files, extra pytest args.
GROUPS = {
    'transforms': dict(
        files=['mtkd/transforms/dct.py', 'mtkd/transforms/dwt.py', 'mtkd/transforms/edges.py',
               'mtkd/transforms/entropy.py', 'mtkd/transforms/matlab_resize.py', 'mtkd/transforms/padding.py',
               'mtkd/transforms/self_ensemble.py'],
        functions=None,
        tests=['tests/test_dct.py', 'tests/test_dwt.py', 'tests/test_dtkd_transforms.py', 'tests/test_matlab_resize.py',
               'tests/test_padding.py', 'tests/test_self_ensemble.py', 'tests/test_reference_formulas.py']),
    'losses': dict(
        files=['mtkd/losses/dct_loss.py', 'mtkd/losses/dtkd_loss.py', 'mtkd/losses/edge_loss.py',
               'mtkd/losses/feature_kd_loss.py', 'mtkd/losses/vgg_perceptual_loss.py', 'mtkd/losses/wavelet_loss.py'],
        functions=None,
        tests=['tests/test_wavelet_losses.py', 'tests/test_dtkd_losses.py', 'tests/test_feature_kd_losses.py',
               'tests/test_feature_kd_padding.py', 'tests/test_reference_formulas.py']),
    'entropy_routing': dict(
        files=['mtkd/methods/entropy_routing.py'], functions=None,
        tests=['tests/test_dtkd_losses.py', 'tests/test_dtkd_transforms.py', 'tests/test_reference_formulas.py']),
    'dukd': dict(files=['mtkd/methods/dukd.py'], functions=None, tests=['tests/test_dukd.py']),
    'feature_taps': dict(files=['mtkd/methods/feature_taps.py'], functions=None,
                         tests=['tests/test_feature_taps.py', 'tests/test_feature_kd_losses.py']),
    'evaluation': dict(files=['mtkd/metrics/evaluation.py'], functions=None,
                       tests=['tests/test_reference_formulas.py', 'tests/test_malformed_inputs.py']),
    'dctswin_arch': dict(files=['mtkd/archs/dctswin_arch.py'], functions=None,
                         tests=['tests/test_dctswin_arch.py', 'tests/test_reference_formulas.py']),
    # The models: only the functions that compose the loss (the rest is option handling and I/O).
    'models': dict(
        files=['mtkd/models/distill_model.py', 'mtkd/models/dual_teacher_model.py',
               'mtkd/models/knowledge_aggregation_model.py'],
        functions=['mtkd.models.distill_model.xǁDistillModelǁcompute_losses__mutmut_*',
                   'mtkd.models.distill_model.xǁDistillModelǁdistillation_target__mutmut_*',
                   'mtkd.models.distill_model.xǁDistillModelǁ_dukd_terms__mutmut_*',
                   'mtkd.models.dual_teacher_model.xǁDualTeacherModelǁdistillation_terms__mutmut_*',
                   'mtkd.models.dual_teacher_model.xǁDualTeacherModelǁcompute_losses__mutmut_*',
                   'mtkd.models.knowledge_aggregation_model.xǁKnowledgeAggregationModelǁcompute_losses__mutmut_*'],
        tests=['tests/test_distill_model.py', 'tests/test_knowledge_aggregation_model.py',
               'tests/test_dual_teacher_model.py', 'tests/test_method_objectives.py', 'tests/test_crosskd.py',
               'tests/test_feature_kd_padding.py', 'tests/test_aggregate_cache.py', 'tests/test_gpu_path.py'],
        # The option-file smoke tests (two training iterations per option file, ~150 s) are left out: the
        # formula tests in the same files check the loss composition by value.
        pytest_args=['-k', 'not option_file_builds_and_trains']),
}

# mutmut exit codes (mutmut.stats.status_by_exit_code): 1, 3 killed; 0 survived; 33, 5 no tests; timeouts.
KILLED, SURVIVED, NO_TESTS = {1, 3}, {0}, {5, 33}
TIMEOUT = {36, -24, 24, 152, 255}


def write_config(work: Path, group: dict, baseline: bool = False) -> None:
    """``setup.cfg`` of the work folder: what to mutate and which tests to run (mutmut reads it from the cwd)."""
    lines = ['[mutmut]', 'source_paths = mtkd', 'only_mutate =', *(f'    {f}' for f in group['files']),
             'pytest_add_cli_args_test_selection =',
             *(f'    {t}' for t in group['tests'] + ([] if baseline else [SURVIVOR_TESTS])),
             'do_not_mutate_patterns =', *(f'    {p}' for p in MESSAGE_LINE_PATTERNS),
             'use_git_change_detection = false', 'also_copy =', '    pytest.ini']
    # mutmut forks each mutant from the process that ran the tests unmutated (4x faster here than its fork server,
    # which pays torch's warm-up per mutant); tests/conftest.py empties mtkd's lru_caches at session start so that
    # the mutants of the functions that fill them (DWT kernels, gray weights, edge kernels) are executed.
    if group.get('pytest_args'):
        lines += ['pytest_add_cli_args =', *(f'    {a}' for a in group['pytest_args'])]
    (work / 'setup.cfg').write_text('\n'.join(lines) + '\n')


def prepare(work: Path, group: dict, baseline: bool) -> None:
    """A fresh work folder: links to the sources and tests, and inside ``mutants/`` (where the tests run) links to
    the repository's option files, scripts and docs, and to the committed students (not ``pretrained/official``)."""
    shutil.rmtree(work, ignore_errors=True)
    (work / 'mutants' / 'pretrained').mkdir(parents=True)
    for name in ('mtkd', 'tests', 'pytest.ini'):
        (work / name).symlink_to(REPO_ROOT / name)
    for name in ('options', 'scripts', 'docs'):
        (work / 'mutants' / name).symlink_to(REPO_ROOT / name)
    for name in ('mtkd', 'manifest.yaml', 'README.md'):
        if (REPO_ROOT / 'pretrained' / name).exists():
            (work / 'mutants' / 'pretrained' / name).symlink_to(REPO_ROOT / 'pretrained' / name)
    write_config(work, group, baseline)


def run_group(name: str, group: dict, work_root: Path, mutmut: str, baseline: bool) -> float:
    work = work_root / name
    prepare(work, group, baseline)
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', MTKD_REQUIRE_SHARED='0',
               MTKD_SHARED=str(work / 'no-shared'), PYTHONDONTWRITEBYTECODE='1')
    command = [mutmut, 'run', '--max-children', '1', *(group['functions'] or [])]
    print(f'== {name}: {" ".join(command)} (in {work})', flush=True)
    start = time.time()
    with open(work / 'mutmut.log', 'w') as log:
        result = subprocess.run(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    elapsed = time.time() - start
    (work / 'elapsed_s').write_text(f'{elapsed:.0f}\n')
    if result.returncode != 0:
        print(f'   mutmut exited {result.returncode}: see {work / "mutmut.log"}', flush=True)
    return elapsed


def load_equivalent() -> dict[str, str]:
    """``mutant name  reason`` per line; ``#`` comments."""
    equivalent = {}
    if EQUIVALENT_FILE.exists():
        for line in EQUIVALENT_FILE.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith('#'):
                key, _, reason = line.partition(' ')
                equivalent[key] = reason.strip()
    return equivalent


def results(work_root: Path, groups: list[str]) -> dict[str, dict[str, int | None]]:
    """mutant name -> exit code, per mutated file, for the selected functions of each group."""
    by_file: dict[str, dict[str, int | None]] = {}
    for name in groups:
        group = GROUPS[name]
        for file in group['files']:
            meta = work_root / name / 'mutants' / (file + '.meta')
            if not meta.exists():
                continue
            codes = json.loads(meta.read_text())['exit_code_by_key']
            if group['functions']:
                codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, g) for g in group['functions'])}
            by_file[file] = codes
    return by_file


def is_killed(code: int | None) -> bool:
    return code in KILLED or code in TIMEOUT


def counts(codes: dict[str, int | None], equivalent: dict[str, str]) -> tuple[int, int, int]:
    """(mutants, killed, equivalent) of one file: a listed mutant that a test kills counts as killed, not as
    equivalent (:func:`report` names it as stale)."""
    return (len(codes), sum(1 for code in codes.values() if is_killed(code)),
            sum(1 for key, code in codes.items() if key in equivalent and code not in KILLED))


def scores(work_root: Path, groups: list[str]) -> dict[str, tuple[int, int, int]]:
    """file -> (mutants, killed, equivalent) of the last run under ``work_root``."""
    equivalent = load_equivalent()
    return {file: counts(codes, equivalent) for file, codes in results(work_root, groups).items()}


def markdown_comparison(before_root: Path, after_root: Path, groups: list[str]) -> str:
    """The docs table: per file, the mutants, the equivalent ones and the score before and after (killed over the
    non-equivalent mutants; before: the run with ``--baseline``, i.e. without the tests written for survivors)."""
    before, after = scores(before_root, groups), scores(after_root, groups)
    lines = ['| file | mutants | equivalent | killed before | killed after |', '|---|---:|---:|---:|---:|']
    totals = [0, 0, 0, 0]

    def percent(killed: int, scored: int) -> str:
        return f'{100.0 * killed / scored:.1f} %' if scored else '-'

    for file, (total, killed, equiv) in after.items():
        killed_before = before.get(file, (0, None, 0))[1]
        scored = total - equiv
        cell = f'{killed_before} ({percent(killed_before, scored)})' if killed_before is not None else 'not run'
        lines.append(f'| `{file}` | {total} | {equiv} | {cell} | {killed} ({percent(killed, scored)}) |')
        totals = [totals[0] + total, totals[1] + equiv, totals[2] + (killed_before or 0), totals[3] + killed]
    scored = totals[0] - totals[1]
    lines.append(f'| all | {totals[0]} | {totals[1]} | {totals[2]} ({percent(totals[2], scored)}) | '
                 f'{totals[3]} ({percent(totals[3], scored)}) |')
    return '\n'.join(lines)


def report(work_root: Path, groups: list[str]) -> int:
    equivalent = load_equivalent()
    by_file = results(work_root, groups)
    rows, problems, survivors = [], [], []
    for file, codes in by_file.items():
        total, killed, equiv = counts(codes, equivalent)
        problems += [f'{k}: listed as equivalent but killed' for k, c in codes.items()
                     if k in equivalent and c in KILLED]
        left = [k for k, c in codes.items() if k not in equivalent and not is_killed(c)]
        survivors += [(k, codes[k]) for k in left]
        scored = total - equiv
        rows.append((file, total, killed, equiv, len(left), 100.0 * killed / scored if scored else 100.0))
    module_prefixes = tuple(Path(f).with_suffix('').as_posix().replace('/', '.') + '.' for f in by_file)
    problems += [f'{k}: listed as equivalent but no such mutant (its function changed?)' for k in equivalent
                 if k.startswith(module_prefixes) and not any(k in codes for codes in by_file.values())]
    print(f'\n{"file":<44} {"mutants":>7} {"killed":>6} {"equiv.":>6} {"left":>5} {"score":>7}')
    for file, total, killed, equiv, left, score in rows:
        print(f'{file:<44} {total:>7} {killed:>6} {equiv:>6} {left:>5} {score:>6.1f}%')
    total = [sum(r[i] for r in rows) for i in (1, 2, 3, 4)]
    scored = total[0] - total[2]
    print(f'{"all":<44} {total[0]:>7} {total[1]:>6} {total[2]:>6} {total[3]:>5} '
          f'{100.0 * total[1] / scored if scored else 100.0:>6.1f}%')
    if survivors:
        print('\nnot killed (survived: 0, no tests: 33/5, not run: None); `cd <work>/<group> && mutmut show NAME`:')
        for key, code in sorted(survivors):
            print(f'  {key}  [{code}]')
    for problem in problems:
        print(f'stale equivalent-mutant entry: {problem}')
    (work_root / 'report.json').write_text(json.dumps({'rows': rows, 'survivors': survivors}, indent=1))
    return 1 if problems else 0


SHOW_CODE = """
import json, sys
from pathlib import Path
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.mutation.data import SourceFileMutationData
for key, path, code in json.loads(sys.argv[1]):
    print(f'# {key} [{code}]')
    print(get_diff_for_mutant(key, path=path))
"""


def show(work_root: Path, groups: list[str]) -> None:
    """The diff of every mutant not killed and not listed as equivalent (one mutmut process per group)."""
    equivalent = load_equivalent()
    for name in groups:
        wanted = [(key, file, code) for file, codes in results(work_root, [name]).items() for key, code in codes.items()
                  if key not in equivalent and code is not None and not is_killed(code)]
        if wanted:
            subprocess.run([sys.executable, '-c', SHOW_CODE, json.dumps(wanted)], cwd=work_root / name, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--groups', nargs='+', choices=list(GROUPS), default=list(GROUPS))
    parser.add_argument('--work-dir', default=os.environ.get('MTKD_MUTATION_DIR', '/tmp/mtkd-mutation'))
    parser.add_argument('--report-only', action='store_true', help='only print the table of the last run')
    parser.add_argument('--baseline', action='store_true',
                        help=f'without {SURVIVOR_TESTS}: the scores before the tests written for the survivors')
    parser.add_argument('--show', action='store_true',
                        help='print the diff of each mutant left (implies --report-only)')
    parser.add_argument('--compare', metavar='BEFORE_DIR', default=None,
                        help='print the Markdown table of docs/testing.md: the scores of --work-dir against those of '
                        'a --baseline run in BEFORE_DIR (implies --report-only)')
    args = parser.parse_args(argv)
    work_root = Path(args.work_dir).resolve()
    if work_root == REPO_ROOT or REPO_ROOT in work_root.parents:
        parser.error('--work-dir must be outside the repository (mutmut writes copies of mtkd/ there)')
    mutmut = shutil.which('mutmut', path=str(Path(sys.executable).parent)) or shutil.which('mutmut')
    if args.show:
        show(work_root, args.groups)
        return 0
    if args.compare:
        print(markdown_comparison(Path(args.compare).resolve(), work_root, args.groups))
        return 0
    if not args.report_only:
        if mutmut is None:
            parser.error('mutmut is not installed: `make mutation` installs the pinned version into .venv')
        work_root.mkdir(parents=True, exist_ok=True)
        start = time.time()
        for name in args.groups:
            elapsed = run_group(name, GROUPS[name], work_root, mutmut, args.baseline)
            print(f'   {elapsed / 60:.1f} min', flush=True)
        print(f'total {(time.time() - start) / 60:.1f} min')
    return report(work_root, args.groups)


if __name__ == '__main__':
    sys.exit(main())
