"""Fused Triton kernels of the AdEx family (installed as ``adex.kernels``).

``scan_fwd`` runs the whole forward time scan in one kernel, ``scan_bwd`` the whole
surrogate-gradient BPTT adjoint recursion in one kernel. Both take the packed parameter
layout of ``adex.params.AdExParams.packed``.
"""

from adex.kernels.scan_bwd import adex_scan_bwd
from adex.kernels.scan_fwd import adex_scan_fwd

__all__ = ["adex_scan_bwd", "adex_scan_fwd"]
