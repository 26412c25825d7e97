"""gna-cute env / run (in process), and python -m gna_cute (one subprocess)."""

from __future__ import annotations

import subprocess
import sys

import torch

from gna_cute import backends, cli
from gna_cute.backends import Backend
from gna_cute.reference import reference_forward


def test_env_lists_every_backend(capsys):
    assert cli.main(["env"]) == 0
    text = capsys.readouterr().out
    assert "torch" in text and "nvidia-cutlass-dsl" in text
    for name in backends.BACKEND_NAMES:
        assert f"  {name}" in text
    assert "reference  available" in text


def test_run_on_cpu_uses_reference(capsys):
    argv = ["run", "-i", "12", "10", "-w", "5", "3", "-s", "2", "1", "--dilation", "2", "1",
            "--causal", "1", "0", "--heads", "4", "--kv-heads", "2", "--head-dim", "8", "--iters", "1",
            "--device", "cpu", "--extra-kv", "2"]  # fmt: skip
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "backend  reference" in text
    assert "kernel_size=(5, 3) stride=(2, 1) dilation=(2, 1) is_causal=(True, False)" in text
    assert "time     " in text


def test_run_reports_error_against_reference(capsys, monkeypatch):
    """A non-reference backend's max error vs the reference is measured and printed."""

    def off_by_a_bit(args):
        out, lse = reference_forward(args.q, args.k, args.v, args.params, args.scale)
        return out + 0.5, lse

    fake = Backend("fake", lambda a: None, off_by_a_bit, lambda: None)
    monkeypatch.setattr(backends, "BACKENDS", (fake, backends.REFERENCE))
    assert cli.main(["run", "-i", "16", "-w", "4", "--heads", "1", "--head-dim", "4", "--iters", "1"]) == 0
    text = capsys.readouterr().out
    assert "backend  fake" in text
    assert "max |out - ref| = 5.000e-01, max |lse - ref| = 0.000e+00" in text


def test_run_bad_arguments_exit_2(capsys):
    assert cli.main(["run", "-i", "8", "-w", "9"]) == 2
    assert "kernel_size=(9,) x dilation=(1,) must be <=" in capsys.readouterr().err
    assert cli.main(["run", "-i", "8", "-w", "4", "--backend", "sm90"]) == 2
    assert "backend='sm90' cannot run this problem" in capsys.readouterr().err
    assert cli.main(["run", "-i", "8", "-w", "4", "--q-tile", "4"]) == 2
    assert "q_tile_shape=(4,) given without kv_tile_shape" in capsys.readouterr().err


def test_python_dash_m():
    done = subprocess.run([sys.executable, "-m", "gna_cute", "env"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "reference  available" in done.stdout
    assert torch.__version__ in done.stdout
