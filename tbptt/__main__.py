"""`python -m tbptt ...`: the launcher (see `tbptt --help`)."""

from tbptt.experiments.main import run

if __name__ == "__main__":
  run()
