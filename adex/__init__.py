"""adex: AdExIF spiking neurons for PyTorch with fused Triton forward/backward scans.

Public API: the :class:`AdExIF` module (and the family), the recurrent layer
:class:`Recurrent`, the functional :func:`adex_scan`, its per-step
PyTorch reference :func:`adex_scan_reference`, parameters :class:`AdExParams`, the unit
registry ``u``, surrogate spike functions (``adex.surrogate``), state initializers
(``adex.init``) and the model-wide state helpers :func:`init_state`, :func:`reset_state` and
:func:`detach_state` (``adex.state``).
"""

from adex import init, presets, surrogate
from adex.functional import RefScanResult, ScanResult, SynScanResult, adex_scan
from adex.learnable_param import LearnableParameter
from adex.models import LI, LIF, AdExIF, AdExIFRef, AdLIF, AdLIFRef, ExpIF, ExpIFRef
from adex.module import SpikingNeuron, StateSequence, SynStateSequence
from adex.params import RUNAWAY_CEILING, AdExParams
from adex.recurrent import Recurrent
from adex.reference import adex_scan_reference, adex_step_reference
from adex.state import detach_state, init_state, reset_state
from adex.units import u

try:  # registers the adex::scan_fwd / adex::scan_bwd custom ops
    from adex import ops as _ops  # noqa: F401

    HAS_TRITON = True
except ImportError:  # no Triton on this platform: the reference backend still works
    HAS_TRITON = False

__all__ = [
    "HAS_TRITON",
    "LI",
    "LIF",
    "RUNAWAY_CEILING",
    "AdExIF",
    "AdExIFRef",
    "AdExParams",
    "AdLIF",
    "AdLIFRef",
    "ExpIF",
    "ExpIFRef",
    "LearnableParameter",
    "Recurrent",
    "RefScanResult",
    "ScanResult",
    "SpikingNeuron",
    "StateSequence",
    "SynScanResult",
    "SynStateSequence",
    "adex_scan",
    "adex_scan_reference",
    "adex_step_reference",
    "detach_state",
    "init",
    "init_state",
    "presets",
    "reset_state",
    "surrogate",
    "u",
]
__version__ = "0.1.0"
