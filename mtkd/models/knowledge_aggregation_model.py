"""``KnowledgeAggregationModel``: MTKD stage 1 (Jiang et al., ECCV 2024, Sec. 3.1, Eq. 1).

N frozen teachers super-resolve the LR input; their outputs, concatenated in the order of the ``teachers:``
list, go through the knowledge-aggregation network ``network_g`` (``DCTSwin``), trained with L1 to the ground
truth (``pixel_opt``). Its output is the "MT" image that stage 2 distils into a student.

Teacher outputs come from the training batch (``teacher_outputs``, written by ``TeacherPairedImageDataset``
from the teacher-output cache) or, without a cache, from the teachers on the fly (the paper's way).
Validation scores the MT image and, at the first validation of each dataset (and in every test run), each
teacher and the plain teacher average on the same images, so the log shows whether the KA beats them.
The teacher list (names, archs, weight sha256, order) is saved in every KA checkpoint; loading a KA with other
teachers or another order is refused.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from pydantic import Field

from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from mtkd.config.errors import OptionProblem
from mtkd.config.schema import SROptions, TeacherOptions, register_model_options
from mtkd.models.plain_sr_model import PlainSRModel
from mtkd.teachers.ensemble import check_checkpoint_teachers, ensemble_from_options
from mtkd.training import precision


@register_model_options('KnowledgeAggregationModel')
class KnowledgeAggregationOptions(SROptions):
    """Stage-1 option file: a plain SR file plus the ordered list of frozen teachers."""
    teachers: list[TeacherOptions] = Field(min_length=1)

    def extra_problems(self, is_train: bool) -> list[OptionProblem]:
        arguments = self.network_g.arguments()
        expected = arguments.get('num_teachers')
        if expected is not None and expected != len(self.teachers):
            return [OptionProblem(('network_g', 'num_teachers'), f'the aggregator takes {expected} teachers but '
                                  f'{len(self.teachers)} are listed under teachers')]
        return []


@MODEL_REGISTRY.register()
class KnowledgeAggregationModel(PlainSRModel):
    """Trains the aggregator ``network_g`` on the outputs of frozen teachers (MTKD stage 1)."""

    def __init__(self, opt):
        device = torch.device('cuda' if opt['num_gpu'] != 0 else 'cpu')
        self.teachers = ensemble_from_options(opt, device, get_root_logger())  # before SRModel loads a KA checkpoint: needed to check it
        super().__init__(opt)

    # ---- checkpoints carry the teacher list -------------------------------------------------------------
    def checkpoint_metadata(self) -> dict:
        return {'teachers': self.teachers.fingerprint()}

    def load_network(self, net, load_path, strict=True, param_key='auto'):
        check_checkpoint_teachers(load_path, self.teachers, 'KA checkpoint', get_root_logger())
        super().load_network(net, load_path, strict, param_key)

    # ---- data and optimisation ------------------------------------------------------------------------------
    def feed_data(self, data):
        super().feed_data(data)
        self.cached_teacher_outputs = data.get('teacher_outputs')  # (B, N, 3, sH, sW) from the cache, if used

    def compute_losses(self, loss_dict: OrderedDict) -> torch.Tensor:
        cached = self.cached_teacher_outputs  # float16 from the cache: widened on the device
        if cached is not None:
            self.teacher_stack = cached.to(self.device, non_blocking=True).float().flatten(1, 2)
        else:  # fp32 teachers (amp_teachers: in the AMP dtype), rounded as the cache would store them
            with self.frozen_precision():
                self.teacher_stack = precision.round_like_cache(self.teachers.stacked(self.lq))
        if self.opt.get('channels_last'):
            self.teacher_stack = self.teacher_stack.contiguous(memory_format=torch.channels_last)
        self.output = self.net_g(self.teacher_stack)
        loss_dict['l_pix'] = precision.fp32_loss(self.cri_pix, self.output, self.gt)
        return loss_dict['l_pix']

    def test(self):
        """MT of ``self.lq``; with ``val.self_ensemble`` the whole pipeline (teachers, then KA) runs on each of the 8
        rotated/mirrored inputs, the KA's input changing with the transform. Without it the teacher outputs are kept
        for :meth:`reference_outputs`."""
        network = self.validation_network()
        self.validation_teacher_outputs = None
        if (self.opt.get('val') or {}).get('self_ensemble'):
            self.output = self.run_for_test(network, lambda images: network(self.teachers.stacked(images)))
            return
        self.validation_teacher_outputs = self.teachers.forward(self.lq)
        self.teacher_stack = torch.cat(self.validation_teacher_outputs, dim=1)
        self.output = self.run_for_test(network, lambda images: network(self.teacher_stack))

    def reference_outputs(self) -> dict[str, torch.Tensor]:
        """Each teacher and the teacher average (run here when :meth:`test` self-ensembled and kept none)."""
        teacher_outputs = self.validation_teacher_outputs
        if teacher_outputs is None:
            teacher_outputs = self.teachers.forward(self.lq)
        outputs = dict(zip((f'teacher_{name}' for name in self.teachers.names), teacher_outputs))
        outputs['teacher_average'] = self.teachers.average(teacher_outputs)
        return outputs

