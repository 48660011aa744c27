"""``LearnableParameter``: the ``nn.Parameter`` of a layer's learnable parameter, which
counts the uses of ``.data``.

A write through ``param.data`` moves no version counter (``.data`` is a new tensor with a
counter of its own), so a layer cannot tell from the versions that such a write happened.
Counting the uses of ``.data`` (reads and assignments, of every ``LearnableParameter``)
lets a layer with ``check_finite=True`` re-check its parameters' constraints on the next
call after one, instead of on every call.
"""

from __future__ import annotations

import torch
from torch import nn

_TENSOR_DATA = torch.Tensor.data  # the C attribute that ``.data`` is on every tensor


class LearnableParameter(nn.Parameter):
    """An ``nn.Parameter`` (in every respect) whose ``.data`` uses are counted in the
    class attribute :attr:`data_uses`, shared by all instances. A copy (``deepcopy``) is one
    too; pickling, and ``nn.Module._apply`` where it rebuilds a parameter, give a plain
    ``nn.Parameter``, which a layer then checks on every call."""

    data_uses = 0
    """How many times ``.data`` of any ``LearnableParameter`` was read or assigned."""

    @property
    def data(self) -> torch.Tensor:  # type: ignore[override]
        LearnableParameter.data_uses += 1
        return _TENSOR_DATA.__get__(self)

    @data.setter
    def data(self, value: torch.Tensor) -> None:
        LearnableParameter.data_uses += 1
        _TENSOR_DATA.__set__(self, value)

    def __repr__(self) -> str:
        # as a plain nn.Parameter prints (an alias of the same memory)
        return repr(nn.Parameter(self.detach(), requires_grad=self.requires_grad))
