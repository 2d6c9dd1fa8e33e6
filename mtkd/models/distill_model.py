"""``DistillModel``: a student distilled from frozen teachers, one trainer for MTKD stage 2 and the KD baselines.

MTKD stage 2 (Jiang et al., ECCV 2024, Sec. 3.2, Eq. 2-4): the frozen stage-1 aggregator (``aggregator:``)
fuses the frozen teachers' outputs into ``I_MT``; the student learns
``L_total = α·L1(I_stu, I_GT) + L_dis(I_stu, I_MT)`` (α: ``train.pixel_opt.loss_weight``, 0.1 in the paper;
``L_dis``: ``distill.output_opt``, the wavelet loss in the paper). Output KD (Hinton-style KD for SR) is the
same trainer with ``distill.target: teacher`` (one teacher's output as the target) and an L1 ``output_opt``.
Methods differ only in the ``distill:`` block (and ``aggregator:``, the teachers and, where a baseline's source sets
it, the weight of L1 to GT), so comparisons are fair (tests/test_baseline_fairness.py, docs/baselines.md): output KD,
feature KD (AT, FAKD: ``feature_opt``), DUKD (``dukd``) and CrossKD (``crosskd``, :mod:`mtkd.methods.crosskd`: the
student's features through the frozen teacher's remaining modules, with a trained 1x1 adapter saved beside the student).

Everything on the teacher side (teachers and aggregator) is frozen three ways and never enters an optimizer
or a student checkpoint; the aggregator's weights (EMA weights by default, ``param_key: auto``) are checked
against the teacher list recorded in its stage-1 checkpoint.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Literal

import torch
from pydantic import Field

from basicsr.losses import build_loss
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from mtkd.config.errors import OptionProblem
from mtkd.config.schema import (FeatureLossOptions, LossOptions, NetworkOptions, SROptions, StrictBlock,
                                TeacherOptions, register_model_options)
from mtkd.methods.crosskd import CrossKD, CrossKDAdapters, feature_shape
from mtkd.methods.feature_taps import FeatureTaps
from mtkd.models.plain_sr_model import PlainSRModel
from mtkd.teachers.aggregated import load_frozen_aggregator
from mtkd.teachers.ensemble import ensemble_from_options
from mtkd.training import precision
from mtkd.weights.loading import load_weights


def unpadded_message(what: str, teacher: str, lr_size: int, pad_multiple: int) -> str:
    """Why a teacher run with ``pad_multiple`` cannot serve feature KD / CrossKD on this LR patch size."""
    return (f"{what} uses teacher '{teacher}' features of the unpadded LR patch, but {lr_size} LR pixels is not a "
            f'multiple of its pad_multiple {pad_multiple}: padding would change its features. Train on LR patches '
            f'whose sides are multiples of {pad_multiple}')


class AggregatorOptions(StrictBlock):
    """The frozen stage-1 knowledge-aggregation network and its checkpoint."""
    network: NetworkOptions
    weights: str | None = Field(default=None, description='stage-1 KA checkpoint (experiments/<stage1>/models/...)')
    param_key: str | None = Field(default='auto', description="'auto' takes params_ema first (the EMA weights)")
    strict_load: bool = True


class DUKDOptions(StrictBlock):
    """DUKD's data-upcycling terms (Zhang et al., arXiv 2309.14162; see docs/dukd.md and mtkd/methods/dukd.py)."""
    zoom_in_weight: float = Field(default=1.0, ge=0)
    zoom_out_kd_weight: float = Field(default=1.0, ge=0)
    zoom_out_pixel_weight: float = Field(default=5.0, ge=0)
    num_tiles: int = Field(default=1, ge=1, description='zoom-in tiles per image (the official files: 2 at x2)')
    augmentation_probability: float = Field(default=0.3, ge=0, le=1)
    augmentations: list[str] = Field(default_factory=lambda: ['invert', 'vflip', 'hflip', 'transpose'])
    separate_step: bool = Field(default=False, description="false: one step on the paper's sum L_rec + L_kd + "
                                "L_dukd; true: the official code's second optimizer step on the DUKD terms")
    crop_to_scale: bool = Field(default=False, description='for the DUKD terms only, crop the LR patch (top left) to '
                                'the largest multiple of the scale and GT to match, so that zoom-out can shrink it '
                                'by the scale (MTKD\'s LR patch 64 at x3; the official LR patch 48 needs no crop)')


