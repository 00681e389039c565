"""scripts/sam_family.py: every command it prints is a config the trainer accepts with the method's
fields, its table reads the runs as documented, and one tiny run goes end to end."""

from __future__ import annotations

import doctest
import importlib.util
import json
import shlex
import sys

import pytest
from _runs import ROOT
from test_recipes import parse_trainer_flags

from gnreg import configuration
from gnreg.data import digits

spec = importlib.util.spec_from_file_location("sam_family", ROOT / "scripts" / "sam_family.py")
sam_family = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sam_family)


def test_its_doctests_pass():
  assert doctest.testmod(sam_family).failed == 0


def test_dry_run_prints_an_accepted_command_per_method_and_seed(tmp_path, capsys):
  assert sam_family.main(["--dry-run", f"--out={tmp_path}"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 7 * 3
  seen = {}
  for line in lines:
    argv = shlex.split(line)
    assert argv[:3] == [sys.executable, "-m", "gnreg.main"]
    config = parse_trainer_flags(argv[3:]).config
    configuration.validate(config, num_devices=1)
    method, seed = argv[4].split("/")[-2:]
    assert seed == f"seed{config.seed}" and config.model.name == "ResNet20"
    seen[method] = config
  assert list(seen) == list(sam_family.METHODS)
  assert not list(tmp_path.iterdir())  # A dry run trains nothing.
  gnp = {m: c.gnp for m, c in seen.items()}
  assert gnp["sgd"].alpha == 0 and (gnp["gnp"].r, gnp["gnp"].alpha) == (0.05, 0.5)
  assert gnp["sam"].alpha == 1 and not gnp["sam"].adaptive
  assert gnp["asam"].adaptive and gnp["asam"].r == 0.5
  assert [gnp[m].method for m in ("gsam", "looksam", "exact_gnp")] == ["gsam", "looksam",
                                                                      "exact_gnp"]  # fmt: skip
  assert (gnp["gsam"].gsam.rho_max, gnp["gsam"].gsam.rho_min, gnp["gsam"].gsam.alpha) == (
    0.05,
    0.01,
    0.1,
  )


def _fake_run(path, errors_and_rates, *, num_epochs=1.0, batch_size=64):
  """A workdir as the trainer leaves it: config.json and metrics.jsonl."""
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps({"num_epochs": num_epochs,
                                                "batch_size": batch_size}))  # fmt: skip
  error, rates = errors_and_rates
  records = [{"step": 10 * (i + 1), "images_per_sec": r} for i, r in enumerate(rates)]
  records.append({"step": 10 * len(rates), "epoch": 1.0, "test/top1_error": error})
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_table_has_mean_spread_each_seed_and_time_per_step(tmp_path):
  # First windows (compilation) of 1 image/s are left out; 64 / 640 images/s = 100 ms.
  _fake_run(tmp_path / "sgd" / "seed0", (0.010, [1.0, 640.0, 640.0]))
  _fake_run(tmp_path / "sgd" / "seed1", (0.020, [1.0, 320.0, 640.0]))
  _fake_run(tmp_path / "gsam" / "seed0", (0.030, [1.0]))  # One window: no time.
  text = sam_family.table(str(tmp_path), ["sgd", "gsam", "sam"], [0, 1])
  lines = text.splitlines()
  assert lines[0].startswith("| method | fields | test error % over seeds 0, 1: mean ± sd")
  assert lines[2] == "| sgd | `gnp.alpha=0` | 1.50 ± 0.71 (1.00, 2.00) | 125 |"
  assert lines[3].endswith("| 3.00 (3.00) | - |")  # gsam: one seed finished.
  assert lines[4].endswith("| - | - |")  # sam: not run.


# The script's parts are the tests above (its commands, its table of finished runs), and GSAM
# through the trainer is a case of tests/test_batch_groups.py: this joins them, at 15 s.
@pytest.mark.slow
def test_trains_and_tabulates_end_to_end(tmp_path):
  # One method (gsam, through the trainer's gnp.method) and seed, two steps of 512 digits: a
  # run costs about 15 s of CPU (start-up, compilation); the rest is left to the tests above.
  out = tmp_path / "runs"
  status = sam_family.main(
    [f"--out={out}", "--methods=gsam", "--seeds=0", "--config=configs/default.py:smoke", "--",
     "--config.num_epochs=1", "--config.batch_size=512", "--config.schedule.warmup_epochs=0",
     "--config.log_every_steps=1", f"--config.data.data_dir={digits.default_data_dir()}"]
  )  # fmt: skip
  assert status == 0
  row = (out / "table.md").read_text().splitlines()[2].split(" | ")
  assert row[0] == "| gsam"
  error = float(row[2].split()[0])
  assert 0 <= error <= 100 and row[2].endswith(f"({row[2].split()[0]})")
  assert float(row[3].rstrip(" |")) > 0  # The second step's window.
  saved = json.loads((out / "gsam" / "seed0" / "config.json").read_text())
  assert saved["gnp"]["method"] == "gsam" and saved["seed"] == 0
  # Run again: the finished run is not trained again, and the table is the same.
  metrics = (out / "gsam" / "seed0" / "metrics.jsonl").read_text()
  table = (out / "table.md").read_text()
  assert sam_family.main(
    [f"--out={out}", "--methods=gsam", "--seeds=0", "--config=configs/default.py:smoke"]
  ) == 0  # fmt: skip
  assert (out / "gsam" / "seed0" / "metrics.jsonl").read_text() == metrics
  assert (out / "table.md").read_text() == table


@pytest.mark.parametrize(
  "args, message",
  [(["--methods=sam,gsm"], "--methods: unknown gsm"), (["--seeds=0,x"], "--seeds: must be")],
)
def test_bad_arguments_are_refused(args, message, capsys):
  with pytest.raises(SystemExit):
    sam_family.main(["--dry-run", *args])
  assert message in capsys.readouterr().err
