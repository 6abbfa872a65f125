"""Simulator and Gymnasium adapter."""
