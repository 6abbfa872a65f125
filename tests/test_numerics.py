"""Torch's CPU kernels are held to one instruction set (``ptreclaim.PINNED_NUMERICS``), so
that a seed trains the same model on CPUs with and without AVX-512.

Each check runs in a fresh interpreter: ATen and MKL fix their code path at their first
use, once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptreclaim import _X86_64, PINNED_NUMERICS

pytestmark = pytest.mark.skipif(not _X86_64,
                                reason="the pinned variables are x86's; elsewhere none is set")

#: Trains a small PPO (CartPole, two updates, one torch thread) and prints the SHA-256 of
#: its parameters, the CPU capability ATen used and the pinned variables.  torch is
#: imported *before* ptreclaim, as a user's script may do: the pin still holds because
#: nothing was computed yet.
TRAIN = """
import hashlib, json, os, sys
import torch
import ptreclaim
import gymnasium as gym
from stable_baselines3 import PPO
torch.set_num_threads(1)
model = PPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=256, batch_size=64, n_epochs=2,
            seed=3, device="cpu")
model.learn(512)
h = hashlib.sha256()
for t in model.policy.state_dict().values():
    h.update(t.numpy().tobytes())
print(json.dumps({"sha": h.hexdigest(),
                  "capability": torch.backends.cpu.get_cpu_capability(),
                  "env": {k: os.environ.get(k) for k in ptreclaim.PINNED_NUMERICS}}))
"""


def _run(code: str, **env: str) -> dict[str, object]:
    base = {k: v for k, v in os.environ.items()
            if k not in PINNED_NUMERICS and k != "PTRECLAIM_NATIVE_NUMERICS"}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def _native_capability() -> str:
    code = ("import json, torch; "
            "print(json.dumps({'c': torch.backends.cpu.get_cpu_capability()}))")
    return str(_run(code)["c"])


def test_import_sets_the_pin_and_respects_the_environment() -> None:
    show = ("import json, os, ptreclaim; "
            "print(json.dumps({k: os.environ.get(k) for k in ptreclaim.PINNED_NUMERICS}))")
    assert _run(show) == PINNED_NUMERICS
    # A value the user set wins; the opt-out sets nothing.
    assert _run(show, ATEN_CPU_CAPABILITY="default")["ATEN_CPU_CAPABILITY"] == "default"
    assert _run(show, PTRECLAIM_NATIVE_NUMERICS="1") == {k: None for k in PINNED_NUMERICS}


def test_pinned_training_matches_a_process_started_on_avx2() -> None:
    """The pin set at import trains bit for bit what a process gets whose ATen and MKL
    start on AVX2 (what an AVX2 machine uses natively); on a CPU with AVX-512 the unpinned
    process trains a different model, so the pin is what makes them equal."""
    pinned = _run(TRAIN)
    started = _run(TRAIN, **PINNED_NUMERICS)
    assert pinned["capability"] != "AVX512"
    assert pinned["env"] == PINNED_NUMERICS
    assert pinned["sha"] == started["sha"]
    native = _native_capability()
    if native != "AVX512":
        pytest.skip(f"this CPU's native capability is {native}: nothing to pin away")
    unpinned = _run(TRAIN, PTRECLAIM_NATIVE_NUMERICS="1")
    assert unpinned["capability"] == "AVX512"
    assert unpinned["sha"] != pinned["sha"]


def test_versions_name_the_cpu(tmp_path: Path) -> None:
    """A run's ``versions.json`` names the CPU's vendor and model: beyond the pin, MKL picks
    its code by vendor, so an AMD CPU trains other models than an Intel one."""
    import platform

    from ptreclaim.agents.runs import cpu, versions

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n"
                    "\nprocessor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n")
    assert cpu(info) == "AuthenticAMD / AMD EPYC 9R14"
    assert cpu(tmp_path / "missing") == (platform.processor() or None)
    assert versions()["numerics"]["cpu"] == cpu()
