"""``make demo``: the whole MTKD pipeline (Jiang et al., ECCV 2024) on the embedded demo data, in minutes on a CPU.

Stages, each an ordinary option file under ``options/demo/`` run through BasicSR's entry points exactly as a user
would (``python mtkd/train.py -opt ...`` / ``python mtkd/test.py -opt ...``):

1. three small teachers of different families (EDSR, RFDN: CNNs; SwinIR: a transformer): their committed weights
   (``pretrained/demo/``, sha256 checked at load), or trained from scratch with ``train_teachers``;
2. MTKD stage 1: the DCTSwin knowledge-aggregation network fuses their outputs into ``MT`` (Eq. 1);
3. test: each teacher, the teacher average and MT on the validation split;
4. MTKD stage 2: a small student distilled from MT with the wavelet loss (Eq. 2-4), and the same student alone;
5. test both students; then one table (bicubic, teachers, teacher average, MT, student alone, MTKD student:
   Y-channel PSNR/SSIM, border of ``scale`` cropped) and a comparison figure of one validation crop.

Everything is written under a root folder (the repository by default): ``datasets/demo`` (the data, kept between
runs), ``experiments/<name>``, ``results/<name>`` and ``results/demo`` (table, figure, stage logs). Every run
starts clean: the demo's own experiments and results (and BasicSR's ``*_archived_*`` copies of them) are deleted
first, nothing else. ``quick`` shortens the students' trainings (``--force_yml``, :data:`QUICK_STAGE_ITERATIONS`;
stage 1 keeps its schedule).

Stages run as subprocesses (``mode='subprocess'``; the exact command is printed) or inside this process
(``mode='in-process'``: :func:`mtkd.config.cli.run_pipeline`, what ``mtkd/train.py`` calls, on the same option
files; it saves the few seconds each interpreter spends importing torch, which the tests use).
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field

from mtkd.utils.errors import MtkdError

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
OPTIONS_DIR = 'options/demo'
RESULTS_NAME = 'demo'  # results/demo: table, figure, logs
VALIDATION_SET = 'demo_val'
#: Iterations of each training in quick mode (``--quick``, the tests): the shortest run that still shows both
#: claims of the full demo. Stage 1 keeps its whole schedule (``None``): MT passes the best teacher only after the
#: learning-rate steps (measured: 34.350 dB at 400 iterations with steps, EDSR 34.362); the two students run a
#: fifth of theirs (the MTKD student leads early); the teachers (only with ``train_teachers``) a handful.
QUICK_ITERATIONS = 4
QUICK_STAGE_ITERATIONS: dict[str, int | None] = {'demo_stage1_ka': None, 'demo_stage2_mtkd': 300,
                                                 'demo_student_alone': 300}

# Run a BasicSR pipeline with another root than the repository (what mtkd/train.py does with its own root).
_LAUNCHER = ('import sys; import mtkd; from mtkd.config.cli import run_pipeline; import importlib; '
             'root, entry = sys.argv[1], sys.argv[2]; sys.argv = [f"mtkd/{entry}.py"] + sys.argv[3:]; '
             'run_pipeline(getattr(importlib.import_module(f"basicsr.{entry}"), f"{entry}_pipeline"), root)')


class DemoError(MtkdError, RuntimeError):
    """A demo stage failed; the message names the stage, its command and its log."""


@dataclass(frozen=True)
class DemoStage:
    """One step: ``entry`` is ``'train'`` or ``'test'``; ``option_file`` relative to the repository."""
    title: str
    entry: str
    option_file: str

    @property
    def name(self) -> str:
        """The ``name:`` of the option file (experiment or results folder)."""
        return read_option_file(self.option_file)['name']


#: The teachers' training: run only with ``train_teachers`` (``DEMO_TRAIN_TEACHERS=1``); otherwise the demo uses
#: their committed weights (:data:`TEACHER_WEIGHTS_DIR`), which these files reproduce.
TEACHER_STAGES = (
    DemoStage('teacher 1/3: EDSR (CNN)', 'train', f'{OPTIONS_DIR}/demo_teacher_edsr_x2.yml'),
    DemoStage('teacher 2/3: RFDN (CNN)', 'train', f'{OPTIONS_DIR}/demo_teacher_rfdn_x2.yml'),
    DemoStage('teacher 3/3: SwinIR (transformer)', 'train', f'{OPTIONS_DIR}/demo_teacher_swinir_x2.yml'),
)
#: Where the committed teacher weights are (``pretrained/demo/<teacher option file's name>.pth``), each checked
#: against the ``weights_sha256`` of the option files that use it.
TEACHER_WEIGHTS_DIR = 'pretrained/demo'
STAGES = TEACHER_STAGES + (
    DemoStage('stage 1: knowledge aggregation (DCTSwin)', 'train', f'{OPTIONS_DIR}/demo_stage1_ka_x2.yml'),
    DemoStage('test: teachers, teacher average, MT', 'test', f'{OPTIONS_DIR}/test_demo_ka_x2.yml'),
    DemoStage('stage 2: MTKD student', 'train', f'{OPTIONS_DIR}/demo_stage2_mtkd_x2.yml'),
    DemoStage('student alone (no KD)', 'train', f'{OPTIONS_DIR}/demo_student_alone_x2.yml'),
    DemoStage('test: MTKD student', 'test', f'{OPTIONS_DIR}/test_demo_mtkd_x2.yml'),
    DemoStage('test: student alone', 'test', f'{OPTIONS_DIR}/test_demo_student_alone_x2.yml'),
)

#: Row labels of the teachers, by their name in the ``teachers:`` list.
TEACHER_LABELS = {'edsr': 'Teacher EDSR (CNN)', 'rfdn': 'Teacher RFDN (CNN)', 'swinir': 'Teacher SwinIR (transformer)'}


@dataclass
class StageTiming:
    """Wall time of one step and the CPU time it used (all threads, subprocesses included), in seconds.

    On a loaded machine the wall time grows while the CPU time stays about the same; on an idle machine the wall
    time is about the CPU time divided by the cores torch keeps busy."""
    title: str
    seconds: float
    cpu_seconds: float
    command: str = ''


@dataclass
class DemoResult:
    """What a demo run produced: table rows ``(label, parameters or None, psnr, ssim)``, files and timings."""
    rows: list[tuple[str, int | None, float, float]]
    table: str
    figure_path: str
    timings: list[StageTiming] = field(default_factory=list)


def read_option_file(option_file: str) -> dict:
    import yaml

    with open(os.path.join(REPO_ROOT, option_file), encoding='utf-8') as handle:
        return yaml.safe_load(handle)


def quick_overrides(iterations: int = QUICK_ITERATIONS) -> list[str]:
    """``--force_yml`` entries that cut a training file to ``iterations`` (no learning-rate step before the end; a
    warm-up, where the file has one, is cut to ``iterations - 1``: validation refuses one longer than the run)."""
    return [f'train:total_iter={iterations}', f'train:scheduler:milestones=[{iterations}]',
            f'logger:print_freq={iterations}']


def quick_overrides_for(option_file: str, iterations: int = QUICK_ITERATIONS) -> list[str]:
    """:func:`quick_overrides` plus the warm-up cut of ``option_file``'s own ``train.warmup_iter``."""
    warmup = (read_option_file(option_file).get('train') or {}).get('warmup_iter', -1)
    extra = [f'train:warmup_iter={min(warmup, iterations - 1)}'] if warmup >= iterations else []
    return quick_overrides(iterations) + extra


