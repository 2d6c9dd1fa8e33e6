"""CrossKD for SR: the student's features run through the frozen teacher's remaining modules (a reconstruction).

Fang, Hu and Hu, "Cross knowledge distillation for image super-resolution", ICVIP 2022 (MTKD's ref. [15]); no code
is public. What we know of the method is the abstract of the authors' preprint "Dual Cross Knowledge Distillation
for Image Super-Resolution" (SSRN 4305289, 2022): supervision is obtained "by cascading the student into the
teacher network for directly utilizing teacher's well-trained parameters", which "avoids designing alignment with
obscure feature textures between two networks". Everything else here is our reconstruction; docs/baselines.md
lists each choice.

* **Cross** (student → teacher): the student's feature at ``student_layer`` replaces the output of the teacher's
  ``teacher_layer`` during a forward pass of the teacher on the same LR batch; the teacher's remaining modules
  (its later blocks, global skip and upsampler) turn it into an SR image, the *hybrid* output. The hybrid output is
  supervised (L1) against the teacher's own output and/or the ground truth. The teacher is frozen, but the
  gradient flows *through* its tail into the student's layers up to ``student_layer``.
* **Dual** (teacher → student, optional): the teacher's feature at ``teacher_layer`` replaces the student's
  ``student_layer`` output; the student's remaining modules produce a second hybrid output, supervised the same way
  (its gradient reaches the student's layers after the cut).
* **Adapter**: where the two widths differ, a trained 1x1 convolution maps one width to the other (one per
  direction); with equal widths there is none (identity).

Everything is done with forward hooks on module paths (as :class:`mtkd.methods.feature_taps.FeatureTaps`), never with a
subclassed arch: :class:`OutputSplice` replaces one submodule's output for one forward pass.

Shapes: features ``(B, C, h, w)`` at the spliced modules (both networks' features must have the same ``h, w``;
channels may differ with an adapter), images ``(B, 3, s·h, s·w)`` in ``[0, 1]``.
"""
from __future__ import annotations

import contextlib
import difflib
from typing import Callable
import torch
from torch import nn

from mtkd.methods.feature_taps import FeatureTaps, list_module_paths, probe_forward, unwrap_model

__all__ = ['OutputSplice', 'ChannelAdapter', 'CrossKDAdapters', 'CrossKD', 'feature_shape']


def _submodule(model: nn.Module, path: str, what: str) -> nn.Module:
    bare = unwrap_model(model)
    try:
        return bare.get_submodule(path)
    except AttributeError:
        nearest = difflib.get_close_matches(path, list_module_paths(bare), n=5, cutoff=0.5)
        hint = f' Nearest existing paths: {", ".join(nearest)}.' if nearest else ''
        raise ValueError(f'{what}: "{path}" is not a submodule of {type(bare).__name__}.{hint} List all with '
                         'mtkd.methods.feature_taps.list_module_paths(model).') from None


class OutputSplice:
    """Replaces the output of the submodule at ``path`` of ``model`` with a given tensor, for one forward pass.

    A forward hook is registered once; it does nothing unless :meth:`__call__` is running, so ordinary forward passes
    of ``model`` are unchanged. ``splice(replacement, x)`` runs ``model(x)`` with the output of ``path`` replaced by
    ``replacement`` (every later module sees the replacement; modules before it still run, on ``x``). The replacement
    must have the replaced output's shape; it is cast to the output's dtype (the teacher side may run in fp32 while
    the student's feature is fp16 under AMP). A module that runs twice in one forward (shared weights) is replaced
    both times.

    Gradients: the replacement keeps its autograd graph, so a loss on the spliced forward's output reaches whatever
    produced the replacement, through the modules after ``path``; ``model``'s own parameters get gradients only if
    they require grad (a frozen teacher's do not).
    """

    def __init__(self, model: nn.Module, path: str, what: str = 'OutputSplice'):
        self._model = model
        self.path = path
        self._what = what
        self._replacement: torch.Tensor | None = None
        self._spliced = 0
        self._handle = _submodule(model, path, what).register_forward_hook(self._hook)

    def __call__(self, replacement: torch.Tensor, *inputs, **kwargs) -> torch.Tensor:
        if not torch.is_tensor(replacement):
            raise TypeError(f'{self._what}: the replacement must be a tensor, got {type(replacement).__name__}')
        self._replacement, self._spliced = replacement, 0
        try:
            output = self._model(*inputs, **kwargs)
        finally:
            self._replacement = None
        if not self._spliced:
            raise RuntimeError(f'{self._what}: "{self.path}" did not run in the forward pass, so nothing was '
                               'replaced; choose a module that the forward uses')
        return output

    def remove(self) -> None:
        """Remove the hook (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module, inputs, output):
        replacement = self._replacement
        if replacement is None:
            return None
        if not torch.is_tensor(output):
            raise TypeError(f'{self._what}: "{self.path}" returns a {type(output).__name__}; only a module that '
                            'returns one tensor can be spliced')
        if replacement.shape != output.shape:
            raise ValueError(f'{self._what}: the feature put in place of "{self.path}" has shape '
                             f'{tuple(replacement.shape)} but that module returns {tuple(output.shape)}; pick layers '
                             'of the same spatial size (channels are matched by the 1x1 adapter)')
        self._spliced += 1
        # A private copy: the network may change the spliced output in place (BasicSR's EDSR and RCAN do
        # ``res += x`` after conv_after_body), which must not alter the caller's tensor.
        return replacement.to(output.dtype) if replacement.dtype != output.dtype else replacement.clone()


class ChannelAdapter(nn.Module):
    """A 1x1 convolution with bias, ``in_channels`` → ``out_channels``: ``(B, C_in, h, w)`` → ``(B, C_out, h, w)``.

    PyTorch's default initialisation (Kaiming-uniform, as every BasicSR conv without ``default_init_weights``);
    trained with the student. Used only where the two networks' widths differ at the cut."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(features)


