"""The compiled simulator core: the same model, workloads and machine as ``envs/sim``,
ported to C++ for speed and proven identical by differential tests."""
