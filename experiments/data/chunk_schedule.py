"""Where each training step's chunk starts and how long it is, for chunks of varying length.

Variable-length BPTT (Merity et al. 2017, §4.1): step k's length is drawn from N(bptt, std) with
probability p and from N(bptt / 2, std) otherwise, rounded and clipped to [min_length, max_length].
Chunks follow each other along the B streams (the data position of step k is the sum of the
earlier lengths), and a pass ends with the last chunk whose padded window still fits in the streams
(at most max_length + 1 tokens per row are left out of a pass). The next pass starts at position 0
with a fresh state.

The lengths come from a counter-based generator (Philox) keyed by the seed and are laid out once,
for `horizon` steps rounded down to whole passes; later steps repeat that period. So the start and
length of step k are a pure function of (seed, k): a resumed run finds its place from the step.
"""

import numpy as np

from tbptt.trainer.errors import ConfigError

HORIZON = 1 << 20  # Steps laid out before the schedule repeats (whole passes).
MAX_PASSES = 4096  # ...or this many passes, for a short stream.


def draw_lengths(count: int, bptt: int, *, std: float, full_probability: float, min_length: int,
                 max_length: int, seed: int) -> np.ndarray:
  """int32 [count]: the first `count` chunk lengths of the schedule (see the module docstring)."""
  # Three uniforms per step, in step order, so step k's length does not depend on `count`: one picks
  # the mode, two make a normal (Box-Muller).
  u = np.random.Generator(np.random.Philox(key=seed)).random((count, 3))
  mean = np.where(u[:, 0] < full_probability, float(bptt), bptt / 2.0)
  normal = np.sqrt(-2.0 * np.log1p(-u[:, 1])) * np.cos(2.0 * np.pi * u[:, 2])
  lengths = np.rint(mean + std * normal)
  return np.clip(lengths, min_length, max_length).astype(np.int32)


class ChunkSchedule:
  """Start (per row) and length of every training step's chunk, laid out for one period.

  Args:
    stream_length: L, tokens per row.
    bptt: The mean chunk length the learning rate is relative to (`TextCorpus.seq_len`).
    std: Standard deviation s of the length (tokens).
    full_probability: p, the probability of a chunk around bptt rather than bptt / 2.
    min_length, max_length: Clip range; max_length is also the padded width of every chunk.
    seed: Seeds the lengths.
    horizon: Steps to lay out before repeating (rounded down to whole passes).

  Raises:
    ConfigError: bad settings, or a stream shorter than one padded chunk.
  """

  def __init__(self, stream_length: int, bptt: int, *, std: float = 5.0,
               full_probability: float = 0.95, min_length: int = 5,
               max_length: int | None = None, seed: int = 0, horizon: int = HORIZON):
    if max_length is None:
      max_length = int(np.ceil(bptt + 3 * std))
    if not std >= 0:
      raise ConfigError(f"TextCorpus.seq_len_std must be >= 0, got {std!r}")
    if not 0 <= full_probability <= 1:
      raise ConfigError(f"TextCorpus.full_seq_len_probability must be in [0, 1], got "
                        f"{full_probability!r}")
    if not 1 <= min_length <= max_length:
      raise ConfigError(f"TextCorpus.min_seq_len ({min_length}) and max_seq_len ({max_length}) "
                        "must satisfy 1 <= min_seq_len <= max_seq_len")
    self.bptt = bptt
    self.max_length = int(max_length)
    last_start = stream_length - self.max_length - 1  # The padded window must fit in the row.
    if last_start < 0:
      raise ConfigError(f"the training text has {stream_length} tokens per row, fewer than one "
                        f"padded chunk needs (max_seq_len {self.max_length} + 1); use a longer "
                        "text or a smaller batch_size/max_seq_len")
    lengths = draw_lengths(horizon, bptt, std=std, full_probability=full_probability,
                           min_length=min_length, max_length=self.max_length, seed=seed)
    ends = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])  # ends[i]: sum of lengths[:i]
    first, passes, starts = 0, 0, []
    while first < horizon and passes < MAX_PASSES:
      # Steps first..last of this pass: those starting at or before last_start.
      last = int(np.searchsorted(ends, ends[first] + last_start, side="right")) - 1
      if last >= horizon:  # The pass would run past the lengths drawn: end the period before it.
        break
      starts.append(ends[first:last + 1] - ends[first])
      first, passes = last + 1, passes + 1
    if not starts:
      raise ConfigError(f"ChunkSchedule.horizon {horizon} is shorter than one pass")
    self.starts = np.concatenate(starts)  # int64 [P], position of each step's first target row
    self.lengths = lengths[:len(self.starts)]  # int32 [P]
    self.passes = passes

  @property
  def period(self) -> int:
    """P: steps laid out; step k reads entry k mod P."""
    return len(self.starts)

  @property
  def steps_per_pass(self) -> int:
    """Mean steps per pass over the text, rounded (for schedules that count epochs)."""
    return max(1, round(self.period / self.passes))
