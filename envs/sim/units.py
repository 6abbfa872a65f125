"""Byte-size units, defined once for the model, its workloads and the op-script format."""

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