def teacher_weights_overrides(option_file: str, root: str, train_teachers: bool) -> list[str]:
    """``--force_yml`` entries for the ``teachers:`` of ``option_file``: with ``train_teachers``, the weights the
    teacher stages of this run wrote (``experiments/<teacher>/models/net_g_latest.pth``, no sha256 check); else,
    when the demo runs under another root, the committed weights by their absolute path (they live in the
    repository, not under ``root``). Nothing for a file without teachers."""
    overrides = []
    for index, teacher in enumerate(read_option_file(option_file).get('teachers') or []):
        if train_teachers:
            experiment = os.path.splitext(os.path.basename(teacher['weights']))[0]
            overrides += [f'teachers:{index}:weights=experiments/{experiment}/models/net_g_latest.pth',
                          f'teachers:{index}:weights_sha256=null']
        elif os.path.realpath(root) != os.path.realpath(REPO_ROOT):
            overrides.append(f"teachers:{index}:weights={os.path.join(REPO_ROOT, teacher['weights'])}")
    return overrides


def export_teachers(root: str = REPO_ROOT, echo=print, repo_root: str = REPO_ROOT) -> dict[str, str]:
    """Copy the teacher weights a ``train_teachers`` run wrote under ``root`` to :data:`TEACHER_WEIGHTS_DIR` of
    ``repo_root`` (only ``params``, atomically) and write each file's new sha256 into every demo option file of
    ``repo_root`` that names it (the ``weights_sha256:`` line under its ``weights:`` line). Returns
    ``file -> sha256``."""
    import re

    from mtkd.utils.fileio import atomic_torch_save, atomic_write, file_sha256
    from mtkd.weights.loading import read_state_dict

    written = {}
    for stage in TEACHER_STAGES:
        source = os.path.join(root, 'experiments', stage.name, 'models', 'net_g_latest.pth')
        if not os.path.isfile(source):
            raise DemoError(f'{source} not found: train the teachers first (python scripts/demo.py --train-teachers)')
        target = os.path.join(repo_root, TEACHER_WEIGHTS_DIR, f'{stage.name}.pth')
        atomic_torch_save({'params': read_state_dict(source, param_key='params')}, target)
        written[f'{TEACHER_WEIGHTS_DIR}/{stage.name}.pth'] = file_sha256(target)
    for option_file in sorted(glob.glob(os.path.join(repo_root, OPTIONS_DIR, '*.yml'))):
        with open(option_file, encoding='utf-8') as handle:
            text = handle.read()
        updated = text
        for path, sha256 in written.items():
            updated = re.sub(rf'(weights: {re.escape(path)}\n\s*weights_sha256: )[0-9a-f]{{64}}', rf'\g<1>{sha256}',
                             updated)
        if updated != text:
            atomic_write(option_file, lambda handle, data=updated.encode('utf-8'): handle.write(data))
    for path, sha256 in written.items():
        echo(f'{path}  sha256 {sha256}')
    return written


