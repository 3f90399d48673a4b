"""The backends every fused-streaming test runs on. The compiled one is skipped only when this
machine has no C++ compiler at all; with a compiler, a step that fails to build fails the test."""

import shutil

import pytest

COMPILER = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
NO_COMPILER = "no C++ compiler (c++, g++ or clang++) on PATH: the compiled step cannot be built here"


@pytest.fixture(scope="session")
def compiler() -> str | None:
    """The C++ compiler on PATH, or None."""
    return COMPILER


@pytest.fixture(scope="session", params=["cpp", "torch"])
def backend(request) -> str:
    """Each FusedStreamer backend in turn."""
    if request.param == "cpp" and COMPILER is None:
        pytest.skip(NO_COMPILER)
    return request.param
