"""SHA-256 of every file under a directory, to show that a run left files untouched."""

import hashlib
import os


def digest(directory) -> dict[str, str]:
  """Relative path -> SHA-256 hex digest of every file under `directory`."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        path = os.path.relpath(os.path.join(root, name), directory)
        files[path] = hashlib.sha256(f.read()).hexdigest()
  return files
