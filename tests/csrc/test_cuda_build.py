"""Every CUDA source of gdla._C compiles with nvcc against the installed torch headers.

Without a GPU (or without a CUDA build of torch) the CUDA kernels are never built by setup.py,
so this is what keeps csrc/cuda/*.cu honest on CPU-only machines. The sources compile in
parallel, at the lowest priority, from the end of collection (``tests/csrc/conftest.py``), while
the rest of the suite runs; these tests run last and wait for them. The device code is compiled
unoptimised (``-Xcicc -O0``): what is checked is that it compiles, not how fast it runs. Skipped
where no nvcc is installed.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
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
        # The device code unoptimised (cicc -O0; ptxas still builds sm_90 machine code): what is checked is
        # that nvcc accepts every source and emits code for it. Optimising small_adam.cu's sixteen unrolled
        # sizes took cicc 191 s of one core (6 s unoptimised), the critical path of the whole test run.
        "-Xcicc",
        "-O0",
        "-Xcompiler",
        "-fPIC",
        *cpp_extension.COMMON_NVCC_FLAGS,
        *defines,
        *includes,
    ]


#: ``source name -> (nvcc process, object file)``, once started.
_started: dict[str, tuple[subprocess.Popen, Path]] = {}


def start_compilations() -> dict[str, tuple[subprocess.Popen, Path]]:
    """Start every nvcc at once, niced so that the tests running meanwhile keep the processors; idempotent."""
    if not _started and NVCC is not None:
        out = Path(tempfile.mkdtemp(prefix="gdla_cuda_objects_"))
        for source in SOURCES:
            target = out / f"{source.stem}.o"
            with open(out / f"{source.stem}.log", "w") as log:  # a file: a pipe nobody reads yet could fill up
                process = subprocess.Popen(
                    nvcc_command(source, target),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_lowest_priority,
                    start_new_session=True,  # its own process group: _stop ends nvcc's compilers too
                )
            _started[source.name] = (process, target)
        atexit.register(_stop, out)  # a run that ends before the checks (-x, Ctrl-C) leaves no nvcc behind
    return _started


def _stop(out: Path) -> None:
    for process, _ in _started.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    shutil.rmtree(out, ignore_errors=True)


def _lowest_priority() -> None:
    if hasattr(os, "nice"):
        os.nice(19)


@pytest.fixture(scope="module")
def compilations() -> dict[str, tuple[subprocess.Popen, Path]]:
    """The started nvcc processes (started here if collection did not); each test waits for its own."""
    return start_compilations()


def test_there_are_cuda_sources_for_every_kernel_family() -> None:
    names = {source.name for source in SOURCES}
    assert {"register_cuda.cu", "elementwise.cu", "small_inverse.cu"} <= names


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.name)
def test_cuda_source_compiles(source: Path, compilations) -> None:
    process, target = compilations[source.name]
    process.wait(timeout=600)
    output = target.with_suffix(".log").read_text()
    assert process.returncode == 0, f"nvcc failed on {source.name}:\n{output}"
    assert target.stat().st_size > 0
