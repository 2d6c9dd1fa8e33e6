"""``DualTeacherModel``: DTKD, a student distilled from a fidelity and a perceptual teacher.

Li et al., "Reliable Image Super-Resolution Using Dual-Teacher Knowledge Distillation" (KBS 2025). Per
training patch, image-entropy routing (:class:`mtkd.methods.entropy_routing.EntropyRouter`) gives the perceptual
teacher a share ``p`` (textured content) and the fidelity teacher ``1 - p`` (smooth content). The student
``S`` learns::

    L = α·L1(S, GT) [+ edge, perceptual terms from train:]
        + Σ_t w_t · Σ_term term(S, T_t, GT, weight = share_t)
        + Σ_j teacher_terms[j](S, target_j)

over the teachers ``t`` (fidelity, perceptual; ``w_t`` = ``dtkd.fidelity_weight`` / ``perceptual_weight``) and
the enabled routed terms (``distill_opt``: routed L1; ``reliability_opt``, ``discrepancy_opt``: the two attention
losses of :mod:`mtkd.losses.dtkd_loss`; the discrepancy term chooses among the reliable pixels unless
``among: all``). ``teacher_terms``: unrouted terms between the student and one named teacher (or ``gt``), any
registered loss, e.g. the authors' earlier MTKDSR recipe (L1 to IMDN, VGG features of the second teacher,
Laplacian edges of IMDN; ``options/dtkd_mtkdsr_rfdn_x4.yml``). The "-perceptual" students raise
``perceptual_weight`` and add ``train.edge_opt``. Both teachers come from the shared teacher layer: frozen three
ways, never in an optimizer or a student checkpoint, cacheable (``TeacherPairedImageDataset``). Formulas the paper
does not publish are design choices, each an option: docs/dtkd.md. ``train.optim_g.type: Adan`` builds
:class:`mtkd.training.adan.Adan` (SRDTKD names an Adan switch; every model accepts it, docs/dtkd.md).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from pydantic import Field

from basicsr.losses import build_loss
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from mtkd.config.errors import OptionProblem
from mtkd.config.schema import LossOptions, SROptions, StrictBlock, TeacherOptions, register_model_options
from mtkd.methods.entropy_routing import EntropyRouter, max_entropy
from mtkd.models.plain_sr_model import PlainSRModel
from mtkd.teachers.ensemble import ensemble_from_options
from mtkd.training import precision

DISTILL_TERMS = (('distill_opt', 'l_kd'), ('reliability_opt', 'l_reliability'), ('discrepancy_opt', 'l_discrepancy'))


#: Median entropy (bits) of w x w windows of random 128x128 GT patches of the 291-image set (docs/dtkd.md), the
#: window counterpart of the 7-bit patch threshold; named in the message that asks for a window threshold.
WINDOW_MEDIAN_BITS = {4: 3.45, 8: 4.75, 16: 5.63, 32: 6.24, 64: 6.71}


class RoutingOptions(StrictBlock):
    """Image-entropy routing (see mtkd/methods/entropy_routing.py)."""
    mode: Literal['hard', 'soft', 'off'] = Field(default='hard', description="'off': both teachers, share 0.5")
    threshold: float = Field(default=7.0, description='bits, per GT patch; 7.0 is the median entropy of 128x128 '
                             'patches of the 291-image set (half the patches each way); not used with window_size')
    temperature: float = Field(default=0.25, gt=0, description="bits; only for 'soft'")
    window_size: int | None = Field(default=None, ge=1, description='entropy per window instead of per patch')
    window_threshold: float | None = Field(default=None, gt=0, description='bits, per window; required with '
                                           'window_size (a w x w window holds at most log2(min(w², 256)) bits, so '
                                           'the patch threshold does not transfer)')


class TeacherTermOptions(StrictBlock):
    """One unrouted term ``loss(S, target)`` between the student and a teacher output (or the GT)."""
    target: str = Field(min_length=1, description="a teacher's name, or 'gt'")
    loss: LossOptions
    name: str | None = Field(default=None, description='log label (default <loss type>_<target>)')

    def label(self) -> str:
        return self.name or f'{self.loss.type}_{self.target}'


class DualTeacherBlock(StrictBlock):
    """``dtkd:``: the two teachers' roles, their weights, the routing and the distillation terms."""
    fidelity_teacher: str
    perceptual_teacher: str
    fidelity_weight: float = Field(default=1.0, ge=0)
    perceptual_weight: float = Field(default=1.0, ge=0)
    routing: RoutingOptions = RoutingOptions()
    distill_opt: LossOptions | None = Field(default=None, description='RoutedL1Loss: plain routed distillation')
    reliability_opt: LossOptions | None = Field(default=None, description='ReliabilityAttentionLoss')
    discrepancy_opt: LossOptions | None = Field(default=None, description='DiscrepancyAttentionLoss')
    teacher_terms: list[TeacherTermOptions] | None = Field(default=None, description='unrouted terms between the '
                                                           'student and one teacher (MTKDSR recipe)')


