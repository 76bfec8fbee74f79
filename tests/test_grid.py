"""`sslr grid` through the CLI users run: the paper's protocol on Digits end to end, then a
second invocation that skips everything, an interrupted fine-tune that alone runs again, and
bad grid files that fail at once with one line."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from sslr.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEBUG_GRID = ROOT / "configs" / "grid" / "digits_debug.yaml"
RULES = ("bp", "usf", "frsf", "brsf")
LINE = re.compile(r"^sslr grid: \[(\d+)/(\d+)\] (.+?): (.*)$")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")


def grid(capsys, *args: str) -> tuple[int, dict[str, list[str]]]:
    """Run `sslr grid`; returns its exit code and, per stage label, what its lines said."""
    code = main(["grid", *args])
    stages: dict[str, list[str]] = {}
    grid.out = capsys.readouterr().out  # the whole output of the last call
    for line in grid.out.splitlines():
        match = LINE.match(line)
        if match:
            stages.setdefault(match.group(3), []).append(match.group(4))
    return code, stages


def ran(stages: dict[str, list[str]]) -> set[str]:
    return {label for label, said in stages.items() if not said[-1].startswith("skipped")}


def robustness(run_dir: Path) -> list[dict]:
    with (run_dir / "robustness.csv").open() as f:
        return list(csv.DictReader(f))


def files(folder: Path) -> dict[Path, int]:
    """Every result file and its mtime (not the writer locks, which each run takes)."""
    return {
        p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != ".sslr.lock"
    }


def test_a_second_grid_on_the_same_folder_is_refused(capsys, tmp_path):
    from sslr.atomic import FolderLock

    out = tmp_path / "grid"
    with FolderLock(out, "grid folder"):  # as a running grid holds it
        assert main(["grid", "--config", str(DEBUG_GRID), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in use by" in err[0]
    assert not (out / "resnet18").exists()


def test_grid_runs_every_stage_then_skips_them_then_resumes_one(capsys, tmp_path):
    out = tmp_path / "grid"
    code, stages = grid(capsys, "--config", str(DEBUG_GRID), "--out", str(out))
    assert code == 0
    labels = ["pretrain resnet18/bp"] + [
        f"{s} resnet18/{r}" for s in ("finetune", "attack") for r in RULES
    ]
    assert ran(stages) == {*labels, "report"}

    pretrain = json.loads((out / "resnet18" / "pretrain" / "done.json").read_text())
    assert (out / pretrain["checkpoint"]).is_file()
    for rule in RULES:
        run_dir = out / "resnet18" / rule
        done = json.loads((run_dir / "done.json").read_text())
        assert (out / done["checkpoint"]).is_file()
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        assert 0.0 <= done["metrics"]["test/acc"] <= 1.0
        # Every rule starts from the same BP checkpoint, with the same seed and budget.
        assert done["inputs"]["start"] == pretrain["sha256"]
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        init = config["model"]["init_args"]
        assert init["rule"] == rule and init["backbone"] == "resnet18"
        assert Path(init["pretrained_ckpt"]) == out / pretrain["checkpoint"]
        assert config["seed_everything"] == 0 and config["trainer"]["max_epochs"] == 1
        assert config["optimizer"]["init_args"]["lr"] == 0.01  # finetune.args

        rows = robustness(run_dir)
        expected = {"rule", "exact", "transfer"} | ({"eot"} if rule == "brsf" else set())
        worst = [r for r in rows if r["attack"] == "worst"]  # per-image worst case, per eps
        assert {round(float(r["eps"]) * 255) for r in worst} == {0, 8}
        cells = [r for r in rows if r["attack"] != "worst"]
        assert {r["gradient"] for r in cells} == expected  # eot only where B is random
        assert {r["attack"] for r in cells} == {"fgsm", "pgd"}
        assert {round(float(r["eps"]) * 255) for r in rows} == {0, 8}
        assert all(int(r["n"]) == 32 and 0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    # bp's transfer surrogate is the bp model itself: the same examples as its own gradient.
    bp = {
        (r["attack"], r["eps"], r["gradient"]): r["accuracy"]
        for r in robustness(out / "resnet18" / "bp")
    }
    assert all(bp[(a, e, "transfer")] == bp[(a, e, "rule")] for a, e, g in bp if g == "rule")

    # The attack stages show the engine's progress (a line per cell) under their stage line.
    assert re.search(r"^    attack \d+/\d+ .*left, ETA", grid.out, re.MULTILINE)
    # The demo's table reads the same files: its cells are the markers' and the CSVs' values.
    from sslr.demo import demo_table

    table = demo_table(out, "resnet18", RULES, [0.0, 8 / 255]).splitlines()
    for rule, line in zip(RULES, table[2:], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        done = json.loads((out / "resnet18" / rule / "done.json").read_text())
        assert cells[:2] == [rule, f"{done['metrics']['test/acc']:.3f}"]
        pgd = {
            r["gradient"]: float(r["accuracy"])
            for r in robustness(out / "resnet18" / rule)
            if r["attack"] == "pgd" and round(float(r["eps"]) * 255) == 8
        }
        assert cells[2:4] == [f"{pgd['rule']:.3f}", f"{pgd['exact']:.3f}"]
        assert cells[4] == ("–" if rule == "bp" else f"{pgd['transfer']:.3f}")

    report = (out / "report.md").read_text()
    for rule in RULES:
        assert len([line for line in report.splitlines() if line.startswith(f"| {rule} |")]) == 1
    assert (out / "report.csv").is_file() and list(out.glob("report*.png"))

    # Again: every stage is skipped and not one file is written.
    before = files(out)
    code, stages = grid(capsys, "--config", str(DEBUG_GRID), "--out", str(out))
    assert code == 0
    assert len(stages) == len(labels) + 1 and not ran(stages)
    assert files(out) == before

    # An interrupted fine-tune (its last.ckpt written, its marker not): it alone resumes; its
    # checkpoint is unchanged, so its attack stays done; the report is rebuilt.
    frsf = out / "resnet18" / "frsf"
    (frsf / "done.json").unlink()
    code, stages = grid(capsys, "--config", str(DEBUG_GRID), "--out", str(out))
    assert code == 0
    assert ran(stages) == {"finetune resnet18/frsf", "report"}
    assert stages["finetune resnet18/frsf"][0] == "resuming from last.ckpt"
    assert (frsf / "done.json").is_file()
    with (frsf / "metrics.csv").open() as f:
        logged = list(csv.DictReader(f))
    assert any(r["train/loss"] for r in logged) and any(r["test/acc"] for r in logged)


def test_dry_run_prints_the_commands_and_writes_nothing(capsys, tmp_path):
    code = main(["grid", "--config", str(DEBUG_GRID), "--out", "g", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("would run") == 9 and "would write" in out
    assert out.count("sslr fit ") == 5 and out.count("sslr attack ") == 4
    assert "--model.rule brsf" in out and "--suite.surrogate_ckpt" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "spec", sorted((ROOT / "configs" / "grid").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_shipped_grid_parses_every_stage(spec, capsys, tmp_path):
    """Each shipped grid's every stage command parses (a dry run checks them all, loads no
    data and writes nothing), with the inline base configs and string suite options they use."""
    code = main(["grid", "--config", str(spec), "--out", "g", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, out[-2000:]
    grid = yaml.safe_load(spec.read_text())
    stages = len(grid["backbones"]) * (1 + 2 * len(grid["rules"]))
    assert out.count("would run") == stages and "would write" in out
    assert list(tmp_path.iterdir()) == []


def test_the_demo_is_a_grid_file(capsys, tmp_path):
    """`sslr demo` runs configs/grid/quickstart_demo.yaml: Digits, bp and usf from one BP
    checkpoint, PGD at 8 and 16/255 through rule, exact and transfer."""
    from sslr.demo import DEMO_GRID
    from sslr.grid import load_grid

    demo = load_grid(DEMO_GRID)
    assert demo.out == Path("runs/demo") and demo.rules == ("bp", "usf")
    assert demo.suite["eps"] == pytest.approx([0, 8 / 255, 16 / 255])
    assert demo.suite["gradients"] == ["rule", "exact", "transfer"]
    config = yaml.safe_load(demo.base_config.read_text())
    assert config["data"]["class_path"] == "Digits"  # embedded: no download
    code = main(["grid", "--config", str(DEMO_GRID), "--out", "d", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("would run") == 5 and "would write" in out
    assert list(tmp_path.iterdir()) == []


BASE = str(ROOT / "configs" / "quickstart.yaml")


@pytest.mark.parametrize(
    ("grid_file", "message"),
    [
        ({"base_config": BASE, "backbones": ["resnet18"], "epochz": 3}, "unknown key 'epochz'"),
        ({"base_config": BASE, "backbones": ["resnet18"], "rules": ["bp", "xsf"]}, "unknown rule 'xsf'"),
        ({"base_config": "nope.yaml", "backbones": ["resnet18"]}, "base_config 'nope.yaml' not found"),
        ({"backbones": ["resnet18"]}, "base_config is missing"),
        ({"base_config": BASE, "backbones": ["resnet-18"]}, "Unknown backbone 'resnet-18'"),
        ({"base_config": BASE, "backbones": ["resnet18"], "finetune": {"epochs": 0}}, "finetune.epochs must be"),
        ({"base_config": BASE, "backbones": ["resnet18"], "finetune": {"args": ["--trainer.max_epochs", "9"]}}, "sets --trainer.max_epochs"),
        ({"base_config": BASE, "backbones": ["resnet18"], "attack": {"suite": {"stepz": 3}}}, "unknown key 'attack.suite.stepz'"),
        ({"base_config": BASE, "backbones": ["resnet18"], "attack": {"suite": {"eps": ["8"]}}}, "not in /255 units"),
        ({"base_config": BASE, "backbones": ["resnet18"], "rules": ["usf"], "attack": {"suite": {"gradients": ["transfer"]}}}, "add bp to rules"),
        ({"base_config": BASE, "backbones": ["resnet18"], "pretrain": {"epochs": 2, "weights": "IMAGENET1K_V1"}}, "give one"),
        ({"base_config": BASE, "backbones": ["resnet18"], "finetune": {"args": ["--optimizer.lrr", "0.1"]}}, "the finetune stage's command"),
    ],
)  # fmt: skip
def test_bad_grid_file_fails_with_one_line(capsys, tmp_path, grid_file, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(grid_file))
    assert main(["grid", "--config", str(path), "--out", "g"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslr grid: error: "), err
    assert message in err[0]
    assert not (tmp_path / "g").exists()


def test_relative_configs_resolve_from_the_grid_file(tmp_path):
    from sslr.grid import load_grid

    folder = tmp_path / "grids"
    folder.mkdir()
    (folder / "base.yaml").write_text("seed_everything: 0\n")
    (folder / "g.yaml").write_text(
        "base_config: base.yaml\noverlays: [{trainer: {max_epochs: 1}}]\nbackbones: [resnet18]\n"
        "attack: {suite: {eps: [0, 2/255, 0.5/255]}}\n"
    )
    grid = load_grid(folder / "g.yaml")
    assert grid.base_config == folder / "base.yaml"
    assert grid.overlays == ({"trainer": {"max_epochs": 1}},)
    assert grid.out == Path("runs/grid/g") and grid.rules == ("bp", "usf", "frsf", "brsf")
    assert grid.suite["eps"] == pytest.approx([0.0, 2 / 255, 0.5 / 255])


@pytest.mark.slow
def test_changed_inputs_rerun_what_depends_on_them(capsys, tmp_path):
    spec = yaml.safe_load(DEBUG_GRID.read_text())
    here = DEBUG_GRID.parent
    spec["base_config"] = str((here / spec["base_config"]).resolve())
    spec["overlays"] = [
        str((here / o).resolve()) if isinstance(o, str) else o for o in spec["overlays"]
    ]
    spec["rules"] = ["bp", "usf"]
    path = tmp_path / "two_rules.yaml"

    def run_with(spec) -> set[str]:
        path.write_text(yaml.safe_dump(spec))
        code, stages = grid(capsys, "--config", str(path), "--out", "g")
        assert code == 0
        return ran(stages)

    assert len(run_with(spec)) == 6
    pretrain = Path("g/resnet18/pretrain/done.json").read_text()
    # A new fine-tuning budget: the fine-tunes, their attacks and the report, not the pretraining.
    spec["finetune"]["args"] = ["--optimizer.lr", "0.02"]
    fits_and_attacks = {f"{s} resnet18/{r}" for s in ("finetune", "attack") for r in ("bp", "usf")}
    assert run_with(spec) == {*fits_and_attacks, "report"}
    assert Path("g/resnet18/pretrain/done.json").read_text() == pretrain
    config = yaml.safe_load(Path("g/resnet18/usf/config.yaml").read_text())
    assert config["optimizer"]["init_args"]["lr"] == 0.02
    # A new attack suite: only the attacks and the report.
    spec["attack"]["suite"]["steps"] = 2
    assert run_with(spec) == {"attack resnet18/bp", "attack resnet18/usf", "report"}
    steps = {r["steps"] for r in robustness(Path("g/resnet18/usf")) if r["attack"] == "pgd"}
    assert steps == {"2"}


HASHING_GRID = ROOT / "configs" / "grid" / "hashing_digits_debug.yaml"


@pytest.mark.slow
def test_a_hashing_grid_runs_end_to_end(capsys, tmp_path):
    """The hashing grid config: fit, fine-tune, the hashing attacks with the same suite keys
    as classification, and a report with mAP / t-mAP columns."""
    out = tmp_path / "hgrid"
    code, stages = grid(capsys, "--config", str(HASHING_GRID), "--out", str(out))
    assert code == 0
    assert {"attack resnet18/bp", "attack resnet18/usf", "report"} <= ran(stages)
    for rule in ("bp", "usf"):
        rows = robustness(out / "resnet18" / rule)
        assert {r["attack"] for r in rows} == {"pgd", "p2p", "worst"}
        assert {r["metric"] for r in rows} == {"mAP", "t-mAP"}
        assert {r["gradient"] for r in rows if r["attack"] != "worst"} == {
            "rule",
            "exact",
            "transfer",
        }
        worst = {
            (r["metric"], r["eps"]): float(r["accuracy"]) for r in rows if r["attack"] == "worst"
        }
        for r in rows:  # the worst case is at least as strong as every cell
            if r["attack"] != "worst":
                bound = worst[(r["metric"], r["eps"])]
                value = float(r["accuracy"])
                assert value >= bound - 1e-9 if r["metric"] == "mAP" else value <= bound + 1e-9
        assert all(int(r["n"]) == 16 and 0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    report = (out / "report.md").read_text()
    assert "t-mAP" in report and "| usf |" in report
