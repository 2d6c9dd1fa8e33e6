"""Ranges of optimizer and scheduler arguments, checked before anything is built.

The names of these arguments are checked against the signatures (:func:`mtkd.config.validate.signature_problems`);
here their values: a negative ``gamma`` would train with a negative learning rate, ``milestones: 420`` or
``betas: [0.9]`` fail deep inside torch, unsorted milestones or ``warmup_iter`` beyond ``total_iter`` run a
schedule nobody meant. Each problem names the key and the valid range.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mtkd.config.errors import OptionProblem

UnitInterval = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]


class _Arguments(BaseModel):
    """Typed arguments; keys not listed are checked by name elsewhere and ignored here."""
    model_config = ConfigDict(extra='ignore', strict=False)


class AdamArguments(_Arguments):
    """``torch.optim.Adam``/``AdamW``: ``betas`` two decay rates in [0, 1), ``eps`` > 0, ``weight_decay`` >= 0."""
    betas: tuple[UnitInterval, UnitInterval] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: float = Field(default=0.0, ge=0.0)


class AdanArguments(_Arguments):
    """:class:`mtkd.training.adan.Adan`: three decay rates in [0, 1), ``eps`` > 0, ``weight_decay`` >= 0."""
    betas: tuple[UnitInterval, UnitInterval, UnitInterval] = (0.98, 0.92, 0.99)
    eps: PositiveFloat = 1e-8
    weight_decay: float = Field(default=0.0, ge=0.0)


def _strictly_increasing(values: Sequence[int], name: str) -> None:
    if any(later <= earlier for earlier, later in zip(values, values[1:])):
        raise ValueError(f'{name} must be strictly increasing, got {list(values)}')


class MultiStepArguments(_Arguments):
    """BasicSR's ``MultiStepRestartLR``: lr × ``gamma`` at each milestone, restarts with their weights."""
    milestones: list[PositiveInt]
    gamma: float = Field(default=0.1, gt=0.0, le=1.0, description='lr factor at each milestone, in (0, 1]')
    restarts: list[NonNegativeInt] = [0]
    restart_weights: list[PositiveFloat] = [1.0]

    @model_validator(mode='after')
    def _orders(self):
        _strictly_increasing(self.milestones, 'milestones')
        _strictly_increasing(self.restarts, 'restarts')
        if len(self.restarts) != len(self.restart_weights):
            raise ValueError(f'restarts has {len(self.restarts)} entries but restart_weights {len(self.restart_weights)}: '
                             'give one weight per restart')
        return self


class CosineArguments(_Arguments):
    """BasicSR's ``CosineAnnealingRestartLR``: cosine periods, one restart weight each, floor ``eta_min``."""
    periods: list[PositiveInt] = Field(min_length=1)
    restart_weights: list[PositiveFloat] = [1.0]
    eta_min: float = Field(default=0.0, ge=0.0)

    @model_validator(mode='after')
    def _lengths(self):
        if len(self.periods) != len(self.restart_weights):
            raise ValueError(f'periods has {len(self.periods)} entries but restart_weights {len(self.restart_weights)}: '
                             'give one weight per period')
        return self


SCHEDULER_ARGUMENTS = {'MultiStepLR': MultiStepArguments, 'MultiStepRestartLR': MultiStepArguments,
                       'CosineAnnealingRestartLR': CosineArguments}
OPTIMIZER_ARGUMENTS = {'Adam': AdamArguments, 'AdamW': AdamArguments, 'Adan': AdanArguments}


def _typed(model: type[_Arguments], arguments: dict[str, Any], location: tuple) -> tuple[Any, list[OptionProblem]]:
    try:
        return model.model_validate(arguments), []
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = location + tuple(part for part in item['loc'] if isinstance(part, str))
            message = item['msg'].removeprefix('Value error, ')
            if item['type'] not in ('missing', 'value_error'):
                message += f" (got {item.get('input')!r})"
            problems.append(OptionProblem(where, message))
        return None, problems


def schedule_problems(train: Any, location: tuple = ('train',)) -> tuple[list[OptionProblem], list[str]]:
    """``(problems, notes)`` for a validated ``train`` block: optimizer and scheduler ranges, ``warmup_iter``,
    and the schedule against ``total_iter``. Notes are legal but probably unintended (printed, not refused)."""
    problems, notes = [], []
    optimizer = train.optim_g
    if optimizer.type in OPTIMIZER_ARGUMENTS:
        problems += _typed(OPTIMIZER_ARGUMENTS[optimizer.type], optimizer.arguments(), location + ('optim_g',))[1]
    total_iter, scheduler = train.total_iter, train.scheduler
    if not -1 <= train.warmup_iter < total_iter:
        problems.append(OptionProblem(location + ('warmup_iter',), f'warmup_iter {train.warmup_iter} must be -1 (no '
                                      f'warm-up) or from 0 to total_iter - 1 ({total_iter - 1})'))
    if scheduler.type not in SCHEDULER_ARGUMENTS:
        return problems, notes
    typed, found = _typed(SCHEDULER_ARGUMENTS[scheduler.type], scheduler.arguments(), location + ('scheduler',))
    problems += found
    if isinstance(typed, CosineArguments):
        if sum(typed.periods) < total_iter:
            problems.append(OptionProblem(location + ('scheduler', 'periods'), f'the periods add up to '
                                          f'{sum(typed.periods)} iterations but total_iter is {total_iter}: '
                                          'BasicSR has no learning rate past the last period'))
        if typed.eta_min >= optimizer.lr:
            problems.append(OptionProblem(location + ('scheduler', 'eta_min'), f'eta_min {typed.eta_min} must be '
                                          f'below optim_g.lr {optimizer.lr}'))
    elif isinstance(typed, MultiStepArguments):
        late = [milestone for milestone in typed.milestones if milestone >= total_iter]
        if late:
            notes.append(f'train.scheduler.milestones {late} are at or after total_iter {total_iter}: they never '
                         'lower the learning rate')
    return problems, notes


__all__ = ['schedule_problems', 'AdamArguments', 'MultiStepArguments', 'CosineArguments']
