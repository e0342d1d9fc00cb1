"""Build gdla and its compiled extension ``gdla._C`` against the torch already installed.

``pip install --no-build-isolation -e .`` builds a ``CppExtension`` from ``csrc/*.cpp``; see the
README's "Building the extension" for details.
"""

from __future__ import annotations

import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def extensions() -> list:
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources:
        return []
    return [
        CppExtension(
            "gdla._C",
            sources,
            extra_compile_args={"cxx": ["-O3", "-fopenmp", "-DPy_LIMITED_API=0x030a0000"]},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtension})