def _window_problems(routing: RoutingOptions) -> list[OptionProblem]:
    """A window size without a window threshold, or a window threshold no window can exceed."""
    where = ('dtkd', 'routing')
    window, threshold = routing.window_size, routing.window_threshold
    if window is None:
        if threshold is not None:
            return [OptionProblem(where + ('window_threshold',), 'set only with window_size (per-patch routing uses '
                                  'threshold)')]
        return []
    if routing.mode == 'off':
        return []
    bound = max_entropy(window * window)
    median = WINDOW_MEDIAN_BITS.get(window)
    hint = (f'the median {window}x{window} window of the 291-image set has {median} bits' if median is not None
            else 'docs/dtkd.md lists calibrated values for windows of 4 to 64 pixels')
    if threshold is None:
        return [OptionProblem(where + ('window_threshold',), f'required with window_size {window}: the patch '
                              f'threshold ({routing.threshold} bits, calibrated on whole patches) does not transfer '
                              f'to {window}x{window} windows, which hold at most {bound:g} bits; {hint}')]
    if threshold >= bound:
        return [OptionProblem(where + ('window_threshold',), f'{threshold} bits cannot be exceeded by a '
                              f'{window}x{window} window (at most log2(min({window}², 256)) = {bound:g} bits), so no '
                              f'window would reach the perceptual teacher; {hint}')]
    return []


def _gate_problems(dtkd: DualTeacherBlock) -> list[OptionProblem]:
    """The discrepancy term's reliability gate must select the pixels the reliability term keeps."""
    if dtkd.reliability_opt is None or dtkd.discrepancy_opt is None:
        return []
    discrepancy, reliability = dtkd.discrepancy_opt.arguments(), dtkd.reliability_opt.arguments()
    if discrepancy.get('among', 'reliable') != 'reliable':
        return []
    pairs = (('per_pixel', 'per_pixel', True), ('reliability_mode', 'mode', 'hard'))
    if reliability.get('mode', 'hard') == 'soft':
        pairs += (('reliability_temperature', 'temperature', 0.01),)
    problems = []
    for own, other, default in pairs:
        mine, theirs = discrepancy.get(own, default), reliability.get(other, default)
        if mine != theirs:
            problems.append(OptionProblem(('dtkd', 'discrepancy_opt', own), f'{mine!r} differs from '
                                          f'reliability_opt.{other} ({theirs!r}): with among: reliable the '
                                          'discrepancy term must choose among the pixels the reliability term '
                                          'keeps; make them equal (or among: all, the old combination)'))
    return problems


@register_model_options('DualTeacherModel')
class DualTeacherOptions(SROptions):
    """DTKD option file: the student (``network_g``), two frozen teachers, the ``dtkd:`` block."""
    teachers: list[TeacherOptions] = Field(min_length=2, max_length=2)
    dtkd: DualTeacherBlock

    def extra_problems(self, is_train: bool) -> list[OptionProblem]:
        problems = []
        names = [teacher.name for teacher in self.teachers]
        for role in ('fidelity_teacher', 'perceptual_teacher'):
            name = getattr(self.dtkd, role)
            if name not in names:
                problems.append(OptionProblem(('dtkd', role), f"no teacher named '{name}'; the teachers are "
                                              f'{", ".join(names)}'))
        if self.dtkd.fidelity_teacher == self.dtkd.perceptual_teacher:
            problems.append(OptionProblem(('dtkd', 'perceptual_teacher'), 'the fidelity and the perceptual teacher '
                                          'must be different teachers'))
        if all(getattr(self.dtkd, key) is None for key, _ in DISTILL_TERMS) and not self.dtkd.teacher_terms:
            problems.append(OptionProblem(('dtkd',), 'no distillation term: set distill_opt, reliability_opt, '
                                          'discrepancy_opt and/or teacher_terms'))
        labels = []
        for index, term in enumerate(self.dtkd.teacher_terms or []):
            if term.target != 'gt' and term.target not in names:
                problems.append(OptionProblem(('dtkd', 'teacher_terms', index, 'target'), f"no teacher named "
                                              f"'{term.target}'; the teachers are {', '.join(names)} (or gt)"))
            if term.label() in labels:
                problems.append(OptionProblem(('dtkd', 'teacher_terms', index, 'name'), f"two terms log as "
                                              f"'{term.label()}': give this one another name"))
            labels.append(term.label())
        window = self.dtkd.routing.window_size
        gt_size = (self.datasets.get('train') or {}).get('gt_size')
        if window and gt_size and gt_size % window:
            problems.append(OptionProblem(('dtkd', 'routing', 'window_size'), f'the GT patch ({gt_size}) must be a '
                                          f'multiple of the entropy window ({window})'))
        problems += _window_problems(self.dtkd.routing) + _gate_problems(self.dtkd)
        if is_train and self.train is not None and self.train.pixel_opt is None:
            problems.append(OptionProblem(('train', 'pixel_opt'), 'set the L1 to the ground truth (α; loss_weight 0 '
                                          'disables it explicitly)'))
        return problems