class CrossKDAdapters(nn.Module):
    """The trained width adapters of CrossKD: ``to_teacher`` (student width → teacher width, for the cross pass) and
    ``to_student`` (teacher width → student width, for the dual pass); ``nn.Identity`` where the widths agree or the
    direction is not used. Saved beside the student's checkpoint (``net_crosskd_adapter_<iter>.pth``), never inside it,
    so the student's file loads into the bare student arch."""

    def __init__(self, student_channels: int, teacher_channels: int, dual: bool):
        super().__init__()
        differ = student_channels != teacher_channels
        self.to_teacher = ChannelAdapter(student_channels, teacher_channels) if differ else nn.Identity()
        self.to_student = ChannelAdapter(teacher_channels, student_channels) if differ and dual else nn.Identity()

    @property
    def trained(self) -> bool:
        """Whether there is anything to train and save."""
        return any(True for _ in self.parameters())


def feature_shape(model: nn.Module, path: str, sample_input: torch.Tensor) -> tuple[int, ...]:
    """The shape of the output of ``path`` for ``sample_input``: one probing forward in eval mode under ``no_grad``
    (the training flag is restored). Used to size the adapters at start-up."""
    bare = unwrap_model(model)
    with FeatureTaps(bare, [path]) as taps:
        probe_forward(bare, sample_input)
        feature = taps.feature_list()[0]
    return tuple(feature.shape)


def _mean_l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction.float() - target.detach().float()).abs().mean()