class CrossKDOptions(StrictBlock):
    """CrossKD (Fang, Hu, Hu, ICVIP 2022), reconstructed from its abstract (mtkd/methods/crosskd.py, docs/baselines.md):
    the student's feature at ``student_layer`` replaces the output of the teacher's ``teacher_layer``, and the teacher's
    remaining modules give a hybrid SR image; "dual" also runs the teacher's feature through the student's rest."""
    student_layer: str = Field(min_length=1, description="student module path of the cut, e.g. 'body.4'")
    teacher_layer: str = Field(min_length=1, description='teacher module path whose output the student feature '
                               "replaces, e.g. 'body.4'")
    teacher_weight: float = Field(default=1.0, ge=0, description='L1(hybrid output, teacher output)')
    gt_weight: float = Field(default=0.0, ge=0, description='L1(hybrid output, GT)')
    dual_teacher_weight: float = Field(default=0.0, ge=0, description='dual pass (teacher features through the '
                                       "student's remaining modules): L1(dual output, teacher output); 0 with "
                                       'dual_gt_weight 0: no dual pass')
    dual_gt_weight: float = Field(default=0.0, ge=0, description='dual pass: L1(dual output, GT)')


class DistillBlock(StrictBlock):
    """What the student learns from: the target image and the distillation loss on the student's output."""
    target: Literal['aggregate', 'teacher'] = Field(
        default='aggregate', description="'aggregate': the aggregator's I_MT (MTKD); 'teacher': one teacher's output")
    teacher: str | None = Field(default=None, description="for target 'teacher': the teacher's name")
    output_opt: LossOptions | None = Field(default=None, description='loss between the student output and the '
                                           'target (MTKD: WaveletDistillLoss; KD: L1Loss)')
    feature_opt: FeatureLossOptions | None = Field(default=None, description="feature KD (AT, FAKD) against the "
                                                   "teacher named in 'teacher' (the first one when unnamed)")
    dukd: DUKDOptions | None = Field(default=None, description='DUKD zoom-in / zoom-out / label-consistency terms '
                                     'against the same target')
    crosskd: CrossKDOptions | None = Field(default=None, description="CrossKD: the student's features through the "
                                           "named teacher's remaining modules (and 'dual' the reverse)")


