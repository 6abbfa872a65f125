"""The batched env's helper threads under ThreadSanitizer (``env_threads``, issue 13).

Identical results on 1, 2 and 3 threads (``tests/test_fast_env.py``) cannot show that no two
threads touch the same memory unordered: a race may give the same bits nearly always. So the
compiled core is built a second time, every C++ file instrumented (``-fsanitize=thread`` in
``CFLAGS`` and ``CXXFLAGS``, as the build's C++ compiler takes its flags from both; at the
build's own ``-O3``), and the helper threads step both suites under the sanitizer's runtime
(``LD_PRELOAD``: the interpreter itself is not instrumented). The sanitizer must report
nothing. That it would report a race is shown on the same build: two batches that step the
same envs at once, which ``step_batch`` cannot see (two ``StepThreads``, two Python
threads), race in ``EnvCore::step``, and the report names it.

The build needs g++ and its ThreadSanitizer runtime (``libtsan``, which Debian's gcc depends
on). Without them these tests skip, unless ``$PTRECLAIM_REQUIRE_TSAN`` is set (as in CI),
where they fail instead.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# setup.py's own -O3 comes after CFLAGS and wins: the core is instrumented as it is built.
FLAGS = "-fsanitize=thread -g"

# Imports the instrumented core under the installed core's name, before anything imports
# that, then checks it is the one in use and that the sanitizer's runtime is loaded.
PRELUDE = """
import importlib.util, sys
import ptreclaim.envs.sim.fast as package
spec = importlib.util.spec_from_file_location("ptreclaim.envs.sim.fast._fast", sys.argv[1])
core = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = core
spec.loader.exec_module(core)
package._fast = core
from ptreclaim.envs.sim.fast import _fast
assert _fast.__file__ == sys.argv[1], _fast.__file__
assert "libtsan" in open("/proc/self/maps").read(), "the sanitizer's runtime is not loaded"
import numpy as np
from ptreclaim.agents.training.fastvec import FastVecEnv
from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs.configio import load_suite
from ptreclaim.envs.pagetable_env import EnvConfig, PageTableReclaimEnv
"""

# Both suites, 4 envs, 150 steps of episodes of 30 (resets on the way): on 2 threads whose
# helpers poll between batches, and on 3 whose helpers sleep after every batch (more
# threads than this machine's cores: the wake-up path).
CLEAN = PRELUDE + """
for suite in ("train", "test"):
    scenarios = load_suite(CONFIG_DIR / "suites" / f"{suite}.yaml")
    for threads, spin_us in ((2, 2000), (3, 0)):
        venv = FastVecEnv([PageTableReclaimEnv(scenarios, EnvConfig(max_steps=30))
                           for _ in range(4)])
        venv._threads = _fast.StepThreads(threads, spin_us)
        venv.seed(3)
        venv.reset()
        rng = np.random.default_rng(1)
        for _ in range(150):
            venv.step_async(rng.integers(0, venv.action_space.nvec, size=(4, 5)))
            venv.step_wait()
        print(suite, threads, spin_us, venv._threads.helper_steps, flush=True)
        venv.close()
"""

# The control: two Python threads step the same two envs at once, each with StepThreads of
# its own, so that the GIL is released in both and nothing orders their writes.
RACE = PRELUDE + """
import threading
venv = FastVecEnv([PageTableReclaimEnv(load_suite(CONFIG_DIR / "suites" / "train.yaml"),
                                       EnvConfig(max_steps=10**6)) for _ in range(2)])
venv.seed(3)
venv.reset()
cores = [env._core for env in venv.envs]
width = venv.observation_space.shape[0]

def batches():
    threads = _fast.StepThreads(2, 0)
    obs = np.zeros((2, width), np.float32)
    actions = np.zeros((2, 5), np.int64)
    rewards, returns = np.zeros(2), np.zeros(2)
    ends, lengths = np.zeros(2, np.uint8), np.zeros(2, np.int64)
    for _ in range(200):
        _fast.step_batch(cores, actions, obs, rewards, ends, returns, lengths, threads)

both = [threading.Thread(target=batches) for _ in range(2)]
for t in both:
    t.start()
for t in both:
    t.join()
print("no race reported")
"""


def _missing(what: str) -> Any:
    if os.environ.get("PTRECLAIM_REQUIRE_TSAN"):
        pytest.fail(f"PTRECLAIM_REQUIRE_TSAN is set but {what}")
    pytest.skip(what)


@pytest.fixture(scope="module")
def tsan_core(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The core built with ThreadSanitizer (setup.py's own build, into a temporary
    folder: the installed core is not touched), and the sanitizer's runtime."""
    cxx = shutil.which("g++")
    if cxx is None:
        _missing("g++ is not installed")
    runtime = Path(subprocess.run([cxx, "-print-file-name=libtsan.so"], capture_output=True,
                                  text=True, check=False).stdout.strip())
    if not runtime.is_absolute() or not runtime.exists():
        _missing("g++ has no ThreadSanitizer runtime (Debian: apt-get install libtsan2)")
    out = tmp_path_factory.mktemp("tsan")
    env = {**os.environ, "CFLAGS": FLAGS, "CXXFLAGS": FLAGS, "LDFLAGS": "-fsanitize=thread"}
    built = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib",
                            str(out / "lib"), "--build-temp", str(out / "tmp")],
                           cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (so,) = (out / "lib").rglob("_fast*.so")
    # Instrumented C++, atomics included: a build that had missed CXXFLAGS left the pool's
    # atomics bare, and the sanitizer then reported the hand-offs between threads as races.
    symbols = so.read_bytes()
    for name in (b"__tsan_func_entry", b"__tsan_atomic64_fetch_add"):
        assert name in symbols, f"{so.name} lacks {name.decode()}: not instrumented"
    return so, runtime.resolve()


def _run(script: str, core: tuple[Path, Path], halt: bool) -> subprocess.CompletedProcess[str]:
    so, runtime = core
    options = f"halt_on_error={int(halt)} exitcode=66"
    # Without address-space randomisation: gcc 12's runtime refuses the layout of
    # kernels that randomise more bits ("FATAL: ThreadSanitizer: unexpected memory
    # mapping", vm.mmap_rnd_bits above 28).
    setarch = shutil.which("setarch")
    norandom = [setarch, platform.machine(), "-R"] if setarch else []
    return subprocess.run([*norandom, sys.executable, "-c", script, str(so)], cwd=ROOT,
                          env={**os.environ, "LD_PRELOAD": str(runtime),
                               "TSAN_OPTIONS": options, "OPENBLAS_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600, check=False)


def test_the_helper_threads_run_clean_under_threadsanitizer(tsan_core: tuple[Path, Path]
                                                            ) -> None:
    run = _run(CLEAN, tsan_core, halt=False)
    assert "ThreadSanitizer" not in run.stderr, run.stderr[-6000:]
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line.split() for line in run.stdout.splitlines()]
    assert [line[:3] for line in lines] == [["train", "2", "2000"], ["train", "3", "0"],
                                            ["test", "2", "2000"], ["test", "3", "0"]]
    # The helpers stepped envs in every configuration (else nothing was checked).
    assert all(int(line[3]) > 0 for line in lines), run.stdout


def test_threadsanitizer_reports_two_batches_that_step_the_same_envs(
        tsan_core: tuple[Path, Path]) -> None:
    run = _run(RACE, tsan_core, halt=True)
    assert run.returncode == 66, (run.returncode, run.stdout, run.stderr[-3000:])
    assert "WARNING: ThreadSanitizer: data race" in run.stderr
    assert "ptfast::" in run.stderr  # in the core's own code
