"""Build gdla and its compiled extension ``gdla._C`` against the torch already installed.

``pip install --no-build-isolation -e .`` (or ``python setup.py build_ext --inplace`` for a quick
rebuild) compiles ``csrc/*.cpp`` into a ``CppExtension``. When the installed torch is a CUDA build
and a CUDA toolkit is found (or ``FORCE_CUDA=1``), ``csrc/cuda/*.cu`` are added and it becomes a
``CUDAExtension``. ``GDLA_CPU_ONLY=1`` forces the CPU-only build. The packages themselves (``gdla``
and ``gdla_plugins`` from ``plugins/``) are declared in pyproject.toml.

The library uses only Python's limited API (``gdla._C`` is an empty module whose import runs the
op registrations), so one ``abi3`` binary serves every Python >= 3.10.
"""

from __future__ import annotations

import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes")


def use_cuda() -> bool:
    """CUDA kernels when forced, or when torch is a CUDA build and a toolkit is installed."""
    if _flag("GDLA_CPU_ONLY"):
        return False
    if _flag("FORCE_CUDA"):
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def extensions() -> list:
    # Relative paths: setuptools wants sources relative to the project root.
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp"), root_dir=HERE))
    if not sources:
        return []
    # py_limited_api=True makes BuildExtension define Py_LIMITED_API (Python 3.10) itself.
    # -fno-math-errno: sqrt compiles to the (vectorisable) instruction; it is correctly rounded either
    # way, so no result changes, only that libm would set errno for a negative argument.
    cxx = ["-O3", "-fopenmp", "-fno-math-errno"]
    options = {
        "include_dirs": [os.path.join(HERE, "csrc")],
        "extra_link_args": ["-fopenmp"],
        "py_limited_api": True,
    }
    if use_cuda():
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu"), root_dir=HERE))
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        print(f"gdla: building gdla._C with CUDA kernels (CUDA_HOME={CUDA_HOME})")
        return [CUDAExtension("gdla._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **options)]
    print("gdla: building gdla._C with CPU kernels only")
    return [CppExtension("gdla._C", sources, extra_compile_args={"cxx": cxx}, **options)]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
