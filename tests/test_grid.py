"""`sslr grid` through the CLI users run: the paper's protocol on Digits end to end, then a
second invocation that skips everything, an interrupted fine-tune that alone runs again,
replaced checkpoints that rerun their fit and what consumed them, and bad grid files that fail
at once with one line."""

from __future__ import annotations

import collections
import contextlib
import csv
import io
import json
import os
import re
import shutil
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
    grid.out, grid.err = capsys.readouterr()  # the whole output of the last call
    return code, progress(grid.out)


def progress(output: str) -> dict[str, list[str]]:
    """Per stage label, what the grid's progress lines said of it."""
    stages: dict[str, list[str]] = {}
    for line in output.splitlines():
        match = LINE.match(line)
        if match:
            stages.setdefault(match.group(3), []).append(match.group(4))
    return stages


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


@pytest.fixture(scope="module")
def digits_grid(tmp_path_factory) -> tuple[Path, str]:
    """The digits debug grid run once for the module (about 1.5 minutes): its folder and the
    first invocation's output. Tests that rerun it leave it finished (every stage done)."""
    folder = tmp_path_factory.mktemp("digits_grid")
    out, old = folder / "grid", Path.cwd()
    text = io.StringIO()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(text):
            code = main(["grid", "--config", str(DEBUG_GRID), "--out", str(out)])
    finally:
        os.chdir(old)
    assert code == 0, text.getvalue()[-2000:]
    return out, text.getvalue()


