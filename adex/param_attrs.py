"""Parameters as module attributes: ``layer.tau`` reads every parameter as a tensor in its
canonical unit, and assigning one converts, validates and re-packs it (or says why not).

A mixin of :class:`adex.module.SpikingNeuron`, which stores learnable parameters as
``nn.Parameter``s, fixed per-neuron ones as float64 buffers and fixed scalars as floats in
``_scalar_params``, and caches their packed form (``_repack``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from adex.params import PARAM_KINDS, AdExParams, _as_param
from adex.units import CANONICAL, to_canonical


def _param_property(name: str) -> property:
    unit = CANONICAL[PARAM_KINDS[name]][0]

    def get(self) -> Tensor:
        return self._param_attribute(name)

    def set_(self, value: Any) -> None:
        self._assign_param(name, value)

    doc = (f"``{name}`` ({unit}) as a tensor: the ``nn.Parameter`` when learnable, else a "
           "float64 tensor (shape ``()`` or ``in_size``); assignable (quantity or number), "
           "validated and re-packed.")  # fmt: skip
    return property(get, set_, doc=doc)


class ParamAttributes(nn.Module):
    """``layer.<parameter>`` for each of ``PARAM_KINDS``: read as a tensor (canonical unit),
    assigned with the constructor's conversion and validation."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in PARAM_KINDS:  # nn.Module would intercept Parameter/buffer names first
            self._assign_param(name, value)
        else:
            super().__setattr__(name, value)

    def _param_attribute(self, name: str) -> Tensor:
        if name not in self.param_names:
            raise AttributeError(f"{type(self).__name__} has no parameter {name!r}")
        d = self.__dict__
        if name in d["_parameters"]:
            return d["_parameters"][name]
        if name in d["_buffers"]:
            return d["_buffers"][name]
        scalars = d.get("_scalar_params")
        if scalars is None or name not in scalars:  # not yet set (during construction)
            raise AttributeError(f"{type(self).__name__}.{name} is not set yet")
        return torch.tensor(scalars[name], dtype=torch.float64, device=self._rt.packed_device)

    def _assign_param(self, name: str, value: Any) -> None:
        """Set parameter ``name`` to ``value`` (a quantity, number, array or tensor; an
        ``nn.Parameter`` replaces a learnable one). Learnable parameters are written in
        place (optimizers keep their reference); fixed ones become a scalar or a per-neuron
        buffer. Everything is validated before anything changes."""
        cls = type(self).__name__
        if name not in self.param_names:
            raise AttributeError(f"{cls} has no parameter {name!r}")
        learnable = name in self.learnable
        if isinstance(value, nn.Parameter):
            if not learnable:
                raise ValueError(
                    f"{cls}.{name} is fixed: construct the layer with learnable=(..., "
                    f"{name!r}) to train it (or assign a plain value)"
                )
            if tuple(value.shape) not in ((), self.in_size):
                raise ValueError(f"{name} must be shaped () or in_size {self.in_size}, "
                                 f"got {tuple(value.shape)}")  # fmt: skip
            self._validated_with(name, value.detach().to(torch.float64))
            self._parameters[name] = value
            self._repack(share=True)
            return
        converted = _as_param(to_canonical(value, PARAM_KINDS[name], name), name, self.in_size)
        if learnable:
            param = self._parameters[name]
            if param.dim() == 0 and isinstance(converted, Tensor):
                raise ValueError(
                    f"{cls}.{name} is a learnable scalar (shape ()); it takes a scalar, "
                    "not a per-neuron value (construct it per-neuron to have one)"
                )
            self._validated_with(name, converted)
            with torch.no_grad():
                param.copy_(torch.as_tensor(converted, dtype=param.dtype))
        else:
            self._validated_with(name, converted)
            if isinstance(converted, Tensor):
                self._scalar_params.pop(name, None)
                self._buffers[name] = converted.to(self._rt.packed_device)
            else:
                self._buffers.pop(name, None)
                self._scalar_params[name] = converted
            self._param_buffers = [k for k in PARAM_KINDS if k in self._buffers]
        self._repack()

    def _validated_with(self, name: str, value: Any) -> None:
        """Raise ``ValueError`` (naming the constraint) if ``name = value`` would make the
        parameters invalid."""
        values = self._param_values()
        values[name] = value
        try:
            AdExParams(**{k: v.detach() if isinstance(v, Tensor) else v
                          for k, v in values.items()})  # fmt: skip
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}.{name}: {err}") from err


for _name in PARAM_KINDS:
    setattr(ParamAttributes, _name, _param_property(_name))
