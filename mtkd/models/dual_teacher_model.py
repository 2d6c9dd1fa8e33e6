"""``DualTeacherModel``: DTKD, a student distilled from a fidelity and a perceptual teacher.

Li et al., "Reliable Image Super-Resolution Using Dual-Teacher Knowledge Distillation" (KBS 2025). Per
training patch, image-entropy routing (:class:`mtkd.entropy_routing.EntropyRouter`) gives the perceptual
teacher a share ``p`` (textured content) and the fidelity teacher ``1 - p`` (smooth content). The student
``S`` learns::

    L = α·L1(S, GT) [+ edge, perceptual terms from train:]
        + Σ_t w_t · Σ_term term(S, T_t, GT, weight = share_t)

over the teachers ``t`` (fidelity, perceptual; ``w_t`` = ``dtkd.fidelity_weight`` / ``perceptual_weight``) and
the enabled terms (``distill_opt``: routed L1; ``reliability_opt``, ``discrepancy_opt``: the two attention
losses of :mod:`mtkd.losses.dtkd_loss`). The "-perceptual" students raise ``perceptual_weight`` and add
``train.edge_opt``. Both teachers come from the shared teacher layer: frozen three ways, never in an
optimizer or a student checkpoint, cacheable (``TeacherPairedImageDataset``). Formulas the paper does not
publish are design choices, each an option: docs/dtkd.md.
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
from mtkd.entropy_routing import EntropyRouter
from mtkd.models.plain_sr_model import PlainSRModel
from mtkd.teachers import ensemble_from_options

DISTILL_TERMS = (('distill_opt', 'l_kd'), ('reliability_opt', 'l_reliability'), ('discrepancy_opt', 'l_discrepancy'))


class RoutingOptions(StrictBlock):
    """Image-entropy routing (see mtkd/entropy_routing.py)."""
    mode: Literal['hard', 'soft', 'off'] = Field(default='hard', description="'off': both teachers, share 0.5")
    threshold: float = Field(default=7.0, description='bits; 7.0 is the median entropy of 128x128 patches of the '
                             '291-image set (half the patches each way)')
    temperature: float = Field(default=0.25, gt=0, description="bits; only for 'soft'")
    window_size: int | None = Field(default=None, ge=1, description='entropy per window instead of per patch')


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
        if all(getattr(self.dtkd, key) is None for key, _ in DISTILL_TERMS):
            problems.append(OptionProblem(('dtkd',), 'no distillation term: set distill_opt, reliability_opt '
                                          'and/or discrepancy_opt'))
        window = self.dtkd.routing.window_size
        gt_size = (self.datasets.get('train') or {}).get('gt_size')
        if window and gt_size and gt_size % window:
            problems.append(OptionProblem(('dtkd', 'routing', 'window_size'), f'the GT patch ({gt_size}) must be a '
                                          f'multiple of the entropy window ({window})'))
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
        self.router = EntropyRouter(routing.get('threshold', 7.0), routing.get('mode', 'hard'),
                                    routing.get('temperature', 0.25), routing.get('window_size'))
        super().__init__(opt)

    def init_training_settings(self):
        dtkd = self.opt['dtkd']
        self.distill_terms = [(label, build_loss(dict(dtkd[key])).to(self.device))
                              for key, label in DISTILL_TERMS if dtkd.get(key)]
        self.teacher_weights = {'fidelity': float(dtkd.get('fidelity_weight', 1.0)),
                                'perceptual': float(dtkd.get('perceptual_weight', 1.0))}
        super().init_training_settings()

    def feed_data(self, data):
        super().feed_data(data)
        cached = data.get('teacher_outputs')  # (B, 2, 3, sH, sW) from the teacher-output cache, if used
        self.cached_teacher_outputs = list(cached.to(self.device).unbind(1)) if cached is not None else None

    def distillation_terms(self, output: torch.Tensor, teacher_outputs: list[torch.Tensor], gt: torch.Tensor,
                           loss_dict: OrderedDict) -> torch.Tensor:
        """The routed, attention-weighted terms against both teachers (recorded in ``loss_dict``)."""
        perceptual_share = self.router(gt)
        loss_dict['perceptual_share'] = perceptual_share.mean().detach()
        roles = (('fidelity', teacher_outputs[self.fidelity_index], 1 - perceptual_share),
                 ('perceptual', teacher_outputs[self.perceptual_index], perceptual_share))
        total = output.new_zeros(())
        for role, target, share in roles:
            weight = self.teacher_weights[role]
            if weight == 0:
                continue
            for label, criterion in self.distill_terms:
                value = weight * criterion(output, target, gt, share)
                loss_dict[f'{label}_{role}'] = value
                total = total + value
        return total

    def compute_losses(self, loss_dict: OrderedDict) -> torch.Tensor:
        teacher_outputs = self.cached_teacher_outputs or self.teachers.forward(self.lq)
        self.output = self.net_g(self.lq)
        total = self.image_losses(self.output, self.gt, loss_dict)
        return total + self.distillation_terms(self.output, teacher_outputs, self.gt, loss_dict)

    # ---- validation: both teachers' own scores, once per dataset ---------------------------------------
    def reference_outputs(self) -> dict[str, torch.Tensor]:
        outputs = self.teachers.forward(self.lq)
        return {f'teacher_{name}': output for name, output in zip(self.teachers.names, outputs)}

