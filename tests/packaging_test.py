"""Installed names: one package `tbptt`, mapped from the repository's folders; no clashes.

A user project with its own `layers/`, `configs/`, `experiments/` and `trainer/` packages must still
import our layers and launch a run; no module of ours may import another by a top-level name (a
process would then load `layers` and `tbptt.layers` side by side, registering Keras objects and gin
configurables twice).
"""

import configparser
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SOURCE_FOLDERS = ("tbptt", "layers", "trainer", "experiments", "configs")
MAPPED = {"layers", "trainer", "experiments", "configs"}
_TOP_LEVEL_IMPORT = re.compile(r"^\s*(from|import)\s+(layers|trainer|experiments|configs)\b", re.M)


def _python_files(*folders):
  for folder in folders:
    yield from sorted((REPO / folder).rglob("*.py"))


def test_no_module_imports_a_sibling_by_its_top_level_name():
  offenders = [f"{path.relative_to(REPO)}: {match.group(0).strip()}"
               for path in _python_files(*SOURCE_FOLDERS, "tests", "benchmarks")
               for match in _TOP_LEVEL_IMPORT.finditer(path.read_text())]
  assert not offenders, offenders


def test_every_source_package_is_installed_under_tbptt():
  config = configparser.ConfigParser()
  config.read(REPO / "setup.cfg")
  listed = set(config["options"]["packages"].split())
  found = set()
  for folder in MAPPED | {"tbptt"}:
    for init in (REPO / folder).rglob("__init__.py"):
      relative = init.parent.relative_to(REPO)
      parts = relative.parts if folder == "tbptt" else ("tbptt",) + relative.parts
      found.add(".".join(parts))
  assert found == listed, f"setup.cfg [options] packages should be {sorted(found)}"


# Nothing in the project deserialises untrusted bytes or hands a string to an interpreter or shell:
# gin files, checkpoints and SavedModels are the trusted inputs (the README's trust section).
_UNSAFE = re.compile(r"\bimport pickle\b|\bpickle\.|\bcPickle\b"
                     r"|(?<![.\w])eval\(|(?<![.\w])exec\("
                     r"|shell\s*=\s*True|\bos\.system\(|\bos\.popen\(|\bmarshal\.loads\(")


def test_no_pickle_eval_exec_or_shell():
  offenders = [f"{path.relative_to(REPO)}:{text.count(chr(10), 0, match.start()) + 1}: {match[0]}"
               for path in _python_files(*SOURCE_FOLDERS, "benchmarks")
               for text in [path.read_text()]
               for match in _UNSAFE.finditer(text)]
  assert not offenders, offenders


def test_the_unsafe_pattern_finds_what_it_is_for():
  for line in ("import pickle", "x = eval('1')", "exec(code)", "subprocess.run(c, shell=True)",
               "os.system('ls')"):
    assert _UNSAFE.search(line), line
  for line in ("model.evaluate(x)", "trainer.eval_loop()", "self.exec_count = 1"):
    assert not _UNSAFE.search(line), line


def _user_project(root: pathlib.Path) -> pathlib.Path:
  """A user's project whose own folders carry our repository's folder names."""
  for name in ("layers", "configs", "experiments", "trainer"):
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(f"MINE = {name!r}\n")
  (root / "layers" / "state.py").write_text("raise ImportError('the user layers/state.py')\n")
  (root / "configs" / "charlm.gin").write_text("this is not a gin file\n")
  return root


def _tbptt_command():
  script = shutil.which("tbptt", path=os.path.dirname(sys.executable))
  return [script] if script else [sys.executable, "-m", "tbptt"]


@pytest.mark.slow
def test_a_user_project_with_clashing_folders_imports_and_launches(tmp_path):
  project = _user_project(tmp_path / "project")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(project))
  probe = ("import layers, tbptt.layers, tbptt.trainer\n"
           "assert layers.MINE == 'layers', layers.__file__\n"
           "from tbptt.layers import LSTM\n"
           "import sys\n"
           "clash = sorted(m for m in sys.modules if m.split('.')[0] in "
           "('trainer', 'experiments', 'configs') or m.startswith('layers.'))\n"
           "assert not clash, clash\n"
           "print(LSTM.__module__)\n")
  result = subprocess.run([sys.executable, "-c", probe], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "tbptt.layers.lstm"

  model_dir = project / "run"
  bindings = ["TextCorpus.stdlib_bytes=150000", "TextCorpus.batch_size=4", "TextCorpus.seq_len=10",
              "TextCorpus.eval_batch_size=4", "LanguageModel.units=8",
              "LanguageModel.embedding_dim=8", "Trainer.train_steps=2", "Trainer.steps_per_loop=2",
              "Trainer.histogram_interval=None", "Trainer.eval_steps=2"]
  result = subprocess.run(
      _tbptt_command() + [f"--model_dir={model_dir}", "--gin_file=charlm.gin"]
      + [f"--gin_bindings={b}" for b in bindings],
      cwd=project, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (model_dir / "checkpoints" / "checkpoint").is_file()
  assert "LanguageModel.units = 8" in (model_dir / "operative_config.gin").read_text()


def test_the_license_file_is_the_license_setup_cfg_names():
  config = configparser.ConfigParser()
  config.read(REPO / "setup.cfg")
  assert config["metadata"]["license"] == "Apache-2.0"
  assert config["metadata"]["license_files"].strip() == "LICENSE"
  text = (REPO / "LICENSE").read_text()
  assert text.split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
  assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
  assert "END OF TERMS AND CONDITIONS" in text
