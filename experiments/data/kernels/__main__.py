"""`python -m tbptt.experiments.data.kernels`: builds the token-window op now (or finds it in the
cache).

`make install` runs this, so the first run on a text file does not wait for the compiler. Exits 0
either way: without a compiler the layouts read memory-mapped ids through `tf.numpy_function`.
"""

import os
import resource

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tbptt.experiments.data import kernels  # noqa: E402
from tbptt.layers.kernels import build  # noqa: E402

if kernels.available():
  compiler_seconds = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
  how = (f"compiled, {compiler_seconds:.0f} s of compiler CPU time" if compiler_seconds >= 1
         else "from the cache")
  print(f"tbptt: token-window op ready (cache {build.cache_root()}; {how})")
else:
  print("tbptt: token-window op not built, memory-mapped corpora are read through "
        f"tf.numpy_function: {kernels.error()}")
