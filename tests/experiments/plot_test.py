"""Tests for experiments/plot.py: NumPy line drawing for forecast images."""

import numpy as np

from tbptt.experiments import plot

RED = np.array(plot.FORECAST_COLOR)


def colored(image, color):
  return np.all(image == np.asarray(color, np.uint8), axis=-1)


def test_polyline_has_no_gaps():
  image = np.zeros((50, 80, 3), np.uint8)
  plot.draw_polyline(image, np.array([2.0, 70.0, 75.0]), np.array([45.0, 5.0, 40.0]), (255, 0, 0))
  mask = colored(image, (255, 0, 0))
  assert mask[45, 2] and mask[5, 70] and mask[40, 75]
  assert np.all(mask[:, 2:76].any(axis=0)), "a column along the line has no pixel"
  assert np.all(mask[5:46].any(axis=1)), "a row along the line has no pixel"
  assert not mask[:, :2].any() and not mask[:, 76:].any()


def test_polyline_clips_points_outside_the_image():
  image = np.zeros((10, 10, 3), np.uint8)
  plot.draw_polyline(image, np.array([-5.0, 15.0]), np.array([5.0, 5.0]), (9, 9, 9))
  assert colored(image, (9, 9, 9))[5].all()


def test_forecast_image_layout():
  context = np.zeros(30)
  truth = np.ones(10)
  forecast = -np.ones(10)
  image = plot.forecast_image(context, truth, forecast, height=60, width=120, margin=4)
  assert image.shape == (60, 120, 3) and image.dtype == np.uint8

  def rows(color):
    return np.nonzero(colored(image, color).any(axis=1))[0]

  def cols(color):
    return np.nonzero(colored(image, color).any(axis=0))[0]

  # Larger values are drawn higher: truth (1) on top, forecast (-1) at the bottom, context between.
  assert rows(plot.TRUTH_COLOR).min() == 4 and rows(plot.FORECAST_COLOR).max() == 55
  assert rows(plot.CONTEXT_COLOR).min() > 4 and rows(plot.CONTEXT_COLOR).max() < 55
  # The context comes first in time, the horizon after the divider.
  divider = cols(plot.DIVIDER_COLOR)
  assert len(divider) == 1
  assert cols(plot.CONTEXT_COLOR).max() < divider[0] + 1
  assert cols(plot.FORECAST_COLOR).max() == 115 and cols(plot.CONTEXT_COLOR).min() == 4


def test_forecast_image_survives_a_diverged_forecast():
  forecast = np.array([1.0, np.nan, np.inf, 2.0])
  image = plot.forecast_image(np.arange(5.0), np.arange(4.0), forecast)
  assert colored(image, plot.CONTEXT_COLOR).any()
  assert colored(image, plot.TRUTH_COLOR).any()
