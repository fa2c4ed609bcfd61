r"""The tbptt launcher: flags name places and modes; every hyperparameter is a gin binding.

  python -m tbptt --model_dir=runs/charlm --gin_file=charlm.gin \
      --gin_bindings='Trainer.train_steps=2000' [--mode=train|eval|train_and_eval|sample|export]

Rerunning a command on a model_dir with checkpoints resumes. Exit codes: 0 done, 2 usage or
configuration error (one line on stderr), 1 training failure, 130/143 stopped by SIGINT/SIGTERM
after a checkpoint.
"""

import logging
import os
import sys

from tbptt.experiments.quiet import quiet_tensorflow_import

quiet_tensorflow_import()  # Before anything that imports TensorFlow.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tbptt.experiments import experiment, gin_files, hints  # noqa: E402
from tbptt.trainer.errors import ConfigError, TrainingError  # noqa: E402

flags.DEFINE_string("model_dir", None,
                    "Directory for checkpoints, summaries and the operative config.")
flags.DEFINE_multi_string("gin_file", [], "Gin config files: a path, or a packaged config such as "
                          "charlm.gin. Later files override earlier ones.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings applied after the files, e.g. "
                          "\"Trainer.train_steps=100\".")
flags.DEFINE_enum("mode", "train", experiment.MODES, "What to do.")
FLAGS = flags.FLAGS


def fail(code: int, message: str) -> int:
  # The one line below is all the user should read: TensorFlow's warnings at exit (e.g. about a
  # checkpoint that was only partly read before the error) would bury it.
  logging.getLogger("tensorflow").setLevel(logging.ERROR)
  print(f"tbptt: error: {str(message).splitlines()[0] if message else 'unknown error'}",
        file=sys.stderr, flush=True)
  return code


def main(argv) -> int:
  if len(argv) > 1:
    return fail(2, f"unexpected arguments {argv[1:]}; hyperparameters go in --gin_bindings")
  try:
    gin_files.parse(FLAGS.gin_file, FLAGS.gin_bindings)
    experiment.run_experiment(os.path.abspath(FLAGS.model_dir), FLAGS.mode)
  except ConfigError as e:
    return fail(2, hints.with_hint(e))
  except TrainingError as e:
    return fail(1, e)
  return 0


def parse_flags(argv, require_model_dir: bool = True):
  """Absl's parser, but a bad or missing flag is one line on stderr and exit code 2."""
  try:
    argv = FLAGS(argv)
  except flags.Error as e:
    sys.exit(fail(2, f"{e}; see --helpfull"))
  if require_model_dir and FLAGS.model_dir is None:
    sys.exit(fail(2, "--model_dir is required, e.g. --model_dir=runs/charlm"))
  return argv


def run(argv=None):
  """Console-script entry point (`tbptt`)."""
  app.run(main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