def stage_command(stage: DemoStage, overrides: list[str], python: str = 'python') -> list[str]:
    """The command a user types for this stage (relative to the repository)."""
    command = [python, f'mtkd/{stage.entry}.py', '-opt', stage.option_file]
    return command + (['--force_yml', *overrides] if overrides else [])


def clean_previous_run(root: str) -> list[str]:
    """Delete what earlier demo runs left under ``root``: each stage's ``experiments/<name>`` or ``results/<name>``
    (with BasicSR's ``<name>_archived_<time>`` copies), ``results/demo`` and the demo's teacher-output cache.
    The demo data (``datasets/demo/train``, ``val``) is kept. Returns what was deleted."""
    removed = []
    targets = [os.path.join(root, 'results', RESULTS_NAME), os.path.join(root, 'datasets', 'demo', 'teacher_cache')]
    for stage in STAGES:
        folder = os.path.join(root, 'experiments' if stage.entry == 'train' else 'results', stage.name)
        targets += [folder, *glob.glob(glob.escape(folder) + '_archived_*'),
                    *glob.glob(glob.escape(os.path.join(root, 'tb_logger', stage.name)) + '*')]
    for target in targets:
        if os.path.isdir(target):
            shutil.rmtree(target)
            removed.append(target)
    return removed


