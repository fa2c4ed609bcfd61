"""Tests of the launcher (experiments/main.py): exit codes, one-line errors, model_dir untouched."""

import os
import re
import subprocess
import sys

import pytest
from absl import flags

from tbptt.experiments import main as main_lib

TEXT = "for i in range(10):\n  print(i * i)\n" * 60
TINY = ["TextCorpus.batch_size = 4", "TextCorpus.seq_len = 10", "TextCorpus.eval_batch_size = 4",
        "LanguageModel.units = 8", "LanguageModel.embedding_dim = 8", "Trainer.train_steps = 3",
        "Trainer.steps_per_loop = 3", "Trainer.histogram_interval = None", "Trainer.eval_steps = 2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  paths = {}
  for name, text in (("train", TEXT), ("valid", TEXT[:600]), ("empty", ""), ("short", "x\n"),
                     ("other", "a completely different text\n" * 50)):
    paths[name] = str(root / f"{name}.txt")
    with open(paths[name], "w") as f:
      f.write(text)
  paths["bad_gin"] = str(root / "bad.gin")
  with open(paths["bad_gin"], "w") as f:
    f.write("include 'charlm.gin'\nTextCorpus.level 'char'\n")
  return paths


def launch(argv):
  """Runs the launcher in-process; returns its exit code."""
  flags.FLAGS.unparse_flags()
  with pytest.raises(SystemExit) as exit_info:
    main_lib.run(["tbptt"] + argv)
  return exit_info.value.code


def corpus_flags(files, train="train", valid="valid"):
  return [f"--gin_bindings=TextCorpus.train_path='{files[train]}'",
          f"--gin_bindings=TextCorpus.valid_path='{files[valid]}'",
          "--gin_bindings=TextCorpus.test_path=None"]


def base_argv(model_dir, files, **corpus):
  return ([f"--model_dir={model_dir}", "--gin_file=configs/charlm.gin"]
          + corpus_flags(files, **corpus) + [f"--gin_bindings={b}" for b in TINY])


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, files):
  model_dir = tmp_path_factory.mktemp("run")
  assert launch(base_argv(model_dir, files)) == 0
  return model_dir


def snapshot(model_dir):
  """Every file and directory under model_dir with its size and modification time."""
  listing = {}
  for root, dirs, names in os.walk(model_dir):
    for name in dirs + names:
      path = os.path.join(root, name)
      stat = os.stat(path)
      listing[os.path.relpath(path, model_dir)] = (stat.st_size, stat.st_mtime_ns)
  return listing


def test_train_through_the_launcher(trained_dir):
  assert {"checkpoints", "operative_config.gin", "vocab.json", "train", "eval"} <= set(
      os.listdir(trained_dir))
  assert "ckpt-3.index" in os.listdir(trained_dir / "checkpoints")


