r"""The tbptt launcher: flags name places and modes; every hyperparameter is a gin binding.

  python -m tbptt --model_dir=runs/charlm --gin_file=charlm.gin \
      --gin_bindings='Trainer.train_steps=2000' [--mode=train|eval|train_and_eval|sample|export]

Rerunning a command on a model_dir with checkpoints resumes. Exit codes: 0 done, 2 usage or
configuration error (one line on stderr), 1 training failure, 130/143 stopped by SIGINT/SIGTERM
after a checkpoint.
"""

import difflib
import logging
import os
import sys

from tbptt.experiments.quiet import quiet_tensorflow_import

quiet_tensorflow_import()  # Before anything that imports TensorFlow.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from tbptt.experiments import console, experiment, gin_files, hints  # noqa: E402
from tbptt.trainer.errors import ConfigError, TrainingError  # noqa: E402

flags.DEFINE_string("model_dir", None,
                    "Directory for checkpoints, summaries and the operative config; rerunning a "
                    "command on it resumes from the newest checkpoint.")
flags.DEFINE_multi_string("gin_file", [], "Gin config files: a path, or a packaged config such as "
                          "charlm.gin. Repeatable; later files override earlier ones.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings applied after the files, e.g. "
                          "\"Trainer.train_steps=100\". Repeatable.")
flags.DEFINE_enum("mode", "train", experiment.MODES, "What to do (see Modes).")
FLAGS = flags.FLAGS
OWN_FLAGS = ("model_dir", "gin_file", "gin_bindings", "mode")
HELP_FLAGS = ("--help", "-help", "-h", "--h", "--helpshort", "-helpshort", "-?")
MODE_HELP = {
    "train": "train to Trainer.train_steps, evaluating on the valid split on the way (default)",
    "eval": "evaluate the newest checkpoint on the valid and test splits",
    "train_and_eval": "train, then evaluate the final model on the valid and test splits",
    "sample": "print text sampled from the newest checkpoint (sample_text.* bindings)",
    "export": "write a streaming SavedModel of the newest checkpoint to MODEL_DIR/export",
}


def help_text() -> str:
  """`tbptt --help`: what the program does, its modes, its own flags and two example commands."""
  own = "\n".join(f"  --{name:<14} {FLAGS[name].help}" for name in OWN_FLAGS)
  modes = "\n".join(f"  {mode:<16} {MODE_HELP[mode]}" for mode in experiment.MODES)
  configs = ", ".join(gin_files.packaged_configs())
  return f"""\
tbptt: trains recurrent models (custom LSTM layers) with truncated backpropagation through time.

Usage: tbptt --model_dir=DIR [--gin_file=FILE]... [--gin_bindings=BINDING]... [--mode=MODE]
       (also: python -m tbptt ...)

Flags say where things go, which configs to read and what to do; every hyperparameter is a gin
binding (a run's DIR/operative_config.gin lists every one it used).

Modes:
{modes}

Flags:
{own}
  --verbosity=N    0 (default): our own lines only; 1: also TensorFlow's INFO logging, with absl's
                   prefixes (TensorFlow's native log: set TF_CPP_MIN_LOG_LEVEL=0)
  --helpfull       every flag, absl's and TensorFlow's included

Packaged configs: {configs}

Examples:
  tbptt --model_dir=runs/charlm --gin_file=charlm.gin
  tbptt --model_dir=runs/charlm --gin_file=charlm.gin --gin_bindings='Trainer.train_steps=5000'
  tbptt --model_dir=runs/charlm --gin_file=charlm.gin --mode=sample

Exit codes: 0 done; 2 usage or configuration error (one line on stderr); 1 training failure;
130 / 143 stopped by SIGINT / SIGTERM after writing a checkpoint.
"""


def fail(code: int, message: str) -> int:
  # The one line below is all the user should read: TensorFlow's warnings at exit (e.g. about a
  # checkpoint that was only partly read before the error) would bury it.
  logging.getLogger("tensorflow").setLevel(logging.ERROR)
  print(f"tbptt: error: {str(message).splitlines()[0] if message else 'unknown error'}",
        file=sys.stderr, flush=True)
  return code


def main(argv) -> int:
  console.configure(FLAGS.verbosity)
  if len(argv) > 1:
    return fail(2, unexpected_arguments_message(argv[1:]))
  try:
    gin_files.parse(FLAGS.gin_file, FLAGS.gin_bindings)
    result = experiment.run_experiment(os.path.abspath(FLAGS.model_dir), FLAGS.mode)
  except ConfigError as e:
    return fail(2, hints.with_hint(e))
  except TrainingError as e:
    return fail(1, e)
  print_result(FLAGS.mode, result)
  return 0


def print_result(mode: str, result: dict) -> None:
  """What a mode produced, for the console (training and evaluation have shown their own lines)."""
  if mode == "sample":
    print(result["sample"], flush=True)
  elif mode == "export":
    print(f"Exported step {result['step']} to {result['export']}", flush=True)


def unexpected_arguments_message(arguments) -> str:
  """Positional arguments: a mode named without --mode, or a hyperparameter outside gin."""
  if arguments[0] in experiment.MODES:
    return f"unexpected argument {arguments[0]!r}; did you mean --mode={arguments[0]}? See --help"
  return (f"unexpected arguments {arguments}; hyperparameters go in --gin_bindings "
          "(see --help)")


def unknown_flag_message(name: str) -> str:
  """`unknown flag --gin_binding; did you mean --gin_bindings? See --help`."""
  close = difflib.get_close_matches(name, OWN_FLAGS, n=1, cutoff=0.6)
  if not close:
    close = difflib.get_close_matches(name, list(FLAGS), n=1, cutoff=0.8)
  if name in experiment.MODES:
    close = [f"mode={name}"]
  return f"unknown flag --{name}; " + (f"did you mean --{close[0]}? See --help" if close
                                       else "see --help")


def parse_flags(argv, require_model_dir: bool = True, usage=None):
  """Absl's parser, but a bad or missing flag is one line on stderr and exit code 2, and --help
  prints `usage()` (default: `help_text()`) and exits 0."""
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    print((usage or help_text)(), end="")
    sys.exit(0)
  try:
    argv = FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    sys.exit(fail(2, unknown_flag_message(e.flagname)))
  except flags.Error as e:
    sys.exit(fail(2, f"{e}; see --help"))
  if require_model_dir and FLAGS.model_dir is None:
    sys.exit(fail(2, "--model_dir is required, e.g. --model_dir=runs/charlm"))
  return argv


def run(argv=None):
  """Console-script entry point (`tbptt`)."""
  app.run(main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