def _reset_basicsr_logger() -> None:
    """BasicSR configures its logger once per process; a new stage in the same process needs a fresh one."""
    from basicsr.utils import logger as basicsr_logger

    basicsr_logger.initialized_logger.pop('basicsr', None)
    logger = logging.getLogger('basicsr')
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def run_stage(stage: DemoStage, root: str, overrides: list[str], log_path: str, mode: str = 'subprocess',
              threads: int | None = None) -> None:
    """Run one stage, its console output going to ``log_path``; a failure raises :class:`DemoError`."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    arguments = ['-opt', os.path.join(REPO_ROOT, stage.option_file)] + (['--force_yml', *overrides] if overrides
                                                                        else [])
    with open(log_path, 'w', encoding='utf-8') as log:
        if mode == 'in-process':
            from mtkd.config.cli import run_pipeline

            if stage.entry == 'train':
                from basicsr.train import train_pipeline as pipeline
            else:
                from basicsr.test import test_pipeline as pipeline
            saved_argv = sys.argv
            _reset_basicsr_logger()
            try:
                sys.argv = [f'mtkd/{stage.entry}.py', *arguments]
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    run_pipeline(pipeline, root)
                status = 0
            except SystemExit as error:
                status = error.code if isinstance(error.code, int) else 1
            except Exception:  # noqa: BLE001  (a crash inside a stage: its traceback goes to the stage's log)
                log.write(traceback.format_exc())
                status = 1
            finally:
                sys.argv = saved_argv
                _reset_basicsr_logger()
        else:
            environment = dict(os.environ)
            if threads:
                environment['OMP_NUM_THREADS'] = environment['MKL_NUM_THREADS'] = str(threads)
            if os.path.realpath(root) == os.path.realpath(REPO_ROOT):
                command = [sys.executable, os.path.join(REPO_ROOT, 'mtkd', f'{stage.entry}.py'), *arguments]
            else:
                command = [sys.executable, '-c', _LAUNCHER, root, stage.entry, *arguments]
            status = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    env=environment).returncode
    if status != 0:
        with open(log_path, encoding='utf-8', errors='replace') as handle:
            tail = ''.join(handle.readlines()[-25:])
        raise DemoError(f'{stage.title} failed (exit status {status}); command: '
                        f'{shlex.join(stage_command(stage, overrides))}\nlast lines of {log_path}:\n{tail}')


def count_parameters(network_options: dict) -> int:
    """Parameters of a network built from an option file's ``network_g`` block (built quietly, not logged)."""
    from basicsr.utils.registry import ARCH_REGISTRY

    arguments = dict(network_options)
    with warnings.catch_warnings():  # SwinIR's torch.meshgrid warning, printed in the middle of the table
        warnings.simplefilter('ignore')
        network = ARCH_REGISTRY.get(arguments.pop('type'))(**arguments)
    return sum(parameter.numel() for parameter in network.parameters())


def bicubic_images(data_dir: str, output_dir: str, scale: int) -> dict[str, tuple[float, float]]:
    """MATLAB-bicubic upsampling of every validation LR image (:func:`mtkd.transforms.matlab_resize.imresize`,
    uint8), written as ``<output_dir>/<name>_bicubic.png``; returns ``name -> (psnr, ssim)`` (Y channel, border
    ``scale``), scored like every model (:func:`mtkd.metrics.evaluation.score_images`)."""
    from mtkd.metrics.evaluation import read_image, score_images
    from mtkd.tools.inference import write_png
    from mtkd.transforms.matlab_resize import imresize

    scores = {}
    for path in sorted(glob.glob(os.path.join(data_dir, 'val', 'HR', '*.png'))):
        name = os.path.splitext(os.path.basename(path))[0]
        low = read_image(os.path.join(data_dir, 'val', 'LR_bicubic', f'X{scale}', f'{name}x{scale}.png'))
        upsampled = imresize(low, scale)
        write_png(upsampled, os.path.join(output_dir, f'{name}_bicubic.png'))
        score = score_images(upsampled, read_image(path), scale)
        scores[name] = (score.psnr, score.ssim)
    return scores


