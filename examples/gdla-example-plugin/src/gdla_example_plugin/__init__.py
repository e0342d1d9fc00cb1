"""An example third-party gdla plugin.

It adds the problem ``least-squares`` (:class:`~gdla_example_plugin.least_squares.LeastSquares`)
and the optimizer ``nadam`` (:class:`~gdla_example_plugin.nadam.NAdam`). Nothing needs importing:
once the distribution is installed, gdla finds both through the entry points of group ``gdla``.
"""

from __future__ import annotations

__version__ = "0.1.0"
