"""Policies: heuristics, learners, evaluation, distillation and export."""
