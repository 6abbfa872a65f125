"""ptreclaim: RL-tuned page-table reclaim policies."""

__version__ = "0.1.0"
