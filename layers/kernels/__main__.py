"""`python -m tbptt.layers.kernels`: builds the fused LSTM kernel now (or finds it in the cache).

`make install` runs this, so the first training run does not wait for the compiler. Exits 0 either
way: without a compiler the layers still work (they run their graph loop).
"""

import os
import resource

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tbptt.layers import kernels  # noqa: E402  (importing the package builds the kernel)
from tbptt.layers.kernels import build  # noqa: E402

# The build ran while the package was imported, before this module: its compilers' CPU time says
# whether it compiled.
compiler_seconds = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
if kernels.available():
  how = (f"compiled, {compiler_seconds:.0f} s of compiler CPU time" if compiler_seconds >= 1
         else "from the cache")
  print(f"tbptt: fused LSTM kernel ready ({kernels.gemm_library()}; cache {build.cache_root()}; "
        f"{how})")
else:
  print(f"tbptt: fused LSTM kernel not built, the layers run their graph loop: {kernels.error()}")
