"""`python -m tbptt.layers.kernels`: builds the fused LSTM kernel now (or finds it in the cache).

`make install` runs this, so the first training run does not wait for the compiler. Exits 0 either
way: without a compiler the layers still work (they run their graph loop).
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tbptt.layers import kernels  # noqa: E402
from tbptt.layers.kernels import build  # noqa: E402

start = time.perf_counter()
if kernels.available():
  print(f"tbptt: fused LSTM kernel ready ({kernels.gemm_library()}; cache {build.cache_root()}; "
        f"{time.perf_counter() - start:.0f} s)")
else:
  print(f"tbptt: fused LSTM kernel not built, the layers run their graph loop: {kernels.error()}")
