"""Built-in YAML configs: scenarios, suites, algorithms and experiments."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
