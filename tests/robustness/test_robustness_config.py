"""SuiteConfig: defaults, validation before any work, and YAML through jsonargparse."""

from __future__ import annotations

import pytest

from sslr.robustness import Attack, GradientSource, Norm, SuiteConfig, evaluate, run_suite


def test_defaults_are_the_documented_ones():
    config = SuiteConfig()
    assert config.attack_kinds == (Attack.FGSM, Attack.PGD)
    assert config.norm_kinds == (Norm.LINF,)
    assert config.eps_for(Norm.LINF) == pytest.approx([k / 255 for k in (0, 2, 8)])
    assert config.eps_for(Norm.L2) == pytest.approx([0.0, 0.5])
    assert config.n_samples == 100 and config.loss == "ce" and config.restarts == 1
    assert config.autoattack_version == "fast" and config.square_backend == "torch"
    # the verdict's large eps is added when asked for
    asked = SuiteConfig(verdict=True)
    assert asked.eps_for(Norm.LINF) == pytest.approx([k / 255 for k in (0, 2, 8, 64)])
    assert config.gradient_sources == (
        GradientSource.RULE,
        GradientSource.EXACT,
        GradientSource.EOT,
    )
    assert config.step_of(Attack.PGD, 8 / 255) == pytest.approx(2.5 * (8 / 255) / 10)
    assert config.step_of(Attack.FGSM, 8 / 255) == pytest.approx(8 / 255)
    assert config.steps_of(Attack.FGSM) == 1
    assert config.steps_of(Attack.SQUARE) == config.queries


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": [0.0, -0.1]}, "eps must be finite and >= 0"),
        ({"eps": [8.0]}, "not in /255 units"),
        ({"eps_l2": [float("nan")]}, "eps_l2 must be finite"),
        (
            {"attacks": ["pgdd"]},
            "known attacks are fgsm, pgd, hag, p2p, dhta, apgd-ce, apgd-dlr, fab-t, square, autoattack",
        ),
        ({"norms": ["l1"]}, "known norms are linf, l2"),
        ({"gradients": ["true"]}, "known gradient sources are rule, exact, eot, transfer"),
        ({"gradients": ["none"]}, "Known gradient sources are rule, exact, eot, transfer"),
        ({"gradients": []}, "gradients is empty"),
        ({"attacks": []}, "attacks is empty"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"eot_samples": 0}, "eot_samples must be a positive integer"),
        ({"queries": -5}, "queries must be a positive integer"),
        ({"n_samples": 0}, "n_samples must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"step_size": 0.0}, "step_size must be > 0"),
        ({"backend": "jax"}, "known backends are torch, art"),
        ({"surrogate_ckpt": "/nonexistent/bp.ckpt"}, "does not exist"),
    ],
)
def test_bad_settings_raise_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SuiteConfig(**kwargs)


def test_square_alone_needs_no_gradient_source():
    assert SuiteConfig(attacks=["square"], gradients=[]).gradient_sources == ()


def test_names_are_case_insensitive_and_deduplicated():
    config = SuiteConfig(attacks=["PGD", "pgd"], norms=["L2"], eps_l2=[0.5, 0.5])
    assert config.attack_kinds == (Attack.PGD,)
    assert config.eps_for(Norm.L2) == (0.5,)


def test_transfer_without_surrogate_raises_before_work(target, test_subset, monkeypatch):
    import sslr.robustness.suite as suite

    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(suite, "draw_subset", no_work)
    monkeypatch.setattr(suite, "attack_cell", no_work)
    monkeypatch.setattr(suite, "run_cells", no_work)
    config = SuiteConfig(gradients=["rule", "transfer"])
    with pytest.raises(ValueError, match="needs a surrogate"):
        run_suite(target, test_subset, config)
    with pytest.raises(ValueError, match="needs a surrogate"):
        evaluate(target, *test_subset, config)


def test_yaml_through_jsonargparse(tmp_path):
    """The lead exposes SuiteConfig as typed init args: jsonargparse must read it from YAML and
    reject bad values at parse time."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--suite", type=SuiteConfig, default=SuiteConfig())
    path = tmp_path / "suite.yaml"
    path.write_text(
        "suite:\n  attacks: [pgd, square]\n  norms: [linf, l2]\n  eps: [0, 0.03]\n"
        "  gradients: [rule, exact]\n  n_samples: 64\n  queries: 50\n"
    )
    parser.add_argument("--config", action="config")
    # ``instantiate`` from jsonargparse 4.49 on, ``instantiate_classes`` before
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    cfg = instantiate(parser.parse_args(["--config", str(path)]))
    suite = cfg.suite
    assert isinstance(suite, SuiteConfig)
    assert suite.attack_kinds == (Attack.PGD, Attack.SQUARE)
    assert suite.eps_for(Norm.LINF) == (0.0, 0.03)
    assert suite.n_samples == 64 and suite.queries == 50
    bad = tmp_path / "bad.yaml"
    bad.write_text("suite:\n  attacks: [pgdd]\n")
    with pytest.raises(Exception, match="pgdd"):
        instantiate(parser.parse_args(["--config", str(bad)]))


def test_epsilons_may_be_written_as_fractions_on_the_command_line():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--suite", type=SuiteConfig, default=SuiteConfig())
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    args = [
        "--suite.eps",
        "[0, 8/255, 0.05]",
        "--suite.eps_l2",
        "[1/2]",
        "--suite.norms",
        "[linf, l2]",
    ]
    suite = instantiate(parser.parse_args(args)).suite
    assert suite.eps_for(Norm.LINF) == (0.0, 8 / 255, 0.05)
    assert suite.eps_for(Norm.L2) == (0.5,)
    with pytest.raises(ValueError, match="'8 over 255' is neither a number nor a fraction"):
        SuiteConfig(eps=[0, "8 over 255"])
    with pytest.raises(ValueError, match="'8/0' is neither"):
        SuiteConfig(eps=["8/0"])
