"""`python -m tbptt` with the test hooks registered with gin (e.g. `@InjectNonFinite`).

  python tests/trainer/launch_with_hooks.py --model_dir=... --gin_bindings=...
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tbptt.experiments import main  # noqa: E402  (quiets TensorFlow's import first)

import nonfinite_injection  # noqa: E402,F401  (registers InjectNonFinite)

if __name__ == "__main__":
  main.run()
