"""sslr as installed: configs found by name, help and completion, and (slow) a wheel built from
this checkout, installed in a fresh venv, running the quickstart and the demo outside it."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sslr.cli import main
from sslr.packaged import config_dir, packaged_config, resolve_config_args

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_are_found_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_dir() == ROOT / "configs"
    quick = str(ROOT / "configs" / "quickstart.yaml")
    debug = str(ROOT / "configs" / "overlays" / "debug.yaml")
    args = ["fit", "--config", "quickstart", "--config=overlays/debug", "--model.rule", "usf"]
    assert resolve_config_args(args) == ["fit", "--config", quick, f"--config={debug}", *args[4:]]
    assert (
        packaged_config("hashing/quickstart_digits")
        == ROOT / "configs/hashing/quickstart_digits.yaml"
    )
    # A file of that name here wins; unknown names, paths and inline YAML are left to the parser.
    (tmp_path / "quickstart").write_text("seed_everything: 1\n")
    assert resolve_config_args(["--config", "quickstart"]) == ["--config", "quickstart"]
    # Inline YAML longer than a file name may be (a grid's inline base_config) is no name.
    long_inline = "{trainer: {max_epochs: 1}, data: {init_args: {" + "x" * 300 + ": 1}}}"
    for value in ("nosuchconfig", "../configs/quickstart", "trainer: {max_epochs: 1}", long_inline):
        assert resolve_config_args(["--config", value]) == ["--config", value]
        assert resolve_config_args([f"--config={value}"]) == [f"--config={value}"]
    assert resolve_config_args(["--config", "x" * 300]) == ["--config", "x" * 300]


def test_help_names_every_subcommand_and_keeps_line_breaks(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    usage = out.splitlines()[0]
    assert usage.startswith("usage: sslr ")
    for command in ("fit", "test", "attack", "report", "grid", "demo"):
        assert command in usage
    assert "\n  sslr report: " in out and "\n  sslr demo: " in out


def test_shell_completion_script(capsys):
    """bash completion of subcommands, options and the rules' names; generated in seconds (the
    value choices of deeply nested options are left out: sslr.cli.COMPLETION_DEPTH)."""
    assert main(["--print_shtab", "bash"]) == 0
    script = capsys.readouterr().out
    assert "shtab" in script and "_shtab_sslr" in script
    assert "--model.rule" in script and "--trainer.max_epochs" in script
    assert "--suite.attacks" in script and "--optimizer.lr" in script
    rules = [line for line in script.splitlines() if "_fit_model_rule_typehint()" in line]
    assert len(rules) == 1 and "'bp fa dfa ldfa usf frsf brsf kp wm'" in rules[0], rules


def test_lightning_advertisements_are_dropped_and_other_notices_kept(caplog):
    from lightning.pytorch.utilities import rank_zero_info

    from sslr.quiet import quiet_third_party

    quiet_third_party()
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger]")
        rank_zero_info("GPU available: False, used: False")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["GPU available: False, used: False"]


def _run(cmd: list, cwd: Path, env: dict, timeout: int = 900) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.mark.slow
def test_wheel_runs_quickstart_and_demo_outside_the_checkout(tmp_path):
    """Build the wheel from a copy of the sources, install it (no deps) into a new venv whose
    dependencies come from this interpreter's site-packages (torch is not downloaded again),
    and run from a folder with no configs/ and no PYTHONPATH."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("sslr", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(WANDB_MODE="disabled", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [sys.executable, "-m", "pip"]
    build = [*pip, "wheel", "--no-deps", "-w", "dist", str(src)]
    if importlib.util.find_spec("setuptools"):
        build.append("--no-build-isolation")
    else:  # the build environment gets setuptools from the index
        env.pop("PIP_NO_INDEX")
    _run(build, tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("sslr-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    _run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], tmp_path, env)
    purelib = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    # Dependencies only: a path line adds the folder, without running its .pth files (so the
    # development install of sslr there is not importable; the wheel's copy is).
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "sslr_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")

    work = tmp_path / "work"
    work.mkdir()
    where = _run([str(python), "-c", "import sslr; print(sslr.__file__)"], work, env)
    assert where.strip().startswith(str(venv)), where
    sslr = str(venv / "bin" / "sslr")
    _run([sslr, "fit", "--config", "quickstart", "--config", "overlays/debug"], work, env)
    run = work / "runs" / "debug" / "Digits" / "resnet18_bp" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics.csv").is_file()

    # About 2 minutes on 2 idle cores; the limit is for a machine busy with other work.
    out = _run(
        [sslr, "demo", "--out", "demo", "--pretrain-epochs", "1", "--finetune-epochs", "1",
         "--n", "16"], work, env, timeout=3600,
    )  # fmt: skip
    assert "| usf |" in out and "| bp |" in out, out[-2000:]
    assert list((work / "demo").rglob("usf/checkpoints/*.ckpt"))  # the demo grid's layout