def _metrics(root: str, results_name: str) -> dict:
    path = os.path.join(root, 'results', results_name, 'metrics.json')
    with open(path, encoding='utf-8') as handle:
        return json.load(handle)['datasets'][VALIDATION_SET]


def collect_rows(root: str, bicubic: dict[str, tuple[float, float]]) -> list[tuple[str, int | None, float, float]]:
    """The table's rows ``(label, parameters, psnr, ssim)``: bicubic, each teacher, teacher average, MT, student
    alone, MTKD student (means over the validation images)."""
    ka_test = read_option_file(f'{OPTIONS_DIR}/test_demo_ka_x2.yml')
    ka = _metrics(root, ka_test['name'])
    teachers = {teacher['name']: teacher for teacher in ka_test['teachers']}
    rows: list[tuple[str, int | None, float, float]] = [
        ('Bicubic (MATLAB)', None, float(sum(v[0] for v in bicubic.values()) / len(bicubic)),
         float(sum(v[1] for v in bicubic.values()) / len(bicubic)))]
    for name, teacher in teachers.items():
        mean = ka['other_outputs'][f'teacher_{name}']['mean']
        rows.append((TEACHER_LABELS.get(name, f'Teacher {name}'), count_parameters(teacher['network']),
                     mean['psnr'], mean['ssim']))
    mean = ka['other_outputs']['teacher_average']['mean']
    rows.append(('Teacher average', None, mean['psnr'], mean['ssim']))
    rows.append(('MT (stage 1, DCTSwin)', count_parameters(ka_test['network_g']), ka['mean']['psnr'],
                 ka['mean']['ssim']))
    for label, option_file in (('Student alone', 'test_demo_student_alone_x2.yml'),
                               ('MTKD student (stage 2)', 'test_demo_mtkd_x2.yml')):
        options = read_option_file(f'{OPTIONS_DIR}/{option_file}')
        mean = _metrics(root, options['name'])['mean']
        rows.append((label, count_parameters(options['network_g']), mean['psnr'], mean['ssim']))
    return rows


def best_teacher_name(rows: list[tuple[str, int | None, float, float]]) -> str:
    """The ``teachers:`` name of the teacher with the highest PSNR in the table."""
    labels = {label: name for name, label in TEACHER_LABELS.items()}
    scored = [(psnr, labels.get(label, label.removeprefix('Teacher '))) for label, _, psnr, _ in rows
              if label.startswith('Teacher ') and label != 'Teacher average']
    return max(scored)[1]


def format_table(rows: list[tuple[str, int | None, float, float]], scale: int) -> str:
    """Markdown: ``| Method | Parameters | PSNR (dB) | SSIM |`` on the demo validation set."""
    lines = [f'| Method (x{scale}, demo validation set) | Parameters | PSNR (dB) | SSIM |', '|---|---:|---:|---:|']
    for label, parameters, psnr, ssim in rows:
        count = '-' if parameters is None else f'{parameters / 1e3:.1f}k'
        lines.append(f'| {label} | {count} | {psnr:.3f} | {ssim:.4f} |')
    return '\n'.join(lines)


@dataclass(frozen=True)
class Claim:
    """One of MTKD's claims, checked on the table: ``held`` and the numbers behind it."""
    text: str
    held: bool
    detail: str


def check_claims(rows: list[tuple[str, int | None, float, float]]) -> list[Claim]:
    """MTKD's two claims on the demo's validation set (Y-PSNR): the aggregated MT is above every teacher (not only
    their average), and the MTKD student is above the same student trained alone."""
    psnr = {label: value for label, _, value, _ in rows}
    teachers = {label: value for label, value in psnr.items() if label.startswith('Teacher ') and
                label != 'Teacher average'}
    best = max(teachers, key=teachers.get)
    mt, mtkd, alone = psnr['MT (stage 1, DCTSwin)'], psnr['MTKD student (stage 2)'], psnr['Student alone']
    return [Claim('MT (stage 1) above every teacher', mt > teachers[best],
                  f'MT {mt:.3f} dB, best teacher {best.removeprefix("Teacher ")} {teachers[best]:.3f} dB, '
                  f'{mt - teachers[best]:+.3f} dB'),
            Claim('MTKD student above the student alone', mtkd > alone,
                  f'{mtkd:.3f} vs {alone:.3f} dB, {mtkd - alone:+.3f} dB')]