def test_a_second_grid_on_the_same_folder_is_refused(capsys, tmp_path):
    from sslr.atomic import FolderLock

    out = tmp_path / "grid"
    with FolderLock(out, "grid folder"):  # as a running grid holds it
        assert main(["grid", "--config", str(DEBUG_GRID), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in use by" in err[0]
    assert not (out / "resnet18").exists()


def test_grid_runs_every_stage_then_skips_them_then_resumes_one(capsys, digits_grid):
    out, first = digits_grid
    stages = progress(first)
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
        # transfer's surrogate is bp: on bp itself it would be bp's own white-box examples.
        expected = {"rule", "exact"} | ({"eot"} if rule == "brsf" else set())
        expected |= set() if rule == "bp" else {"transfer"}
        worst = [r for r in rows if r["attack"] == "worst"]  # per-image worst case, per eps
        assert {round(float(r["eps"]) * 255) for r in worst} == {0, 8}
        cells = [r for r in rows if r["attack"] != "worst"]
        assert {r["gradient"] for r in cells} == expected  # eot only where B is random
        assert {r["attack"] for r in cells} == {"fgsm", "pgd"}
        assert {round(float(r["eps"]) * 255) for r in rows} == {0, 8}
        assert all(int(r["n"]) == 32 and 0.0 <= float(r["accuracy"]) <= 1.0 for r in rows)
    # bp's attack ran without transfer and read no surrogate; the others' read bp's checkpoint.
    bp_sha = json.loads((out / "resnet18" / "bp" / "done.json").read_text())["sha256"]
    for rule in RULES:
        attack = json.loads((out / "resnet18" / rule / "attack" / "done.json").read_text())
        gradients = attack["inputs"]["suite"]["gradients"]
        if rule == "bp":
            assert gradients == ["rule", "exact", "eot"] and attack["inputs"]["surrogate"] is None
        else:
            assert gradients == ["rule", "exact", "eot", "transfer"]
            assert attack["inputs"]["surrogate"] == bp_sha

    # The attack stages show the engine's progress (a line per cell) under their stage line.
    assert re.search(r"^    attack \d+/\d+ .*left, ETA", first, re.MULTILINE)
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
    lines = report.splitlines()
    summary = lines[lines.index(next(x for x in lines if x.startswith("| rule | seeds |"))) :]
    summary = summary[: summary.index("")]  # the summary table: one line per rule
    assert [line.split("|")[1].strip() for line in summary[2:]] == list(RULES)
    assert (out / "report.csv").is_file() and list(out.glob("report*.png"))
    # The report has transfer measurements of every rule but bp, whose cells show "–".
    with (out / "report.csv").open() as f:
        measured = {(r["rule"], r["gradient"]) for r in csv.DictReader(f)}
    assert ("bp", "transfer") not in measured and ("bp", "exact") in measured
    assert all((rule, "transfer") in measured for rule in RULES if rule != "bp")
    for attack in ("fgsm", "pgd-3"):  # its table: a row per rule, a column per source and eps
        at = lines.index(
            next(x for x in lines if x.startswith("### ") and x.endswith(f"· {attack} Linf"))
        )
        header = lines[at + 2]
        columns = [c.strip() for c in header.strip("|").split("|")]
        transfer = [i for i, c in enumerate(columns) if "transfer" in c]
        assert transfer, header
        for rule in RULES:
            row = next(x for x in lines[at:] if x.startswith(f"| {rule} |"))
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert all((cells[i] == "–") == (rule == "bp") for i in transfer), row

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


def test_replaced_checkpoints_rerun_their_fit_and_what_consumed_them(
    capsys, monkeypatch, tmp_path, digits_grid
):
    """A fit whose checkpoint was replaced or deleted after it finished is not done: it says so
    and runs again, and so does what consumed a checkpoint that now differs (its attack, the
    attacks whose transfer surrogate is bp's, the report). Each checkpoint is hashed once."""
    from sslr.grid import stages as grid_stages
    from sslr.grid.markers import sha256

    out, _ = digits_grid
    tuned = out / "resnet18"

    def marker(*parts: str) -> dict:
        return json.loads(tuned.joinpath(*parts, "done.json").read_text())

    before = {rule: marker(rule) for rule in RULES}
    ckpt = {rule: out / before[rule]["checkpoint"] for rule in RULES}
    pretrain = marker("pretrain")
    # usf's checkpoint replaced by frsf's (its marker left as it was) and frsf's gone.
    shutil.copyfile(ckpt["frsf"], ckpt["usf"])
    copied = sha256(ckpt["usf"])
    ckpt["frsf"].rename(tmp_path / "frsf.ckpt")
    # bp's replaced by the pretrained one and its marker updated to match (a bp fine-tune that
    # ran again, its grid stopped before the attacks): bp's fit is done, what consumed it not.
    ckpt["bp"].rename(tmp_path / "bp.ckpt")
    shutil.copyfile(out / pretrain["checkpoint"], ckpt["bp"])
    (tuned / "bp" / "done.json").write_text(
        json.dumps({**before["bp"], "sha256": pretrain["sha256"]})
    )

    def said(rule: str, again: str) -> str:
        name = f"resnet18/{rule}/checkpoints/best.ckpt"
        was = f"sha256 {before[rule]['sha256'][:12]} recorded"
        if rule == "frsf":
            return f"{name} is missing ({was}): {again}"
        return f"{name} changed since the stage finished ({was}, {copied[:12]} now): {again}"

    # A dry run (the same decisions) says what would run and writes nothing.
    written = files(out)
    code, stages = grid(capsys, "--config", str(DEBUG_GRID), "--out", str(out), "--dry-run")
    assert code == 0 and files(out) == written
    for rule in ("usf", "frsf"):
        assert stages[f"finetune resnet18/{rule}"] == [said(rule, "would run the stage again")]
    refits = {"finetune resnet18/usf", "finetune resnet18/frsf"}
    assert ran(stages) == {*refits, *(f"attack resnet18/{r}" for r in RULES), "report"}

    # frsf's and bp's checkpoints back: usf's fit, its attack and the report run again.
    (tmp_path / "frsf.ckpt").rename(ckpt["frsf"])
    (tmp_path / "bp.ckpt").rename(ckpt["bp"])
    (tuned / "bp" / "done.json").write_text(json.dumps(before["bp"]))
    hashed: list[str] = []

    def counted(path: Path) -> str:
        hashed.append(Path(path).resolve().relative_to(out.resolve()).as_posix())
        return sha256(path)

    monkeypatch.setattr(grid_stages, "sha256", counted)
    code, stages = grid(capsys, "--config", str(DEBUG_GRID), "--out", str(out))
    assert code == 0, grid.err
    assert ran(stages) == {"finetune resnet18/usf", "attack resnet18/usf", "report"}
    assert stages["finetune resnet18/usf"][0] == said("usf", "running the stage again")
    usf = marker("usf")
    # Each checkpoint hashed once: the five found, and the one the refit wrote.
    found = [pretrain["checkpoint"], *(before[rule]["checkpoint"] for rule in RULES)]
    assert collections.Counter(hashed) == collections.Counter([*found, usf["checkpoint"]])

    # The markers hold the hash of the file on disk, the attack and the report what they read.
    assert usf["sha256"] == sha256(out / usf["checkpoint"]) != copied
    assert usf["inputs"]["start"] == pretrain["sha256"]
    attack = marker("usf", "attack")["inputs"]
    assert attack["checkpoint"] == usf["sha256"] and attack["surrogate"] == before["bp"]["sha256"]
    report = json.loads((out / "done.json").read_text())["inputs"]
    after = {**before, "usf": usf}
    assert [row[:3] for row in report] == [["resnet18", r, after[r]["sha256"]] for r in RULES]

    # And now every stage is done.
    code, stages = grid(capsys, "--config", str(DEBUG_GRID), "--out", str(out))
    assert code == 0 and len(stages) == 10 and not ran(stages)


def test_dry_run_prints_the_commands_and_writes_nothing(capsys, tmp_path):
    code = main(["grid", "--config", str(DEBUG_GRID), "--out", "g", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("would run") == 9 and "would write" in out
    assert out.count("sslr fit ") == 5 and out.count("sslr attack ") == 4
    assert "--model.rule brsf" in out and "--suite.surrogate_ckpt" in out
    # bp's attack runs no transfer (its surrogate is bp itself) and reads no surrogate.
    attacks = [line for line in out.splitlines() if line.startswith("    sslr attack ")]
    bp = [line for line in attacks if "--model.rule bp " in line]
    assert len(bp) == 1 and "transfer" not in bp[0] and "--suite.surrogate_ckpt" not in bp[0]
    assert '--suite.gradients \'["rule", "exact", "eot"]\'' in bp[0]
    others = [line for line in attacks if line not in bp]
    assert len(others) == 3 and all("--suite.surrogate_ckpt" in line for line in others)
    assert all('"eot", "transfer"]' in line for line in others)
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
    seeds = len(grid.get("seeds", [0]))  # each fine-tuning and its attack once per seed
    stages = len(grid["backbones"]) * (1 + 2 * len(grid["rules"]) * seeds)
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
        ({"base_config": BASE, "backbones": ["resnet18"], "rules": ["bp", "usf"], "attack": {"suite": {"gradients": ["transfer"]}}}, "add rule or exact for bp's row"),
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
        # transfer from bp's model: not on bp itself (its own white-box examples).
        gradients = {"rule", "exact"} | (set() if rule == "bp" else {"transfer"})
        assert {r["gradient"] for r in rows if r["attack"] != "worst"} == gradients
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


# --------------------------------------------------------------------------- launchers

TWO_RULES = ("bp", "usf")


def two_rule_grid(folder: Path, **extra) -> Path:
    """The digits debug grid with bp and usf only (its configs by absolute path)."""
    spec = yaml.safe_load(DEBUG_GRID.read_text())
    here = DEBUG_GRID.parent
    spec["base_config"] = str((here / spec["base_config"]).resolve())
    spec["overlays"] = [
        str((here / o).resolve()) if isinstance(o, str) else o for o in spec["overlays"]
    ]
    path = folder / "two_rules.yaml"
    path.write_text(yaml.safe_dump({**spec, "rules": list(TWO_RULES), **extra}))
    return path


def report_rows(out: Path, rules=TWO_RULES) -> list[dict]:
    """report.csv's rows of ``rules``, without the run folder (the grids' folders differ)."""
    with (out / "report.csv").open() as f:
        return [
            {k: v for k, v in r.items() if k != "run_dir"}
            for r in csv.DictReader(f)
            if r["rule"] in rules
        ]


@contextlib.contextmanager
def this_checkout():
    """The jobs (processes: they inherit the environment) import this checkout's sslr, the one
    the tests import, whatever the interpreter's site-packages would give from their folder."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([old] if old else [])])
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory) -> tuple[Path, Path, str]:
    """The two-rule debug grid through --launcher local --max-parallel 2 (about 1.5 minutes):
    its grid file, its folder and the submitting command's output."""
    folder = tmp_path_factory.mktemp("local_grid")
    path, out = two_rule_grid(folder), folder / "grid"
    text = io.StringIO()
    with contextlib.redirect_stdout(text), this_checkout():
        args = ["--launcher", "local", "--max-parallel", "2"]
        code = main(["grid", "--config", str(path), "--out", str(out), *args])
    assert code == 0, text.getvalue()[-2000:]
    return path, out, text.getvalue()


def test_the_local_launcher_ends_with_the_inline_report(capsys, digits_grid, local_grid):
    """Each stage its own process, the fine-tunes and then the attacks two at once: the same
    report.csv values as the inline grid (bp's and usf's rows: the same seeds and budgets)."""
    inline, _ = digits_grid
    path, out, said = local_grid
    assert report_rows(out) == report_rows(inline)
    stages = progress(said)
    labels = ["pretrain resnet18/bp", *(f"{s} resnet18/{r}" for s in ("finetune", "attack") for r in TWO_RULES), "report"]  # fmt: skip
    assert list(stages) == labels
    for label in labels:  # a job each, its log named; then ran
        assert re.fullmatch(r"running \(job \d+, log .+_0_log\.err\)", stages[label][0])
        assert stages[label][-1].startswith("ran in ")
        record = json.loads(
            (out / ".grid" / label.replace(" ", "-").replace("/", "-") / "job.json").read_text()
        )
        assert record["state"] == "done" and Path(record["stdout"]).is_file()
    # Independent stages at once: usf's fine-tune started before bp's had finished.
    lines = [line for line in said.splitlines() if LINE.match(line)]
    started = lines.index(next(x for x in lines if "finetune resnet18/usf: running" in x))
    assert started < lines.index(next(x for x in lines if "finetune resnet18/bp: ran" in x))
    # The attack of usf waited for bp's fine-tune (its transfer surrogate).
    attack = lines.index(next(x for x in lines if "attack resnet18/usf: running" in x))
    assert attack > lines.index(next(x for x in lines if "finetune resnet18/bp: ran" in x))
    assert re.search(r"ETA \d+ s", said)

    # Again: every stage is skipped, no job is submitted, no file written.
    before = files(out)
    with this_checkout():
        code, stages = grid(capsys, "--config", str(path), "--out", str(out), "--launcher", "local")
    assert code == 0 and len(stages) == 6 and not ran(stages)
    assert files(out) == before
    code, _ = grid(capsys, "--config", str(path), "--out", str(out), "--status")
    status = [line for line in grid.out.splitlines() if line.startswith("sslr grid: ")]
    assert code == 0 and len(status) == 6 and all(": done " in line for line in status)


def test_a_killed_job_resumes_and_a_second_grid_is_refused(capsys, local_grid):
    """usf's fine-tune interrupted after its last.ckpt: its job, killed (SIGKILL) while it
    resumes, fails alone with its log named; a second grid meanwhile is refused with one line;
    --status says failed; sslr grid again resumes it from last.ckpt and rebuilds the report."""
    import signal
    import subprocess
    import sys
    import time

    from sslr.grid.launch import _lock_holder

    path, out, _ = local_grid
    before = report_rows(out)
    usf = out / "resnet18" / "usf"
    (usf / "done.json").unlink()
    lock = out / ".grid" / "finetune-resnet18-usf"
    args = ["grid", "--config", str(path), "--out", str(out), "--launcher", "local"]
    with open("submitter.log", "w") as log, this_checkout():
        submitter = subprocess.Popen(
            [sys.executable, "-m", "sslr", *args], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        holder = None
        for _ in range(1200):  # the job holds its stage's lock while it runs
            holder = _lock_holder(lock)
            if holder or submitter.poll() is not None:
                break
            time.sleep(0.05)
        assert holder and holder.startswith("process "), Path("submitter.log").read_text()
        job = int(holder.split()[1])
        # Frozen at once: the resumed fit has little left to do, and left running it could end
        # (and write done.json) while the second grid below starts, on a fast machine.
        os.kill(job, signal.SIGSTOP)
        assert main(args) == 2  # the submitter holds the grid folder
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is in use by" in err[0]
        os.kill(job, signal.SIGKILL)
        assert submitter.wait(timeout=120) == 2
    finally:
        if submitter.poll() is None:
            submitter.kill()
    said = Path("submitter.log").read_text()
    errors = [line for line in said.splitlines() if line.startswith("sslr grid: error: ")]
    assert len(errors) == 1 and "finetune resnet18/usf failed (log: " in errors[0], said
    assert not (usf / "done.json").exists()

    code, _ = grid(capsys, "--config", str(path), "--out", str(out), "--status")
    status = dict(line.removeprefix("sslr grid: ").split(": ", 1) for line in grid.out.splitlines())
    assert code == 0 and status["finetune resnet18/usf"].startswith("failed (log: ")
    assert status["pretrain resnet18/bp"].startswith("done ")
    assert status["attack resnet18/usf"].startswith("waiting for finetune resnet18/usf")

    with this_checkout():
        code, stages = grid(capsys, *args[1:])
    assert code == 0, grid.err
    assert ran(stages) == {"finetune resnet18/usf", "report"}  # its checkpoint is the same
    record = json.loads((lock / "job.json").read_text())
    assert "finetune resnet18/usf: resuming from last.ckpt" in Path(record["stdout"]).read_text()
    assert (usf / "done.json").is_file() and report_rows(out) == before


SLURM = {
    "partition": "gpu",
    "account": "proj42",
    "array_parallelism": 3,
    "sbatch": {"qos": "high", "constraint": "a100"},
    "setup": ["module load cuda/12.4"],
    "finetune": {"gpus": 1, "cpus": 16, "mem": "64G", "time": 90},
}


def test_slurm_jobs_get_the_grid_files_sbatch_parameters(capsys, monkeypatch, tmp_path):
    """The sbatch text submitit would submit (its own builder: no cluster here): the grid
    file's partition, account, resources per kind, array limit and extra lines; a fit on 2
    devices asks for 2 GPUs and a task per GPU. A dry run lists the jobs and writes nothing."""
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    from sslr.grid import load_grid
    from sslr.grid.launch import slurm_executor, stage_devices
    from sslr.grid.stages import GridRun

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # "srun" found
    finetune = {"epochs": 1, "args": ["--trainer.devices", "2"]}
    path = two_rule_grid(tmp_path, slurm=SLURM, finetune=finetune)
    spec = load_grid(path, out=tmp_path / "g")
    devices = stage_devices(GridRun(spec), "finetune")
    assert devices == 2 and stage_devices(GridRun(spec), "pretrain") == 1
    executor = slurm_executor(spec, "finetune", devices, tmp_path / "jobs")
    text = executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in [
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj42",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64G",
        "#SBATCH --time=90",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=a100",
        "#SBATCH --signal=USR2@90",
        "module load cuda/12.4",
    ]:
        assert line in text.splitlines(), (line, text)
    # The fine-tunes ready together go as one array, at most array_parallelism at once.
    array = _make_sbatch_string("x", executor.folder, map_count=5, **executor.parameters)
    assert "#SBATCH --array=0-4%3" in array.splitlines()
    # The report: the defaults (no GPU), the same partition.
    report = slurm_executor(spec, "report", 0, tmp_path / "jobs")
    text = report._make_submission_file_text("x", "uid").splitlines()
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --time=30" in text
    assert not any("gpus" in line for line in text)

    code = main(["grid", "--config", str(path), "--out", "g", "--launcher", "slurm", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "sslr grid: jobs (--launcher slurm):" in out
    jobs = [line.strip() for line in out.splitlines() if line.startswith("    ") and "[" in line]
    assert (
        "pretrain resnet18/bp [partition gpu, account proj42, 1 GPU, 1 task, 8 CPU per task, "
        "mem 32G, 240 min]" in jobs
    )
    # The attack rebuilds the model with finetune.args: its 2 devices shard the attack.
    assert (
        "attack resnet18/usf after finetune resnet18/usf, finetune resnet18/bp [partition gpu, "
        "account proj42, 2 GPU, 2 task, 4 CPU per task, mem 32G, 240 min]" in jobs
    )
    assert any(
        line.startswith("finetune resnet18/usf after pretrain resnet18/bp [partition gpu, "
        "account proj42, 2 GPU, 2 task, 8 CPU per task, mem 64G, 90 min]") for line in jobs
    )  # fmt: skip
    assert not (tmp_path / "g").exists()


def test_a_stage_job_is_requeued_as_itself():
    """On a time limit or preemption submitit pickles what checkpoint() returns and runs it
    again: the same stage of the same grid, which then resumes its fit from last.ckpt."""
    import pickle

    import submitit

    from sslr.grid.launch import StageJob

    job = StageJob("/grids/g.yaml", "/runs/g", "finetune resnet18/usf")
    again = job.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function == job and again.args == () and again.kwargs == {}
    assert pickle.loads(pickle.dumps(again.function)) == job


def test_a_preempted_stage_job_is_requeued_and_resumes_its_fit(tmp_path):
    """A fine-tune job signalled as a preempted SLURM job is (USR2, mid-fit, after its first
    last.ckpt): submitit calls StageJob.checkpoint and requeues it (its LocalExecutor restarts
    the job as SLURM would), the stage resumes from last.ckpt and ends with the metrics of a
    fine-tune never interrupted."""
    import signal
    import time

    import submitit
    import torch

    from sslr.grid.launch import StageJob, _lock_holder, run_stage

    finetune = {"epochs": 3, "args": ["--optimizer.lr", "0.01"]}
    path = two_rule_grid(tmp_path, rules=["bp"], finetune=finetune)
    out, reference = tmp_path / "grid", tmp_path / "reference"
    label = "finetune resnet18/bp"
    with contextlib.redirect_stdout(io.StringIO()):
        run_stage(str(path), str(out), "pretrain resnet18/bp")
        shutil.copytree(out, reference)
        run_stage(str(path), str(reference), label)  # never interrupted
    expected = json.loads((reference / "resnet18" / "bp" / "done.json").read_text())

    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=60)
    with this_checkout():
        job = executor.submit(StageJob(str(path), str(out), label))
    last = out / "resnet18" / "bp" / "checkpoints" / "last.ckpt"
    lock = out / ".grid" / "finetune-resnet18-bp"
    pid = None
    for _ in range(12000):  # 10 ms polls: the job's process, then its first last.ckpt
        holder = _lock_holder(lock)
        if holder:
            pid = int(holder.split()[1])
        if pid and last.is_file() or job.done():
            break
        time.sleep(0.01)
    assert pid and last.is_file(), job.stderr()
    os.kill(pid, signal.SIGSTOP)  # held after epoch 1: the signal lands inside the fit
    epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    os.kill(pid, signal.SIGUSR2)  # what SLURM sends a job it preempts (submitit's --signal)
    os.kill(pid, signal.SIGCONT)
    assert job.result() == {"ran": 1, "label": label}
    log = (job.stdout() or "") + (job.stderr() or "")
    assert "this job is preempted" in log and "Requeued job" in log, log[-3000:]
    assert log.count(f"{label}: running") == 1 and f"{label}: resuming from last.ckpt" in log
    assert epoch < 2  # it stopped with epochs still to run
    done = json.loads((out / "resnet18" / "bp" / "done.json").read_text())
    assert done["metrics"] == expected["metrics"]


@pytest.mark.parametrize(
    ("args", "slurm", "message"),
    [
        (["--launcher", "kubernetes"], None, "unknown launcher 'kubernetes'; known launchers: inline, local, slurm"),
        (["--launcher", "local", "--max-parallel", "0"], None, "--max-parallel must be at least 1"),
        (["--launcher", "slurm"], None, "--launcher slurm needs a slurm: section"),
        (["--launcher", "slurm"], {"partion": "gpu"}, "unknown key 'slurm.partion'; known keys: partition, account"),
        (["--launcher", "slurm"], {"finetune": {"gpu": 2}}, "unknown key 'slurm.finetune.gpu'; known keys: gpus, cpus, mem, time"),
        (["--launcher", "slurm"], {"attack": {"time": "1h"}}, "slurm.attack.time must be an integer >= 1"),
        (["--launcher", "slurm"], {"sbatch": ["--qos=high"]}, "slurm.sbatch must be a mapping"),
        (["--launcher", "slurm"], {"partition": "gpu"}, "--launcher slurm: sbatch and srun not found"),
        (["--launcher", "slurm", "--max-parallel", "4"], {}, "--max-parallel is for --launcher local"),
    ],
)  # fmt: skip
def test_bad_launcher_settings_fail_with_one_line(capsys, tmp_path, args, slurm, message):
    path = two_rule_grid(tmp_path, **({} if slurm is None else {"slurm": slurm}))
    assert main(["grid", "--config", str(path), "--out", "g", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslr grid: error: "), err
    assert message in err[0]
    assert sorted(tmp_path.iterdir()) == [path]  # nothing submitted, nothing written


# --------------------------------------------------------------------------- several seeds

SEEDS_GRID = ROOT / "configs" / "grid" / "digits_seeds.yaml"
# The smallest suite that still has a random subset and a transfer surrogate per seed.
TINY_SUITE = {
    "attacks": ["fgsm"],
    "eps": [0, "8/255"],
    "gradients": ["rule", "exact", "transfer"],
    "n_samples": 8,
    "batch_size": 8,
}


def seeds_grid(folder: Path, seeds, **extra) -> Path:
    """The two-rule debug grid (bp, usf) with ``seeds: seeds`` instead of its ``seed: 0``."""
    spec = yaml.safe_load(two_rule_grid(folder).read_text())
    del spec["seed"]
    path = folder / "seeds.yaml"
    path.write_text(yaml.safe_dump({**spec, "seeds": list(seeds), **extra}))
    return path


def commands(output: str) -> dict[str, dict[str, str]]:
    """A dry run's commands per stage label: each option's value (the last given), and the
    grid's CSV logger's folder (its save_dir, name and version) as ``logger``."""
    import shlex

    found: dict[str, dict] = {}
    label = None
    for line in output.splitlines():
        match = LINE.match(line)
        if match:
            label = match.group(3)
        elif line.startswith("    sslr ") and label:
            words = shlex.split(line.strip())[2:]
            options = {}
            for key, value in zip(words, words[1:], strict=False):
                if key.startswith("--"):
                    options[key] = value
            loggers = [v for k, v in zip(words, words[1:], strict=False) if "CSVLogger" in v]
            options["logger"] = yaml.safe_load(loggers[0])["trainer"]["logger"][0]["init_args"]
            found[label] = options
    return found


def test_seeds_are_read_from_the_grid_file(tmp_path):
    """`seeds: [...]` gives each fine-tuning a run per seed (its own folder and label); the
    first seed is `seed`, the split's and the pretraining's; one seed keeps today's layout."""
    from sslr.grid import load_grid

    grid = load_grid(seeds_grid(tmp_path, [2, 0, 5]), out=tmp_path / "g")
    assert grid.seeds == (2, 0, 5) and grid.seed == 2 and grid.several_seeds
    assert grid.run_dir("resnet18", "usf", 5) == tmp_path / "g" / "resnet18" / "usf" / "seed5"
    assert grid.label("finetune", "resnet18", "usf", 5) == "finetune resnet18/usf seed 5"
    assert grid.label("attack", "resnet18", "bp", 0) == "attack resnet18/bp seed 0"
    assert grid.label("pretrain", "resnet18", "bp") == "pretrain resnet18/bp"
    assert grid.attack_suite("usf", 5)["seed"] == 5 and grid.attack_suite("bp", 0)["seed"] == 0
    for seeds in ([3], None):
        path = seeds_grid(tmp_path, [3]) if seeds else two_rule_grid(tmp_path, seed=3)
        one = load_grid(path, out=tmp_path / "g")
        assert one.seeds == (3,) and one.seed == 3 and not one.several_seeds
        assert one.run_dir("resnet18", "usf", 3) == tmp_path / "g" / "resnet18" / "usf"
        assert one.label("finetune", "resnet18", "usf", 3) == "finetune resnet18/usf"
        assert "seed" not in one.attack_suite("usf", 3)  # attack.suite.seed, as before


def test_one_seed_in_a_list_is_the_grid_of_one_seed(capsys, tmp_path):
    """`seeds: [0]` runs exactly what `seed: 0` runs: the same stages and commands."""
    dry = []
    for path in (two_rule_grid(tmp_path), seeds_grid(tmp_path, [0])):
        assert main(["grid", "--config", str(path), "--out", "g", "--dry-run"]) == 0
        dry.append(capsys.readouterr().out)
    assert dry[0] == dry[1] and "seed0" not in dry[0] and "--suite.seed" not in dry[0]
    assert len(commands(dry[0])) == 5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"seed": 0, "seeds": [0, 1]}, "seed and seeds are both given: give seed: k or seeds: [k1, k2, ...]"),
        ({"seeds": []}, "seeds must be a non-empty list of integers >= 0, e.g. [0, 1, 2], got []"),
        ({"seeds": 1}, "seeds must be a non-empty list of integers >= 0, e.g. [0, 1, 2], got 1"),
        ({"seeds": [0, 1, 0]}, "seeds lists 0 twice"),
        ({"seeds": [0, "1"]}, "seeds must be a non-empty list of integers >= 0, e.g. [0, 1, 2], got [0, '1']"),
        ({"seeds": [0, 1.5]}, "seeds must be a non-empty list of integers >= 0"),
        ({"seeds": [True, 2]}, "seeds must be a non-empty list of integers >= 0"),
        ({"seeds": [-1, 2]}, "seeds must be a non-empty list of integers >= 0"),
        ({"seeds": [0, 1], "attack": {"suite": {"seed": 3}}}, "attack.suite.seed is set by the grid when it has several seeds"),
    ],
)  # fmt: skip
def test_bad_seeds_fail_with_one_line(capsys, tmp_path, extra, message):
    spec = {"base_config": BASE, "backbones": ["resnet18"], "rules": ["bp", "usf"], **extra}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["grid", "--config", str(path), "--out", "g"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sslr grid: error: "), err
    assert message in err[0]
    assert not (tmp_path / "g").exists()


def test_a_dry_run_of_several_seeds_lists_a_run_per_seed(capsys, tmp_path):
    """digits_seeds.yaml (bp, usf; seeds 0, 1): one pretraining (the first seed), then per seed
    the fine-tunes and their attacks, with the seed's --seed_everything, --model.seed,
    --data.seed and --suite.seed, its seed<k>/ folder and bp's model of the same
    seed as the transfer surrogate; the launchers' graph waits per seed. Nothing is written."""
    from sslr.grid import load_grid
    from sslr.grid.launch import stage_graph
    from sslr.grid.stages import stage_folder

    code = main(["grid", "--config", str(SEEDS_GRID), "--out", "g", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("would run") == 9 and "would write g/report.md" in out
    assert out.splitlines()[0].endswith("resnet18 x bp, usf x seeds 0, 1 -> g (10 stages, dry run)")
    found = commands(out)
    order = ["pretrain resnet18/bp"] + [
        f"{s} resnet18/{r} seed {k}" for k in (0, 1) for s in ("finetune", "attack") for r in TWO_RULES
    ]  # fmt: skip
    assert list(found) == order
    pretrain = found["pretrain resnet18/bp"]
    assert pretrain["--seed_everything"] == pretrain["--model.seed"] == "0"
    assert pretrain["--data.seed"] == "0"
    assert pretrain["logger"] == {"name": "resnet18", "save_dir": "g", "version": "pretrain"}
    for k in (0, 1):
        for rule in TWO_RULES:
            run = f"g/resnet18/{rule}/seed{k}"
            fit = found[f"finetune resnet18/{rule} seed {k}"]
            assert fit["--model.rule"] == rule
            assert fit["--seed_everything"] == fit["--model.seed"] == str(k)
            assert fit["--data.seed"] == str(k)  # the order, augmentation, validation split
            assert fit["--model.pretrained_ckpt"] == "g/resnet18/pretrain/checkpoints/best.ckpt"
            assert fit["logger"] == {"name": rule, "save_dir": "g/resnet18", "version": f"seed{k}"}
            attack = found[f"attack resnet18/{rule} seed {k}"]
            assert attack["--seed_everything"] == attack["--model.seed"] == str(k)
            assert attack["--data.seed"] == attack["--suite.seed"] == str(k)
            assert attack["--ckpt_path"] == f"{run}/checkpoints/best.ckpt"
            assert attack["--out_dir"] == run
            assert attack["logger"] == {"name": f"seed{k}", "save_dir": f"g/resnet18/{rule}", "version": "attack"}  # fmt: skip
            surrogate = attack.get("--suite.surrogate_ckpt")
            expected = None if rule == "bp" else f"g/resnet18/bp/seed{k}/checkpoints/best.ckpt"
            assert surrogate == expected
    assert list(tmp_path.iterdir()) == []

    grid = load_grid(SEEDS_GRID, out=tmp_path / "g")
    after = {stage.label: stage.after for stage in stage_graph(grid)}
    assert list(after) == [*order, "report"]
    assert after["finetune resnet18/usf seed 1"] == ("pretrain resnet18/bp",)
    assert after["attack resnet18/usf seed 1"] == (
        "finetune resnet18/usf seed 1",
        "finetune resnet18/bp seed 1",
    )
    assert after["attack resnet18/bp seed 0"] == ("finetune resnet18/bp seed 0",)
    names = {stage_folder(grid.out, label).name for label in after}
    assert "attack-resnet18-usf-seed-1" in names and len(names) == len(after)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", name) for name in names)


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """A 2-seed grid of bp and usf with the tiniest attack suite, run once for the module:
    its grid file, its folder and the output."""
    folder = tmp_path_factory.mktemp("seeds_grid")
    path, out = seeds_grid(folder, [0, 1], attack={"suite": TINY_SUITE}), folder / "grid"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        code = main(["grid", "--config", str(path), "--out", str(out)])
    assert code == 0, text.getvalue()[-2000:]
    return path, out, text.getvalue()


def test_several_seeds_run_each_fine_tune_per_seed_then_skip(capsys, seeds_run):
    """Every fine-tune and attack ran once per seed into its seed<k>/ folder, with that seed
    (its config.yaml, the checkpoint's hyperparameters, the attack's suite and surrogate); the
    seeds give different weights but the same test images; sslr report finds every run; a second run skips every stage and
    writes nothing, and --status says each one is done."""
    import torch

    from sslr.grid.launch import run_stage
    from sslr.grid.markers import sha256
    from sslr.report_records import find_run_dirs

    path, out, said = seeds_run
    stages = progress(said)
    labels = ["pretrain resnet18/bp"] + [
        f"{s} resnet18/{r} seed {k}" for k in (0, 1) for s in ("finetune", "attack") for r in TWO_RULES
    ]  # fmt: skip
    assert list(stages) == [*labels, "report"] and ran(stages) == {*labels, "report"}
    pretrain = json.loads((out / "resnet18" / "pretrain" / "done.json").read_text())
    assert pretrain["inputs"]["seed"] == 0 and not (out / "resnet18" / "bp" / "done.json").exists()
    fits = {}
    for k in (0, 1):
        for rule in TWO_RULES:
            run_dir = out / "resnet18" / rule / f"seed{k}"
            done = json.loads((run_dir / "done.json").read_text())
            assert done["checkpoint"].startswith(f"resnet18/{rule}/seed{k}/checkpoints/")
            assert done["sha256"] == sha256(out / done["checkpoint"])
            assert done["inputs"]["seed"] == k and "data_seed" not in done["inputs"]
            assert done["inputs"]["start"] == pretrain["sha256"]
            fits[rule, k] = done
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
            assert config["seed_everything"] == k
            assert config["model"]["init_args"]["seed"] == k
            assert config["data"]["init_args"]["seed"] == k
            hparams = torch.load(out / done["checkpoint"], map_location="cpu", weights_only=False)
            assert hparams["hyper_parameters"]["seed"] == k
            assert hparams["datamodule_hyper_parameters"]["seed"] == k
            fits[rule, k, "weights"] = hparams["state_dict"]
            attack = json.loads((run_dir / "attack" / "done.json").read_text())
            assert attack["inputs"]["checkpoint"] == done["sha256"]
            assert attack["inputs"]["suite"]["seed"] == k
            suite = yaml.safe_load((run_dir / "suite.yaml").read_text())
            assert suite["seed"] == k and suite["n_samples"] == 8
            rows = robustness(run_dir)
            assert all(int(r["n"]) == 8 for r in rows)
            gradients = {r["gradient"] for r in rows if r["attack"] == "fgsm"}
            assert gradients == ({"rule", "exact"} | (set() if rule == "bp" else {"transfer"}))
    for k in (0, 1):  # usf's transfer surrogate: bp's model of the same seed
        attack = json.loads((out / "resnet18/usf" / f"seed{k}" / "attack/done.json").read_text())
        assert attack["inputs"]["surrogate"] == fits["bp", k]["sha256"]
        suite = yaml.safe_load((out / "resnet18/usf" / f"seed{k}" / "suite.yaml").read_text())
        assert suite["surrogate_ckpt"].endswith(f"resnet18/bp/seed{k}/checkpoints/best.ckpt")
    for rule in TWO_RULES:  # the two seeds' fine-tunes are two models, bp's too
        assert fits[rule, 0]["sha256"] != fits[rule, 1]["sha256"]
        one, two = fits[rule, 0, "weights"], fits[rule, 1, "weights"]
        assert any(not torch.equal(one[k], two[k]) for k in one if one[k].is_floating_point())
    # ... attacked on the same test images where the suite seed draws the same subset: the
    # subset is drawn from the test split, which data.seed leaves alone.
    from sslr.data import Digits

    tests = []
    for k in (0, 1):
        dm = Digits(seed=k)
        dm.setup("test")
        dataset = dm.test_dataloader().dataset
        tests.append(torch.stack([torch.as_tensor(dataset[i][0]) for i in range(len(dataset))]))
    assert torch.equal(*tests)
    # The report's run folders: the four seed<k>/ folders (and the pretraining), their
    # attack/ folders part of them.
    found = {p.resolve().relative_to(out.resolve()).as_posix() for p in find_run_dirs([out])}
    runs = {f"resnet18/{r}/seed{k}" for r in TWO_RULES for k in (0, 1)}
    assert found == {*runs, "resnet18/pretrain"}
    assert (out / "report.md").is_file() and (out / "report.csv").is_file()
    report = json.loads((out / "done.json").read_text())["inputs"]
    assert [(row[0], row[1], row[2], row[-1]) for row in report] == [
        ("resnet18", r, fits[r, k]["sha256"], k) for k in (0, 1) for r in TWO_RULES
    ]

    # Again: every stage skipped, not one file written; --status: each stage done.
    before = files(out)
    code, stages = grid(capsys, "--config", str(path), "--out", str(out))
    assert code == 0 and list(stages) == [*labels, "report"] and not ran(stages)
    assert files(out) == before
    code, _ = grid(capsys, "--config", str(path), "--out", str(out), "--status")
    status = dict(line.removeprefix("sslr grid: ").split(": ", 1) for line in grid.out.splitlines())
    assert code == 0 and list(status) == [*labels, "report"]
    assert all(state.startswith("done ") for state in status.values())
    # A launcher's job of one seed's stage: done, so skipped; a label without its seed is none.
    assert run_stage(str(path), str(out), "attack resnet18/usf seed 1")["ran"] == 0
    with pytest.raises(Exception, match="no stage 'attack resnet18/usf' in the grid"):
        run_stage(str(path), str(out), "attack resnet18/usf")
    assert files(out) == before


def test_a_folder_of_the_other_seed_layout_is_refused(capsys, tmp_path, seeds_run):
    """A grid of one seed on a folder of several seeds' runs (or the reverse) fails with one
    line before any stage: the runs would nest in each other's folders."""
    _, out, _ = seeds_run
    before = files(out)
    assert main(["grid", "--config", str(two_rule_grid(tmp_path)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds runs of a grid with several seeds (seed0/, seed1/)" in err[0]
    assert files(out) == before

    single = tmp_path / "single" / "resnet18" / "bp"
    single.mkdir(parents=True)
    (single / "config.yaml").write_text("seed_everything: 0\n")
    path = seeds_grid(tmp_path, [0, 1])
    assert main(["grid", "--config", str(path), "--out", str(tmp_path / "single")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds the run of a grid with one seed" in err[0]
    assert sorted(p.name for p in single.iterdir()) == ["config.yaml"]


def test_the_local_launcher_runs_at_most_max_parallel_jobs_at_once(tmp_path, monkeypatch):
    """Stages ready together (every fine-tune of a four-rule grid) start no more than
    --max-parallel at a time; fake jobs stand in for the processes."""
    from sslr.grid import launch
    from sslr.grid.spec import load_grid

    path = two_rule_grid(tmp_path, rules=["bp", "fa", "usf", "frsf", "brsf"])
    grid = load_grid(path, tmp_path / "grid")
    driver = launch.Driver(grid, path, "local", 2, echo=lambda line: None)
    running: set[str] = set()
    most = [0]

    class Job:
        job_id = "0"
        paths = type("Paths", (), {"stderr": "job.err"})

        def __init__(self, label):
            self.label, self.polls = label, 0

        def done(self):
            self.polls += 1
            if self.polls < 2:
                return False
            running.discard(self.label)
            return True

    def submit(batch):
        jobs = [Job(stage.label) for stage, _, _ in batch]
        running.update(job.label for job in jobs)
        most[0] = max(most[0], len(running))
        return jobs

    def check(stage, state, _running):
        if all(state[a] == "done" for a in stage.after):
            state[stage.label] = "ready"

    def finished(state, item):
        state[item.stage.label] = "done"

    monkeypatch.setattr(launch, "POLL_S", 0)
    monkeypatch.setattr(launch, "check_layout", lambda grid: None)
    monkeypatch.setattr(driver.runner.commands, "check", lambda: None)
    monkeypatch.setattr(driver, "_submit", submit)
    monkeypatch.setattr(driver, "_check", check)
    monkeypatch.setattr(driver, "_finished", finished)
    monkeypatch.setattr(driver, "_say", lambda *args, **kwargs: None)
    driver.run()
    assert most[0] == 2  # five fine-tunes ready at once after the pretraining, two at a time
