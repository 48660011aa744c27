"""The fused CPU backend (``backend='cpu'``): the forward scan and its BPTT backward as two
numba kernels, parallel over blocks of neurons, the same algorithm as the Triton kernels
(``adex.kernels``): one pass over T per direction, V saved for the backward, the adjoint
recursion in reverse, the parameter gradients accumulated per neuron.

``device_math`` (elementwise formulas), ``step`` (one step, its factors, adjoint and
parameter-gradient terms), ``scan`` (the two kernels and their launchers), ``autograd``
(the ``autograd.Function`` and the backend entry :func:`adex.cpu.autograd.cpu_scan`),
``fastexp`` (the vectorizable exp), ``threading_layer`` (a thread-safe numba layer, chosen
on import).
"""

from adex.cpu.threading_layer import choose_threadsafe_layer

choose_threadsafe_layer()