def format_timings(timings: list[StageTiming]) -> str:
    """One line per stage: wall time and CPU time; then the totals."""
    width = max(len(timing.title) for timing in timings + [StageTiming('stage', 0, 0)])
    lines = [f'{"stage":<{width}}  {"wall":>8}  {"CPU":>8}']
    lines += [f'{timing.title:<{width}}  {timing.seconds:7.1f}s  {timing.cpu_seconds:7.1f}s' for timing in timings]
    lines.append(f'{"total":<{width}}  {sum(t.seconds for t in timings):7.1f}s  '
                 f'{sum(t.cpu_seconds for t in timings):7.1f}s')
    return '\n'.join(lines)


class _Clock:
    """Wall and CPU time since creation (CPU: this process and its finished subprocesses)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        import resource

        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    def timing(self, title: str, command: str = '') -> StageTiming:
        return StageTiming(title, time.perf_counter() - self.wall, self._cpu() - self.cpu, command)


def make_figure(root: str, data_dir: str, bicubic_dir: str, output_path: str, scale: int,
                best_teacher: str | None = None) -> str:
    """The comparison figure of :data:`mtkd.tools.demo_data.FIGURE_CROP`: HR, bicubic, the best teacher
    (``best_teacher``, its ``teachers:`` name), MT, student alone, MTKD student."""
    from mtkd.tools.demo_data import FIGURE_CROP
    from mtkd.tools.figures import make_comparison_figure

    image, box = FIGURE_CROP

    def saved(option_file: str, label: str = '') -> str:
        options = read_option_file(f'{OPTIONS_DIR}/{option_file}')
        suffix = (options.get('val') or {}).get('suffix') or options['name']
        return os.path.join(root, 'results', options['name'], 'visualization', VALIDATION_SET,
                            f"{image}_{suffix}{'_' + label if label else ''}.png")

    methods = {'Bicubic': os.path.join(bicubic_dir, f'{image}_bicubic.png')}
    if best_teacher:
        label = TEACHER_LABELS.get(best_teacher, best_teacher).removeprefix('Teacher ').split(' (')[0]
        methods[f'Best teacher ({label})'] = saved('test_demo_ka_x2.yml', f'teacher_{best_teacher}')
    methods.update({'MT (stage 1)': saved('test_demo_ka_x2.yml'),
                    'Student alone': saved('test_demo_student_alone_x2.yml'),
                    'MTKD student': saved('test_demo_mtkd_x2.yml')})
    make_comparison_figure(os.path.join(data_dir, 'val', 'HR', f'{image}.png'), methods, box, scale, output_path,
                           panel_height=192)
    return output_path


def run_demo(root: str = REPO_ROOT, quick: bool = False, mode: str = 'subprocess', threads: int | None = None,
             echo=print, train_teachers: bool = False) -> DemoResult:
    """Run every stage under ``root``, print progress, the table, the claims and the timings; return the result.

    The teachers' committed weights are used unless ``train_teachers`` (then their three stages run first)."""
    from mtkd.tools.demo_data import SCALE, prepare_demo_data

    root = os.path.abspath(root)
    results_dir = os.path.join(root, 'results', RESULTS_NAME)
    timings: list[StageTiming] = []
    removed = clean_previous_run(root)
    if removed:
        echo(f'removed {len(removed)} folder(s) of a previous demo run')

    clock = _Clock()
    data_dir, built = prepare_demo_data(root)
    timings.append(clock.timing('data: crops of skimage photos, LR x2', 'python scripts/make_demo_data.py'))
    echo(f'[data] {data_dir} ({"made" if built else "already complete"}, {timings[-1].seconds:.1f} s)')

    stages = STAGES if train_teachers else STAGES[len(TEACHER_STAGES):]
    if not train_teachers:
        echo(f'[teachers] committed weights in {TEACHER_WEIGHTS_DIR}/ (sha256 checked; DEMO_TRAIN_TEACHERS=1 retrains '
             'them)')
    for index, stage in enumerate(stages, 1):
        iterations = QUICK_STAGE_ITERATIONS.get(stage.name, QUICK_ITERATIONS)
        overrides = (quick_overrides_for(stage.option_file, iterations)
                     if quick and stage.entry == 'train' and iterations else [])
        overrides += teacher_weights_overrides(stage.option_file, root, train_teachers)
        command = shlex.join(stage_command(stage, overrides))
        echo(f'[{index}/{len(stages)}] {stage.title}\n      $ {command}')
        log_path = os.path.join(results_dir, 'logs', f'{index:02d}_{stage.name}.log')
        clock = _Clock()
        run_stage(stage, root, overrides, log_path, mode, threads)
        timings.append(clock.timing(stage.title, command))
        echo(f'      done in {timings[-1].seconds:.1f} s (CPU {timings[-1].cpu_seconds:.1f} s)')

    clock = _Clock()
    bicubic = bicubic_images(data_dir, os.path.join(results_dir, 'bicubic'), SCALE)
    rows = collect_rows(root, bicubic)
    table = format_table(rows, SCALE)
    figure_path = make_figure(root, data_dir, os.path.join(results_dir, 'bicubic'),
                              os.path.join(results_dir, 'comparison.png'), SCALE, best_teacher_name(rows))
    timings.append(clock.timing('bicubic, table and figure'))

    result = DemoResult(rows, table, figure_path, timings)
    with open(os.path.join(results_dir, 'table.md'), 'w', encoding='utf-8') as handle:
        handle.write(table + '\n')
    summary = {'quick': quick, 'mode': mode, 'train_teachers': train_teachers,
               'rows': [dict(zip(('label', 'parameters', 'psnr', 'ssim'), row)) for row in rows],
               'timings': [{'title': t.title, 'seconds': t.seconds, 'cpu_seconds': t.cpu_seconds, 'command': t.command}
                           for t in timings]}
    claims = check_claims(rows)
    summary['claims'] = [{'claim': claim.text, 'held': claim.held, 'detail': claim.detail} for claim in claims]
    with open(os.path.join(results_dir, 'summary.json'), 'w', encoding='utf-8') as handle:
        json.dump(summary, handle, indent=2)
    echo('\n' + table + '\n')
    for claim in claims:
        echo(f"claim: {claim.text}: {'HELD' if claim.held else 'NOT HELD'} ({claim.detail})")
    echo('')
    echo(f'Figure: {figure_path}   (table: {os.path.join(results_dir, "table.md")}, logs: '
         f'{os.path.join(results_dir, "logs")})\n')
    echo('Time per stage (wall clock and CPU):\n' + format_timings(timings))
    if quick:
        shortened = ', '.join([f'{stage.name} {QUICK_ITERATIONS}' for stage in TEACHER_STAGES if train_teachers] +
                              [f'{name} {count}' for name, count in QUICK_STAGE_ITERATIONS.items() if count])
        echo(f'\nQUICK mode: trainings shortened to {shortened} iterations; the full demo trains longer.')
    if not all(math.isfinite(value) for row in rows for value in row[2:]):
        raise DemoError('a metric in the table is not finite; see the logs')
    return result


__all__ = ['Claim', 'DemoError', 'DemoResult', 'DemoStage', 'QUICK_ITERATIONS', 'QUICK_STAGE_ITERATIONS', 'STAGES',
           'StageTiming', 'TEACHER_STAGES', 'best_teacher_name', 'bicubic_images', 'check_claims', 'clean_previous_run',
           'collect_rows', 'export_teachers', 'format_table', 'make_figure', 'quick_overrides', 'quick_overrides_for',
           'run_demo', 'run_stage', 'stage_command', 'teacher_weights_overrides']
