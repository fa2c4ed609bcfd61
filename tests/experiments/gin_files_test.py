"""Tests for experiments/gin_files.py: finding packaged configs and one-line gin errors."""

import os

import gin
import pytest

from tbptt.experiments import experiment  # noqa: F401  (registers the configurables)
from tbptt.experiments import gin_files
from tbptt.trainer.errors import ConfigError


def test_bare_and_prefixed_names_find_packaged_configs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Nowhere near the repository's configs/ folder.
  packaged = os.path.join(gin_files.packaged_configs_dir(), "charlm.gin")
  assert gin_files.resolve("charlm.gin") == packaged
  assert gin_files.resolve("configs/charlm.gin") == packaged
  local = tmp_path / "charlm.gin"
  local.write_text("")
  assert gin_files.resolve("charlm.gin") == "charlm.gin"  # A file in the working directory wins.


def test_includes_resolve_to_packaged_configs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  mine = tmp_path / "mine.gin"
  mine.write_text("include 'charlm.gin'\nLanguageModel.units = 77\n")
  gin_files.parse([str(mine)], ["TextCorpus.seq_len = 9"])
  assert gin.query_parameter("LanguageModel.units") == 77
  assert gin.query_parameter("TextCorpus.seq_len") == 9
  assert gin.query_parameter("Trainer.seed") == 0  # From base.gin, included by charlm.gin.


@pytest.mark.parametrize("text, message", [
    ("TextCorpus.level = 'char'\nTextCorpus.nope = 1\n",
     r"^.*cfg.gin:2: Configurable 'TextCorpus' doesn't have a parameter named 'nope'. "
     r"\(TextCorpus.nope = 1\); check the spelling"),
    ("Nothing.x = 1\n", r"cfg.gin:1: No configurable matching 'Nothing'"),
    ("TextCorpus.level = 'char'\nTextCorpus.seq_len 5\n", r"cfg.gin:2: Couldn't parse statement"),
    ("TextCorpus.seq_len = (5,\n", r"cfg.gin: EOF in multi-line statement"),
    ("include 'gone.gin'\n", r"cfg.gin:1: Unable to open file: gone.gin.*; fix the include path"),
])
def test_file_errors_are_one_line_with_file_and_line(tmp_path, text, message):
  path = tmp_path / "cfg.gin"
  path.write_text(text)
  with pytest.raises(ConfigError, match=message) as error:
    gin_files.parse([str(path)], [])
  assert "\n" not in str(error.value)


def test_binding_errors_name_the_binding():
  with pytest.raises(ConfigError, match=r"^--gin_bindings line 2: Configurable 'Trainer' doesn't "
                                        r"have a parameter named 'speed'"):
    gin_files.parse([], ["Trainer.seed = 1", "Trainer.speed = 2"])


def test_missing_file_lists_the_packaged_configs():
  with pytest.raises(ConfigError, match=r"--gin_file=nope.gin: no such file .*charlm.gin"):
    gin_files.resolve("nope.gin")
