"""A pretrained field whose time and output follow a diffusers scheduler: the flax port and the
PyTorch denoisers both read kind, process and their description from one
:class:`~wgfm.interop.schedulers.SchedulerMap`."""

# No `from __future__ import annotations`: equinox reads AbstractVar annotations unstringified.
from typing import TYPE_CHECKING

import equinox as eqx

from ..pretrained import AbstractPretrainedField
from ..processes import AbstractProcess
from .schedulers import SchedulerMap


class AbstractScheduledField(AbstractPretrainedField):
    """:class:`~wgfm.pretrained.AbstractPretrainedField` whose ``kind`` and ``process`` are
    those of its ``schedule`` (the pipeline's scheduler as a wgfm process and calling
    convention)."""

    if TYPE_CHECKING:  # as in AbstractPretrainedField: a property for type checkers

        @property
        def schedule(self) -> SchedulerMap: ...

    else:
        schedule: eqx.AbstractVar[SchedulerMap]

    @property
    def kind(self) -> str:
        return self.schedule.kind

    @property
    def process(self) -> AbstractProcess:
        return self.schedule.process

    @property
    def prediction_type(self) -> str:
        """The scheduler's ``prediction_type`` (diffusers' name for what the network predicts)."""
        return self.schedule.prediction_type

    def describe_process(self) -> str:
        return self.schedule.describe()