@register_model_options('DistillModel')
class DistillOptions(SROptions):
    """Stage-2 / KD option file: the student (``network_g``), frozen teachers, optionally the aggregator."""
    teachers: list[TeacherOptions] = Field(min_length=1)
    aggregator: AggregatorOptions | None = None
    distill: DistillBlock

    def extra_problems(self, is_train: bool) -> list[OptionProblem]:
        problems = []
        names = [teacher.name for teacher in self.teachers]
        if self.distill.target == 'aggregate':
            if self.aggregator is None:
                problems.append(OptionProblem(('aggregator',), "distill.target 'aggregate' needs an aggregator "
                                              'block (the stage-1 network and its checkpoint)'))
            else:
                expected = self.aggregator.network.arguments().get('num_teachers')
                if expected is not None and expected != len(self.teachers):
                    problems.append(OptionProblem(('aggregator', 'network', 'num_teachers'), f'the aggregator takes '
                                                  f'{expected} teachers but {len(self.teachers)} are listed'))
        elif self.distill.teacher is None and len(self.teachers) > 1:
            problems.append(OptionProblem(('distill', 'teacher'), f"distill.target 'teacher' with several teachers: "
                                          f'name the one to learn from ({", ".join(names)})'))
        if self.distill.teacher is not None and self.distill.teacher not in names:
            problems.append(OptionProblem(('distill', 'teacher'), f"no teacher named '{self.distill.teacher}'; "
                                          f'the teachers are {", ".join(names)}'))
        crosskd = self.distill.crosskd
        if self.distill.output_opt is None and self.distill.feature_opt is None and self.distill.dukd is None and \
                crosskd is None:
            problems.append(OptionProblem(('distill',), 'no distillation loss: set output_opt, feature_opt, dukd or '
                                          'crosskd'))
        train_data = self.datasets.get('train') or {}
        gt_size = train_data.get('gt_size')
        dukd = self.distill.dukd
        if dukd is not None and gt_size and (dukd.zoom_out_kd_weight or dukd.zoom_out_pixel_weight) and \
                (gt_size // self.scale) % self.scale and not dukd.crop_to_scale:
            problems.append(OptionProblem(('datasets', 'train', 'gt_size'), f'DUKD zoom-out shrinks the LR patch by '
                                          f'{self.scale}: gt_size must be a multiple of scale² = {self.scale ** 2}, '
                                          'or set distill.dukd.crop_to_scale: true'))
        tapped = next((t for t in self.teachers if t.name == (self.distill.teacher or names[0])), None)
        for block, what in (('feature_opt', 'feature KD'), ('crosskd', 'CrossKD')):
            if getattr(self.distill, block) is None or tapped is None:
                continue
            if tapped.pad_multiple and tapped.pad_multiple > 1 and gt_size and (gt_size // self.scale) % \
                    tapped.pad_multiple:
                multiple = self.scale * tapped.pad_multiple
                nearest = [size for size in (multiple * (gt_size // multiple), multiple * (gt_size // multiple + 1))
                           if size > 0]
                problems.append(OptionProblem(('distill', block), unpadded_message(
                    what, tapped.name, gt_size // self.scale, tapped.pad_multiple) + ': set datasets.train.gt_size to '
                    f'a multiple of scale x pad_multiple = {multiple} (e.g. {" or ".join(map(str, nearest))})'))
            if tapped.self_ensemble:
                problems.append(OptionProblem(('distill', block), f"{what} taps one forward pass of the "
                                              f"teacher; a self-ensembled teacher's output is the mean of 8: remove "
                                              f"self_ensemble from teacher '{tapped.name}', or use output KD"))
        if crosskd is not None and self.distill.target != 'teacher':
            problems.append(OptionProblem(('distill', 'target'), "crosskd runs one teacher's remaining modules: set "
                                          "distill.target: teacher (and distill.teacher)"))
        if crosskd is not None and not (crosskd.teacher_weight or crosskd.gt_weight or crosskd.dual_teacher_weight
                                        or crosskd.dual_gt_weight):
            problems.append(OptionProblem(('distill', 'crosskd'), 'every CrossKD weight is 0: set teacher_weight or '
                                          'gt_weight (cross), dual_teacher_weight or dual_gt_weight (dual)'))
        if is_train and self.train is not None and self.train.pixel_opt is None:
            problems.append(OptionProblem(('train', 'pixel_opt'), 'set the L1 to the ground truth (alpha in MTKD '
                                          'Eq. 2 is its loss_weight; 0 disables it explicitly)'))
        if train_data.get('teacher_cache_content') == 'aggregate' and (
                self.distill.target != 'aggregate' or self.distill.feature_opt is not None or dukd is not None):
            problems.append(OptionProblem(('datasets', 'train', 'teacher_cache_content'), "an aggregate cache holds "
                                          "I_MT only: it needs distill.target 'aggregate' and no feature_opt or dukd "
                                          "(they run the teachers); use teacher_cache_content: teachers"))
        if dukd is not None and dukd.separate_step and self.train is not None and (
                self.train.accumulate > 1 or self.train.grad_clip_norm is not None or self.use_amp):
            problems.append(OptionProblem(('distill', 'dukd', 'separate_step'), 'the official two-step DUKD update '
                                          'does not combine with train.accumulate, grad_clip_norm or use_amp; use '
                                          "separate_step: false (the paper's single step)"))
        return problems


class FrozenAggregator:
    """The stage-1 KA network, frozen three ways: ``(B, 3N, sH, sW)`` teacher outputs → ``I_MT``."""

    def __init__(self, options: dict, teachers, root: str | None = None, allow_random_weights: bool = False):
        self.network, _ = load_frozen_aggregator(options, teachers, root, allow_random_weights, get_root_logger())

    def __call__(self, teacher_outputs: list[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return self.network(torch.cat(teacher_outputs, dim=1))


@MODEL_REGISTRY.register()
class DistillModel(PlainSRModel):
    """Trains the student ``network_g`` from GT and a frozen target (``I_MT`` or one teacher's output)."""

    def __init__(self, opt):
        device = torch.device('cuda' if opt['num_gpu'] != 0 else 'cpu')
        self.teachers = ensemble_from_options(opt, device, get_root_logger())
        distill = opt['distill']
        self.aggregator = (FrozenAggregator(opt['aggregator'], self.teachers, opt.get('root_path'),
                                            allow_random_weights=bool(opt.get('allow_random_teachers', False)))
                           if distill['target'] == 'aggregate' else None)
        self.target_teacher = self.teachers.names.index(distill['teacher'] or self.teachers.names[0])
        super().__init__(opt)

    def init_training_settings(self):
        distill = self.opt['distill']
        self.cri_distill = build_loss(dict(distill['output_opt'])).to(self.device) if distill['output_opt'] else None
        self.cri_feature = None
        if distill.get('feature_opt'):
            arguments = dict(distill['feature_opt'])
            student_layers, teacher_layers = arguments.pop('student_layers'), arguments.pop('teacher_layers')
            self.cri_feature = build_loss(arguments).to(self.device)
            # Bad paths fail here, at start-up. clone: BasicSR archs add the skip in place after conv_after_body.
            self.student_taps = FeatureTaps(self.net_g, student_layers, clone=True)
            teacher = self.teachers.network(self.teachers.names[self.target_teacher])
            self.teacher_taps = FeatureTaps(teacher, teacher_layers, detach=True, clone=True)
        self.dukd = None
        if distill.get('dukd'):
            from mtkd.methods.dukd import DUKDLoss

            arguments = dict(distill['dukd'])
            self.dukd_separate_step = arguments.pop('separate_step')
            self.dukd_crop_to_scale = arguments.pop('crop_to_scale', False)
            pixel_weight = (self.opt['train'].get('pixel_opt') or {}).get('loss_weight')
            if pixel_weight is not None and arguments['zoom_out_pixel_weight'] != pixel_weight:
                get_root_logger().warning(
                    f"distill.dukd.zoom_out_pixel_weight is {arguments['zoom_out_pixel_weight']} but "
                    f'train.pixel_opt.loss_weight is {pixel_weight}: DUKD weighs both pixel terms with one lambda_pix '
                    '(docs/dukd.md); set them equal unless the difference is intended.')
            self.dukd = DUKDLoss(**arguments)
            self.dukd_generator = torch.Generator().manual_seed(int(self.opt.get('manual_seed') or 0))
        self.crosskd = self._build_crosskd(distill.get('crosskd'))  # before the optimizer: its adapters train
        spec = self.teachers.specs[self.target_teacher]
        # Feature KD and CrossKD use the teacher's features of the unpadded batch (checked on every batch's size).
        self.unpadded_teacher_multiple = (spec.pad_multiple if (self.cri_feature is not None or self.crosskd)
                                          and spec.pad_multiple and spec.pad_multiple > 1 else None)
        super().init_training_settings()

    def _build_crosskd(self, options):
        """CrossKD's splices, taps and adapters (mtkd/methods/crosskd.py); the adapters are sized by one probing forward
        of each network on a small input and refused under DDP (they and the dual pass are not synchronised)."""
        self.crosskd_adapters = None
        if not options:
            return None
        teacher = self.teachers.network(self.teachers.names[self.target_teacher])
        multiple = self.teachers.specs[self.target_teacher].pad_multiple or 1
        size = -(-16 // multiple) * multiple
        sample = torch.zeros(1, 3, size, size, device=self.device)
        shapes = {}
        for network, module in (('student', self.net_g), ('teacher', teacher)):
            try:
                shapes[network] = feature_shape(module, options[f'{network}_layer'], sample)
            except (ValueError, TypeError, IndexError) as error:  # a wrong path: FeatureTaps names the nearest ones
                raise ValueError(f'distill.crosskd.{network}_layer: {error}') from None
        student_shape, teacher_shape = shapes['student'], shapes['teacher']
        for network, path, shape in (('student', options['student_layer'], student_shape),
                                     ('teacher', options['teacher_layer'], teacher_shape)):
            if len(shape) != 4:
                raise ValueError(f'distill.crosskd.{network}_layer: "{path}" returns shape {shape}; CrossKD splices '
                                 '(B, C, H, W) feature maps: choose a convolutional module')
        if student_shape[-2:] != teacher_shape[-2:]:
            raise ValueError(f'distill.crosskd: student "{options["student_layer"]}" gives {student_shape[-2:]} and '
                             f'teacher "{options["teacher_layer"]}" gives {teacher_shape[-2:]} for a {size}x{size} '
                             'input; choose layers of the same spatial size')
        dual = bool(options['dual_teacher_weight'] or options['dual_gt_weight'])
        adapters = CrossKDAdapters(student_shape[1], teacher_shape[1], dual).to(self.device)
        if self.opt.get('dist') and (adapters.trained or dual):
            raise ValueError('distill.crosskd: the 1x1 adapter (widths differ) and the dual pass (a second student '
                             'forward) are not synchronised under DistributedDataParallel; train on one process')
        if adapters.trained:
            get_root_logger().info(f'CrossKD: 1x1 adapters between {student_shape[1]} (student) and '
                                   f'{teacher_shape[1]} (teacher) channels, trained with the student and saved as '
                                   'models/net_crosskd_adapter_<iter>.pth')
            self.crosskd_adapters = adapters
        weights = {key: options[key] for key in ('teacher_weight', 'gt_weight', 'dual_teacher_weight',
                                                 'dual_gt_weight')}
        return CrossKD(self.net_g, teacher, options['student_layer'], options['teacher_layer'], adapters, **weights)

    # ---- the frozen target --------------------------------------------------------------------------------
    def distillation_target(self, lq: torch.Tensor, teacher_outputs: list[torch.Tensor] | None = None,
                            like_cache: bool = True):
        """``I_MT`` (aggregate) or the chosen teacher's output for an LR batch; no autograd history.

        The teacher side runs in fp32 (``amp_teachers``: in the AMP dtype); with ``like_cache`` teacher outputs and
        the target are rounded to float16 as the caches store them, so the target is the same with and without a
        cache (:func:`mtkd.training.precision.round_like_cache`). Validation rows use ``like_cache=False``."""
        rounded = precision.round_like_cache if like_cache else (lambda images: images)
        with self.frozen_precision():
            outputs = teacher_outputs if teacher_outputs is not None else [rounded(output) for output in
                                                                           self.teachers.forward(lq)]
            if self.aggregator is not None:
                return rounded(self.aggregator(outputs))
        return outputs[self.target_teacher]

    def feed_data(self, data):
        super().feed_data(data)
        # Cached images arrive as float16 (half the host memory and copy): widened to fp32 on the device.
        cached = data.get('teacher_outputs')  # (B, N, 3, sH, sW) from the teacher-output cache, if used
        self.cached_teacher_outputs = (list(cached.to(self.device, non_blocking=True).float().unbind(1))
                                       if cached is not None else None)
        target = data.get('cached_target')  # (B, 3, sH, sW): I_MT from an aggregate cache
        self.cached_target = target.to(self.device, non_blocking=True).float() if target is not None else None

    # ---- optimisation -------------------------------------------------------------------------------------
    def compute_losses(self, loss_dict: OrderedDict) -> torch.Tensor:
        # Feature KD needs the teacher's features of this very batch: run the teachers (no cache).
        if self.cached_target is not None:  # I_MT from the cache: neither teachers nor aggregator run
            self.target = self.cached_target
        else:
            multiple = self.unpadded_teacher_multiple
            padded = [size for size in self.lq.shape[-2:] if multiple and size % multiple]
            if padded:
                raise ValueError(unpadded_message('feature KD' if self.cri_feature is not None else 'CrossKD',
                                                  self.teachers.names[self.target_teacher], padded[0], multiple) +
                                 f' (this batch is {tuple(self.lq.shape[-2:])})')
            run_teachers = self.cri_feature is not None or (self.crosskd is not None and self.crosskd.dual)
            self.target = self.distillation_target(self.lq, None if run_teachers else self.cached_teacher_outputs)
        self.output = self.net_g(self.lq)
        l_total = self.image_losses(self.output, self.gt, loss_dict)
        if self.cri_distill is not None:
            loss_dict['l_distill'] = precision.fp32_loss(self.cri_distill, self.output, self.target)
            l_total = l_total + loss_dict['l_distill']
        if self.cri_feature is not None:
            loss_dict['l_feature'] = precision.fp32_loss(self.cri_feature, self.student_taps.feature_list(),
                                                         self.teacher_taps.feature_list())
            l_total = l_total + loss_dict['l_feature']
        if self.crosskd is not None:  # after the feature term: its extra forward passes clear the taps
            terms = self.crosskd.terms(self.lq, self.gt, self.target, teacher_context=self.frozen_precision)
            loss_dict.update(terms)
            l_total = l_total + sum(terms.values())
        if self.dukd is not None and not self.dukd_separate_step:  # after the feature term: DUKD reruns the taps
            l_total = l_total + self._dukd_terms(loss_dict)
        return l_total

    def after_backward(self) -> None:
        if self.cri_feature is not None:
            self.student_taps.clear()
            self.teacher_taps.clear()
        if self.crosskd is not None:
            self.crosskd.clear()

    # ---- CrossKD's adapters train with the student and are saved beside it --------------------------------
    def trainable_parameters(self):
        adapters = list(self.crosskd_adapters.parameters()) if getattr(self, 'crosskd_adapters', None) else []
        return super().trainable_parameters() + adapters

    def save(self, epoch, current_iter):
        if getattr(self, 'crosskd_adapters', None) is not None:
            self.save_network(self.crosskd_adapters, 'net_crosskd_adapter', current_iter)
        super().save(epoch, current_iter)

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        if getattr(self, 'crosskd_adapters', None) is not None:
            path = os.path.join(self.opt['path']['models'], f"net_crosskd_adapter_{resume_state['iter']}.pth")
            if not os.path.isfile(path):
                raise FileNotFoundError(f'resuming CrossKD needs its adapter checkpoint {path} (saved with every '
                                        'net_g checkpoint); it is missing')
            load_weights(self.crosskd_adapters, path, param_key='params', strict=True)

    def optimize_parameters(self, current_iter):
        if self.dukd is None or not self.dukd_separate_step:
            super().optimize_parameters(current_iter)
            return
        # The official DUKD trainer: a second step on the DUKD terms, without zero_grad in between (validation
        # refuses accumulate, clipping and AMP with it).
        self._current_iter = current_iter
        self.optimizer_g.zero_grad()
        loss_dict = OrderedDict()
        self.compute_losses(loss_dict).backward()
        self.after_backward()
        self.optimizer_g.step()
        self._dukd_terms(loss_dict).backward()
        self.optimizer_g.step()
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def frozen_networks(self) -> list[torch.nn.Module]:
        networks = super().frozen_networks()
        return networks + [self.aggregator.network] if self.aggregator is not None else networks

    def _dukd_terms(self, loss_dict: OrderedDict) -> torch.Tensor:
        """DUKD's terms on upcycled inputs (zoom-in tiles of GT, zoomed-out LR), against the same frozen target."""
        lq, gt, scale = self.lq, self.gt, self.opt['scale']
        if self.dukd_crop_to_scale:  # zoom-out needs LR sides divisible by the scale (MTKD's LR 64 at x3)
            height, width = lq.shape[-2] // scale * scale, lq.shape[-1] // scale * scale
            lq, gt = lq[..., :height, :width], gt[..., :height * scale, :width * scale]
        terms = self.dukd(self.net_g, self.distillation_target, lq, gt, scale, self.dukd_generator)
        loss_dict.update(terms)
        return sum(terms.values())

    # ---- validation: the target's own score, once ---------------------------------------------------------
    def reference_outputs(self) -> dict[str, torch.Tensor]:
        label = 'aggregate' if self.aggregator is not None else f'teacher_{self.teachers.names[self.target_teacher]}'
        return {label: self.distillation_target(self.lq, like_cache=False)}

