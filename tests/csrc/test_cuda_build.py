"""Every CUDA source of gdla._C compiles with nvcc against the installed torch headers.

Without a GPU (or without a CUDA build of torch) the CUDA kernels are never built by setup.py,
so this is what keeps csrc/cuda/*.cu honest on CPU-only machines. The sources compile in
parallel (the one that includes torch headers takes ~30 s, the kernels a few seconds); the
test is skipped where no nvcc is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp_extension

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
ARCH = "sm_90"  # H100; any one real architecture checks the device code


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found is None and cpp_extension.CUDA_HOME:
        candidate = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
        found = candidate if os.access(candidate, os.X_OK) else None
    return found


NVCC = find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not installed")


def nvcc_command(source: Path, output: Path) -> list[str]:
    includes = [f"-I{path}" for path in cpp_extension.include_paths()] + [f"-I{ROOT / 'csrc'}"]
    defines = ["-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]
    torch_include = Path(cpp_extension.include_paths()[0])
    if not (torch_include / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        # A CPU wheel ships c10/cuda headers but not this configure-time one; it only sets export macros.
        defines.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    return [
        NVCC,
        "-c",
        str(source),
        "-o",
        str(output),
        "-std=c++20",
        "-O3",
        f"-arch={ARCH}",
        "-Xcompiler",
        "-fPIC",
        *cpp_extension.COMMON_NVCC_FLAGS,
        *defines,
        *includes,
    ]


@pytest.fixture(scope="module")
def compilations(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.Popen, Path]]:
    """Starts every nvcc at once; each test then waits for its own."""
    out = tmp_path_factory.mktemp("cuda_objects")
    started = {}
    for source in SOURCES:
        target = out / f"{source.stem}.o"
        process = subprocess.Popen(
            nvcc_command(source, target), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        started[source.name] = (process, target)
    yield started
    for process, _ in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def test_there_are_cuda_sources_for_every_kernel_family() -> None:
    names = {source.name for source in SOURCES}
    assert {"register_cuda.cu", "elementwise.cu", "small_inverse.cu"} <= names


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.name)
def test_cuda_source_compiles(source: Path, compilations) -> None:
    process, target = compilations[source.name]
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, f"nvcc failed on {source.name}:\n{output}"
    assert target.stat().st_size > 0
