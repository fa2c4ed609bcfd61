"""Sequence-to-sequence forecasting: an LSTM encoder reads a context window, an LSTM decoder emits
the horizon.

Every window is an independent sequence, so every batch row has `reset=True`: the trainer zeroes the
carried state before each chunk and the model's state is just the encoder's (zero) initial state.

Metrics are computed in the original units of the data: MAE, RMSE and MASE, the MAE divided by the
MAE of the seasonal-naive forecast (repeat the last observed season of the context) on the same
windows.

  model.py    Seq2SeqForecaster (gin: @Seq2SeqForecaster)
  task.py     ForecastTask (gin: @ForecastTask): splits, windows, batches, eval summaries
  metrics.py  the seasonal-naive baseline, forecast sums and metrics
"""

from tbptt.experiments.forecasting.metrics import forecast_metrics, forecast_sums, seasonal_naive
from tbptt.experiments.forecasting.model import Seq2SeqForecaster
from tbptt.experiments.forecasting.task import ForecastTask

__all__ = ["ForecastTask", "Seq2SeqForecaster", "forecast_metrics", "forecast_sums",
           "seasonal_naive"]
