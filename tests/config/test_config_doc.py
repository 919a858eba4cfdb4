from pathlib import Path

from tools.gen_config_doc import render


def test_config_doc_is_up_to_date():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text(encoding="utf-8")
    assert doc == render(), "docs/config.md is stale: run `python -m tools.gen_config_doc`"
