"""The command line's hints: a library error naming a gin parameter gets how to set it."""

import pytest

from tbptt.experiments import hints
from tbptt.trainer import TrainerConfig
from tbptt.trainer.errors import ConfigError


@pytest.mark.parametrize("kwargs, line", [
    ({"train_steps": -1}, "Trainer.train_steps must be a positive integer, got -1; "
                          "set --gin_bindings='Trainer.train_steps=1000'"),
    ({"clip_norm": 0.0}, "Trainer.clip_norm must be a positive number or None, got 0.0; "
                         "set --gin_bindings='Trainer.clip_norm=5.0'"),
    ({"nonfinite_policy": "retry"}, "Trainer.nonfinite_policy must be 'stop' or 'rollback', got "
                                    "'retry'; set --gin_bindings=\"Trainer.nonfinite_policy="
                                    "'rollback'\""),
])
def test_a_config_error_gets_the_binding_that_fixes_it(kwargs, line):
  with pytest.raises(ConfigError) as raised:
    TrainerConfig(**kwargs)
  assert hints.with_hint(raised.value) == line


def test_every_trainer_parameter_has_an_example():
  import dataclasses
  fields = {f"Trainer.{f.name}" for f in dataclasses.fields(TrainerConfig)}
  assert fields <= set(hints.EXAMPLES)


def test_errors_without_a_known_parameter_or_with_a_hint_pass_through():
  assert hints.with_hint(ConfigError("no such file")) == "no such file"
  assert hints.with_hint(ValueError("first\nsecond")) == "first"
  hinted = ConfigError("x; pass --gin_bindings=\"A.b='c'\"", parameter="Trainer.seed")
  assert hints.with_hint(hinted) == str(hinted)