BAD_INPUTS = {
    "missing gin file": (lambda f: ["--gin_file=nope.gin"],
                         "--gin_file=nope.gin: no such file here or among the packaged configs"),
    "malformed gin file": (lambda f: [f"--gin_file={f['bad_gin']}"],
                           r"bad.gin:2: Couldn't parse statement"),
    "unknown gin parameter": (lambda f: ["--gin_bindings=TextCorpus.bogus = 1"],
                              "Configurable 'TextCorpus' doesn't have a parameter named 'bogus'"),
    "missing corpus": (lambda f: ["--gin_bindings=TextCorpus.valid_path='/no/such/valid.txt'"],
                       r"TextCorpus.valid_path='/no/such/valid.txt': no such file; pass "
                       r"--gin_bindings"),
    "empty corpus": (lambda f: [f"--gin_bindings=TextCorpus.valid_path='{f['empty']}'"],
                     r"TextCorpus.valid_path=.*empty.txt' is empty"),
    "too-short corpus": (lambda f: [f"--gin_bindings=TextCorpus.valid_path='{f['short']}'"],
                         r"the valid text .* has 2 tokens, fewer than one batch needs: "
                         r"eval_batch_size 4 rows \+ 1 = 5"),
    "zero steps": (lambda f: ["--gin_bindings=Trainer.train_steps = 0"],
                   "Trainer.train_steps must be a positive integer, got 0"),
    "negative steps": (lambda f: ["--gin_bindings=Trainer.steps_per_loop = -5"],
                       "Trainer.steps_per_loop must be a positive integer, got -5"),
    "checkpoint that does not fit": (lambda f: ["--gin_bindings=LanguageModel.units = 12"],
                                     "does not fit the model"),
    "vocabulary of another corpus": (
        lambda f: [f"--gin_bindings=TextCorpus.train_path='{f['other']}'"],
        "vocab.json .* was built from another training text"),
    "bad layer argument": (lambda f: ["--gin_bindings=LanguageModel.num_layers = 0"],
                           "LanguageModel: num_layers must be a positive integer, got 0"),
    "unknown flag": (lambda f: ["--learning_rate=0.1"],
                     "unknown flag --learning_rate; see --help$"),
    "misspelt flag": (lambda f: ["--gin_binding=Trainer.train_steps=5"],
                      "unknown flag --gin_binding; did you mean --gin_bindings\\? See --help$"),
    "misspelt gin parameter": (lambda f: ["--gin_bindings=Trainer.train_step=100"],
                               "named 'train_step'.*; did you mean `Trainer.train_steps`\\?$"),
    "positional argument": (lambda f: ["x=1"], "unexpected arguments"),
    "mode without --mode": (lambda f: ["eval"],
                            "unexpected argument 'eval'; did you mean --mode=eval\\? See --help$"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_leaves_model_dir_alone(
        case, files, trained_dir, capsys):
  extra, message = BAD_INPUTS[case]
  before = snapshot(trained_dir)
  capsys.readouterr()
  code = launch(base_argv(trained_dir, files) + extra(files))
  err = capsys.readouterr().err
  assert code == 2
  lines = err.splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("tbptt: error: ")
  assert re.search(message, lines[0]), lines[0]
  assert snapshot(trained_dir) == before


def test_missing_model_dir_and_required_paths(files, tmp_path, capsys):
  assert launch(["--gin_file=charlm.gin"]) == 2
  assert capsys.readouterr().err.splitlines() == [
      "tbptt: error: --model_dir is required, e.g. --model_dir=runs/charlm"]
  assert launch([f"--model_dir={tmp_path / 'ptb'}", "--gin_file=ptb_small.gin"]) == 2
  err = capsys.readouterr().err.splitlines()
  assert err == ["tbptt: error: TextCorpus.train_path is not set; pass --gin_bindings=\"TextCorpus"
                 ".train_path='/data/ptb.train.txt'\" (or 'stdlib' for the embedded corpus)"]
  assert not os.path.exists(tmp_path / "ptb")


@pytest.mark.parametrize("flag", ["--help", "-h", "--helpshort"])
def test_help_says_what_the_program_does_and_exits_0(flag, capsys):
  assert launch([flag]) == 0
  out = capsys.readouterr().out
  assert out.startswith("tbptt: trains recurrent models")
  for mode in ("train", "eval", "train_and_eval", "sample", "export"):
    assert re.search(rf"^  {mode} +\S", out, re.M), mode
  for flag_name in main_lib.OWN_FLAGS + ("verbosity",):
    assert re.search(rf"^  --{flag_name}", out, re.M), flag_name
  assert "Try --helpfull" not in out and "charlm.gin" in out
  examples = out.split("Examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
  assert len(examples) >= 2 and all(line.startswith("  tbptt --model_dir=") for line in examples)


_ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]", re.M)


@pytest.mark.slow
def test_console_shows_our_lines_only_unless_asked(files, tmp_path):
  """Default: no absl prefixes, no TensorFlow INFO chatter; --verbosity=1 brings both back."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  outputs = {}
  for verbosity in (0, 1):
    argv = ([sys.executable, "-m", "tbptt", f"--verbosity={verbosity}"]
            + base_argv(tmp_path / f"run{verbosity}", files))
    for mode in ("train", "export"):
      done = subprocess.run(argv + [f"--mode={mode}"], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=600)
      assert done.returncode == 0, done.stderr
      outputs[verbosity, mode] = done.stdout + done.stderr
  for mode in ("train", "export"):
    quiet, chatty = outputs[0, mode], outputs[1, mode]
    assert not _ABSL_PREFIX.search(quiet), quiet
    assert "Sharding callback" not in quiet and "Assets written" not in quiet, quiet
    assert _ABSL_PREFIX.search(chatty), chatty
  assert "Assets written" in outputs[1, "export"]
  assert "Exported step 3" in outputs[0, "export"]


@pytest.mark.slow
def test_command_line_in_a_subprocess(files, tmp_path):
  """The real entry point: a train run, then a checkpoint that does not fit (exit 2, one line)."""
  model_dir = tmp_path / "run"
  argv = [sys.executable, "-m", "tbptt"] + base_argv(model_dir, files)
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  done = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr
  assert (model_dir / "operative_config.gin").exists()
  before = snapshot(model_dir)
  bad = subprocess.run(argv + ["--gin_bindings=LanguageModel.units=12"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2
  assert len(bad.stderr.splitlines()) == 1 and "does not fit the model" in bad.stderr, bad.stderr
  assert snapshot(model_dir) == before
