"""W&B logger: offline, with one notice, exactly when no API key is configured."""

from __future__ import annotations

import logging

from sslr.loggers import WandbLogger, wandb_key_configured


def _no_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc


def test_no_key_means_offline_with_one_notice(monkeypatch, tmp_path, caplog):
    _no_credentials(monkeypatch, tmp_path)
    assert not wandb_key_configured()
    with caplog.at_level(logging.INFO):
        logger = WandbLogger(name="r", project="p", save_dir=str(tmp_path), group="g", tags=["usf"])
    assert logger._offline is True
    notices = [r for r in caplog.records if "no API key" in r.getMessage()]
    assert len(notices) == 1
    assert logger._wandb_init["group"] == "g" and logger._wandb_init["tags"] == ["usf"]


def test_a_key_or_an_explicit_mode_keeps_online(monkeypatch, tmp_path):
    _no_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_key_configured()
    assert WandbLogger(save_dir=str(tmp_path))._offline is False
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password " + "y" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_key_configured()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbLogger(save_dir=str(tmp_path), offline=False)._offline is False