@MODEL_REGISTRY.register()
class DualTeacherModel(PlainSRModel):
    """Trains the student ``network_g`` from GT and two frozen teachers with entropy routing (DTKD)."""

    def __init__(self, opt):
        device = torch.device('cuda' if opt['num_gpu'] != 0 else 'cpu')
        self.teachers = ensemble_from_options(opt, device, get_root_logger())
        dtkd = opt['dtkd']
        self.fidelity_index = self.teachers.names.index(dtkd['fidelity_teacher'])
        self.perceptual_index = self.teachers.names.index(dtkd['perceptual_teacher'])
        routing = dtkd.get('routing') or {}
        window = routing.get('window_size')
        threshold = routing.get('window_threshold') if window else routing.get('threshold', 7.0)
        self.router = EntropyRouter(threshold, routing.get('mode', 'hard'), routing.get('temperature', 0.25), window)
        super().__init__(opt)

    def init_training_settings(self):
        dtkd = self.opt['dtkd']
        self.distill_terms = [(label, build_loss(dict(dtkd[key])).to(self.device))
                              for key, label in DISTILL_TERMS if dtkd.get(key)]
        self.teacher_terms = []
        for term in dtkd.get('teacher_terms') or []:
            label = term.get('name') or f"{term['loss']['type']}_{term['target']}"
            self.teacher_terms.append((label, term['target'], build_loss(dict(term['loss'])).to(self.device)))
        self.teacher_weights = {'fidelity': float(dtkd.get('fidelity_weight', 1.0)),
                                'perceptual': float(dtkd.get('perceptual_weight', 1.0))}
        super().init_training_settings()

    def feed_data(self, data):
        super().feed_data(data)
        cached = data.get('teacher_outputs')  # (B, 2, 3, sH, sW) from the teacher-output cache, if used
        self.cached_teacher_outputs = (list(cached.to(self.device, non_blocking=True).float().unbind(1))
                                       if cached is not None else None)  # float16 in the batch: widened here

    def distillation_terms(self, output: torch.Tensor, teacher_outputs: list[torch.Tensor], gt: torch.Tensor,
                           loss_dict: OrderedDict) -> torch.Tensor:
        """The routed, attention-weighted terms against both teachers and the unrouted teacher terms (each recorded
        in ``loss_dict``)."""
        total = output.new_zeros(())
        if self.distill_terms:
            perceptual_share = self.router(gt)
            loss_dict['perceptual_share'] = perceptual_share.mean().detach()
            roles = (('fidelity', teacher_outputs[self.fidelity_index], 1 - perceptual_share),
                     ('perceptual', teacher_outputs[self.perceptual_index], perceptual_share))
            for role, target, share in roles:
                weight = self.teacher_weights[role]
                if weight == 0:
                    continue
                for label, criterion in self.distill_terms:
                    value = weight * criterion(output, target, gt, share)
                    loss_dict[f'{label}_{role}'] = value
                    total = total + value
        for label, target_name, criterion in self.teacher_terms:
            target = gt if target_name == 'gt' else teacher_outputs[self.teachers.names.index(target_name)]
            value = criterion(output, target)
            if isinstance(value, tuple):  # perceptual losses return (perceptual, style)
                value = sum(part for part in value if part is not None)
            loss_dict[f'l_{label}'] = value
            total = total + value
        return total

    def compute_losses(self, loss_dict: OrderedDict) -> torch.Tensor:
        teacher_outputs = self.cached_teacher_outputs
        if teacher_outputs is None:  # fp32 teachers (or amp_teachers), rounded as the cache stores them
            with self.frozen_precision():
                teacher_outputs = [precision.round_like_cache(output) for output in self.teachers.forward(self.lq)]
        self.output = self.net_g(self.lq)
        total = self.image_losses(self.output, self.gt, loss_dict)
        # Routing, masks and terms in fp32, outside the student's autocast (mtkd.training.precision).
        return total + precision.fp32_loss(self.distillation_terms, self.output, teacher_outputs, self.gt, loss_dict)

    # ---- validation: both teachers' own scores, once per dataset ---------------------------------------
    def reference_outputs(self) -> dict[str, torch.Tensor]:
        outputs = self.teachers.forward(self.lq)
        return {f'teacher_{name}': output for name, output in zip(self.teachers.names, outputs)}

