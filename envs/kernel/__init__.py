"""The live-kernel side: the oracle program that replays op scripts on Linux."""
