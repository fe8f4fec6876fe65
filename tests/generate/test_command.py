"""The sampling command's refusals that need no trained run."""

import os
import pathlib
import subprocess
import sys

from experiments.configs import preferences
from gptjax.runs import run_dir

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_a_ppo_run_is_refused_in_one_line_that_says_how_to_read_its_policy(tmp_path):
  workdir = tmp_path / 'ppo'
  workdir.mkdir()
  run_dir.write_config(str(workdir), preferences.get_config('ppo'))
  run = subprocess.run([sys.executable, '-m', 'gptjax.generate', f'--workdir={workdir}'],
                       cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, capture_output=True,
                       text=True, timeout=300)
  lines = run.stderr.strip().splitlines()
  assert run.returncode == 2 and len(lines) == 1, run.stderr[-2000:]
  assert lines[0].startswith(f'gptjax.generate: error: {workdir} is a PPO run: its checkpoints '
                             'hold the policy, its critic and beta together')
  assert 'ppo_training.load_state(WORKDIR).policy.params' in lines[0]