class CrossKD:
    """The CrossKD terms of one training step (reconstruction; module docstring and docs/baselines.md).

    Terms (each a weighted L1 mean over ``(B, 3, sH, sW)``; a weight of 0 skips its term, and a direction whose
    weights are both 0 skips its forward pass)::

        hybrid   = T_after(A_t(S_upto(x)))          the student's features through the teacher's remaining modules
        l_cross_teacher = teacher_weight      · L1(hybrid, T(x))
        l_cross_gt      = gt_weight           · L1(hybrid, y)
        dual     = S_after(A_s(T_upto(x)))          the teacher's features through the student's remaining modules
        l_dual_teacher  = dual_teacher_weight · L1(dual, T(x))
        l_dual_gt       = dual_gt_weight      · L1(dual, y)

    ``S_upto`` / ``T_upto``: the network up to and including the module at ``student_layer`` / ``teacher_layer``;
    ``*_after``: the rest of that network's forward (including global skips from earlier modules, which are computed
    from ``x`` by the network itself). ``A_t``, ``A_s``: :class:`CrossKDAdapters` (identity for equal widths).

    Use, once per step, after the student's ordinary forward on ``x`` (it fills the student tap) and, for the dual
    pass, after a teacher forward on ``x`` (it fills the teacher tap): ``terms(x, y, teacher_output)``. The teacher must
    be frozen (its parameters ``requires_grad=False``, eval mode); the cross pass runs it with autograd on, so that
    the gradient can pass through it to the student.

    Args:
        student: the trained network as called in training (DDP wrapper allowed; paths refer to the bare network).
        teacher: the frozen teacher network (bare, unpadded: the caller makes sure no padding is needed).
        student_layer, teacher_layer: module paths of the cut in each network.
        adapters: :class:`CrossKDAdapters` (or None: identity both ways; the widths must then agree).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, student_layer: str, teacher_layer: str,
                 adapters: CrossKDAdapters | None = None, teacher_weight: float = 1.0, gt_weight: float = 0.0,
                 dual_teacher_weight: float = 0.0, dual_gt_weight: float = 0.0):
        weights = dict(teacher_weight=teacher_weight, gt_weight=gt_weight, dual_teacher_weight=dual_teacher_weight,
                       dual_gt_weight=dual_gt_weight)
        for name, value in weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f'CrossKD: {name} must be a number >= 0 (0 disables the term), got {value!r}')
        if not any(weights.values()):
            raise ValueError('CrossKD: every weight is 0; set teacher_weight or gt_weight (cross) or '
                             'dual_teacher_weight or dual_gt_weight (dual)')
        self.teacher_weight, self.gt_weight = float(teacher_weight), float(gt_weight)
        self.dual_teacher_weight, self.dual_gt_weight = float(dual_teacher_weight), float(dual_gt_weight)
        self.adapters = adapters if adapters is not None else CrossKDAdapters(1, 1, dual=False)
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.student_taps = FeatureTaps(student, [student_layer], clone=True) if self.cross else None
        self.into_teacher = OutputSplice(teacher, teacher_layer, 'crosskd.teacher_layer') if self.cross else None
        # The teacher's feature is a target-side input: detached (no gradient can reach the teacher) and copied.
        self.teacher_taps = FeatureTaps(teacher, [teacher_layer], detach=True, clone=True) if self.dual else None
        self.into_student = OutputSplice(student, student_layer, 'crosskd.student_layer') if self.dual else None

    @property
    def cross(self) -> bool:
        """Whether the student → teacher pass runs."""
        return self.teacher_weight > 0 or self.gt_weight > 0

    @property
    def dual(self) -> bool:
        """Whether the teacher → student pass runs."""
        return self.dual_teacher_weight > 0 or self.dual_gt_weight > 0

    def student_feature(self) -> torch.Tensor:
        """The student's feature at the cut, from its last forward (with its graph)."""
        return self.student_taps.feature_list()[0]

    def teacher_feature(self) -> torch.Tensor:
        """The teacher's feature at the cut, from its last forward (detached)."""
        return self.teacher_taps.feature_list()[0]

    def hybrid(self, lq: torch.Tensor, student_feature: torch.Tensor,
               teacher_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
               ) -> torch.Tensor:
        """``T_after(A_t(student_feature))``: the teacher run on ``lq`` with the student's feature spliced in (inside
        ``teacher_context()``, e.g. the teacher side's precision; autograd stays on)."""
        replacement = self.adapters.to_teacher(student_feature)
        with teacher_context():
            return self.into_teacher(replacement, lq)

    def dual_hybrid(self, lq: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        """``S_after(A_s(teacher_feature))``: the student run on ``lq`` with the teacher's feature spliced in."""
        return self.into_student(self.adapters.to_student(teacher_feature.detach()), lq)

    def terms(self, lq: torch.Tensor, gt: torch.Tensor | None, teacher_output: torch.Tensor | None,
              teacher_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
              ) -> dict[str, torch.Tensor]:
        """The weighted terms for one batch (names as in the class docstring; terms with weight 0 are absent).

        ``teacher_output``: ``T(x)`` (the caller's, e.g. from the teacher-output cache); ``teacher_context``: where the
        teacher's pass runs (the student's dual pass runs in the caller's context)."""
        # Both captures are read before any extra forward pass: each forward of a network clears its taps.
        student_feature = self.student_feature() if self.cross else None
        teacher_feature = self.teacher_feature() if self.dual else None
        terms: dict[str, torch.Tensor] = {}
        for prefix, run, teacher_weight, gt_weight in (
                ('l_cross', lambda: self.hybrid(lq, student_feature, teacher_context), self.teacher_weight,
                 self.gt_weight),
                ('l_dual', lambda: self.dual_hybrid(lq, teacher_feature), self.dual_teacher_weight,
                 self.dual_gt_weight)):
            if not (teacher_weight > 0 or gt_weight > 0):
                continue
            output = run()
            for suffix, weight, target in (('teacher', teacher_weight, teacher_output), ('gt', gt_weight, gt)):
                if weight > 0:
                    if target is None:
                        raise ValueError(f'CrossKD: {prefix}_{suffix} needs the {suffix} image')
                    terms[f'{prefix}_{suffix}'] = weight * _mean_l1(output, target)
        return terms

    def clear(self) -> None:
        """Release the captured features (after backward)."""
        for taps in (self.student_taps, self.teacher_taps):
            if taps is not None:
                taps.clear()

    def remove(self) -> None:
        """Remove every hook."""
        for item in (self.student_taps, self.teacher_taps, self.into_teacher, self.into_student):
            if item is not None:
                item.remove()
