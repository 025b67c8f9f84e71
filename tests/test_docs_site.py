"""The documentation site (mkdocs.yml, docs/): it builds with `mkdocs build --strict` — a broken link, anchor or
API reference fails — and docs/config.md lists every config key with its true default (the README's short
table too)."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from fedstack.config import Config

ROOT = Path(__file__).resolve().parent.parent
GUIDES = ("own-model", "own-task", "deploy-own-model", "from-flower")


def config_defaults() -> dict:
    """Every key of a run's config, dotted ("server.rounds"), with its default."""
    defaults = {}
    for name, field in Config.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            section = field.annotation()
            for key in field.annotation.model_fields:
                defaults[f"{name}.{key}"] = getattr(section, key)
        else:
            defaults[name] = field.default
    return defaults


def table_rows(text: str) -> dict:
    """The key tables' rows: {key: documented default}; a row naming several keys (`a`, `b` | `1`, `2`) gives each
    its own."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) < 3:
            continue
        keys = re.findall(r"`([^`]+)`", cells[0])
        values = re.findall(r"`([^`]*)`", cells[1])
        assert len(keys) == len(values), line
        rows.update(zip(keys, values))
    return rows


def parsed(value: str):
    return tomllib.loads(f"v = {value}")["v"]


def test_every_config_key_is_in_the_reference_with_its_default():
    rows = table_rows((ROOT / "docs" / "config.md").read_text())
    defaults = config_defaults()
    assert sorted(set(defaults) - set(rows)) == [], "keys of fedstack.config missing from docs/config.md"
    assert sorted(set(rows) - set(defaults)) == [], "docs/config.md lists keys fedstack.config does not have"
    wrong = {key: (rows[key], defaults[key]) for key in defaults if parsed(rows[key]) != defaults[key]}
    assert wrong == {}, "documented default != the code's (documented, code)"


def test_the_readmes_short_table_agrees_with_the_code():
    rows = table_rows((ROOT / "README.md").read_text())
    defaults = config_defaults()
    assert len(rows) >= 10 and set(rows) <= set(defaults), sorted(set(rows) - set(defaults))
    assert {key: value for key, value in rows.items() if parsed(value) != defaults[key]} == {}


def test_the_readmes_links_to_the_site_resolve():
    text = (ROOT / "README.md").read_text()
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in link]
    assert any(link.startswith("docs/") for link in links)
    assert [link for link in links if not (ROOT / link).exists()] == []


def test_the_site_builds_strictly_with_the_api_reference_and_the_guides(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("material")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reference = (site / "reference" / "simulate.html").read_text()
    assert 'id="fedstack.simulate"' in reference and "clients_per_round" in reference
    assert 'id="fedstack.TorchTrainer"' in (site / "reference" / "training.html").read_text()
    for guide in GUIDES:
        assert (site / "guides" / f"{guide}.html").exists(), guide
    for page in ("first-hour", "architecture", "extending", "security", "config", "concepts", "deploy"):
        assert (site / f"{page}.html").exists(), page
    assert "eval.metrics_aggregation" in (site / "config.html").read_text()
