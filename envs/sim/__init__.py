"""The pure simulator: numpy and the standard library only (no gymnasium)."""
