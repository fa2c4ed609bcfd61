"""Line plots drawn with NumPy into RGB arrays, for TensorBoard images (no plotting library)."""

import numpy as np

BACKGROUND = (255, 255, 255)
CONTEXT_COLOR = (70, 70, 70)
TRUTH_COLOR = (0, 150, 0)
FORECAST_COLOR = (220, 30, 30)
DIVIDER_COLOR = (190, 190, 190)


def draw_polyline(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, color) -> None:
  """Draws straight segments through the points (xs[i], ys[i]) into `image` [H, W, 3], in place.

  Points may be fractional; each segment is sampled at least once per pixel it spans, so the line
  has no gaps. Pixels outside the image are skipped.
  """
  height, width = image.shape[:2]
  for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
    if not np.all(np.isfinite((x0, y0, x1, y1))):
      continue  # A diverged forecast leaves a gap instead of garbage.
    n = int(np.ceil(max(abs(x1 - x0), abs(y1 - y0)))) + 1
    px = np.rint(np.linspace(x0, x1, n)).astype(int)
    py = np.rint(np.linspace(y0, y1, n)).astype(int)
    inside = (px >= 0) & (px < width) & (py >= 0) & (py < height)
    image[py[inside], px[inside]] = color
  if len(xs) == 1 and np.isfinite(xs[0]) and np.isfinite(ys[0]):
    x, y = int(round(xs[0])), int(round(ys[0]))
    if 0 <= x < width and 0 <= y < height:
      image[y, x] = color


def forecast_image(context: np.ndarray, truth: np.ndarray, forecast: np.ndarray, *,
                   height: int = 96, width: int = 192, margin: int = 4) -> np.ndarray:
  """Context (grey), true horizon (green) and forecast (red) of one series, side by side in time.

  A vertical grey line marks where the forecast starts; truth and forecast are joined to the last
  context point, so the curves read as one series.

  Args:
    context: [C] observed values.
    truth: [H] true future values.
    forecast: [H] predicted values.
    height, width: Image size in pixels.
    margin: Blank pixels around the plot.

  Returns:
    uint8 [height, width, 3].
  """
  context, truth, forecast = (np.asarray(a, np.float64).reshape(-1)
                              for a in (context, truth, forecast))
  c, h = len(context), len(truth)
  image = np.empty((height, width, 3), np.uint8)
  image[:] = BACKGROUND
  everything = np.concatenate([context, truth, forecast])
  finite = everything[np.isfinite(everything)]
  lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
  if hi - lo < 1e-12:
    lo, hi = lo - 1.0, hi + 1.0

  def to_x(t):
    return margin + t * (width - 1 - 2 * margin) / max(c + h - 1, 1)

  def to_y(v):
    # Row 0 is the top of the image: larger values are drawn higher.
    return margin + (hi - v) * (height - 1 - 2 * margin) / (hi - lo)

  divider = int(round(to_x(c - 0.5)))
  image[margin:height - margin:2, divider] = DIVIDER_COLOR
  t_context = np.arange(c)
  t_future = np.arange(c - 1, c + h)  # Starts at the last context point.
  draw_polyline(image, to_x(t_context), to_y(context), CONTEXT_COLOR)
  draw_polyline(image, to_x(t_future), to_y(np.concatenate([context[-1:], truth])), TRUTH_COLOR)
  draw_polyline(image, to_x(t_future), to_y(np.concatenate([context[-1:], forecast])),
                FORECAST_COLOR)
  return image
