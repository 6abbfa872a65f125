"""Build the compiled simulator core (``ptreclaim.envs.sim.fast._fast``).

Everything else about the package lives in ``pyproject.toml``; this file only declares the
C++ extension, which ``pip install`` (editable or regular) compiles with the system C++
compiler.  It links numpy's own random-distribution library (``npyrandom``, shipped inside
numpy's wheel for exactly this use), so the core draws from a ``numpy.random.Generator``
through the same C functions the Generator's methods call: a seed gives the compiled core
the same random numbers it gives the Python reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

FAST = Path("envs/sim/fast")
NUMPY_RANDOM_LIB = Path(np.__file__).parent / "random" / "lib"
CODEGEN = ["-O3", "-ffp-contract=off", "-fno-fast-math"]

core = Extension(
    "ptreclaim.envs.sim.fast._fast",
    sources=[str(FAST / "_fast.pyx"),
             *sorted(str(p) for p in FAST.glob("*.cpp") if p.name != "_fast.cpp")],
    include_dirs=[np.get_include(), str(FAST)],
    # The headers too: without them `setup.py build_ext --inplace` left a stale core after
    # a change to a header alone (setuptools compares only the sources' times with the
    # built module's).
    depends=sorted(str(p) for p in FAST.glob("*.hpp")),
    library_dirs=[str(NUMPY_RANDOM_LIB)],
    libraries=["npyrandom"],
    language="c++",
    # -ffp-contract=off: no fused multiply-add, so every double is computed in the same
    # order and rounding as in the Python reference (the differential tests compare bits).
    # -pthread: step_batch's helper threads (pool.hpp).
    # -fvisibility=hidden, -fno-semantic-interposition, -flto=auto: the core is one unit.
    # A -fPIC build otherwise treats every exported function as replaceable at load time
    # and does not inline one that is not declared inline, and calls between the .cpp
    # files (the tick into the page-table model) cross a PLT; as one unit, it runs 7 % fewer
    # instructions per env step (docs/performance.md).  The link repeats the code
    # generation flags, since link-time optimisation generates the code there.
    extra_compile_args=[*CODEGEN, "-std=c++17", "-pthread", "-fvisibility=hidden",
                        "-fno-semantic-interposition", "-flto=auto"],
    extra_link_args=[*CODEGEN, "-pthread", "-flto=auto"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(ext_modules=cythonize([core], language_level=3, quiet=True))
