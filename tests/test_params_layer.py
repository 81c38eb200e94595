"""One params layer: the schema holds every key's default and meaning; modules read, never re-default.

Each test can fail: a default moved back into a module, a params.yaml value that drifts from the
schema's default, or docs/params.md edited by hand all break one of them."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from residual_audio.core import schema
from residual_audio.core.params import ParamError, get
from residual_audio.methods.residual.maths import RECIPES

ROOT = Path(__file__).resolve().parents[1]


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_docs_params_page_is_the_schema():
    page = (ROOT / "docs/params.md").read_text()
    assert page == schema.reference_markdown(), "regenerate: python -m residual_audio.core.schema > docs/params.md"
    for pattern in schema.SCHEMA:  # every key has a meaning and shows up on the page
        assert schema.SCHEMA[pattern]["help"], pattern
        assert pattern.replace("|", "\\|") in page


def test_shipped_params_equal_the_schema_defaults():
    """params.yaml spells out the defaults (so DVC tracks each key); the schema is where they live.
    A value edited in one and not the other fails here."""
    from residual_audio.data.fetch import OFFICIAL_SOURCES

    shipped = _leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))
    differ = {k: (v, schema.default(k)) for k, v in shipped.items() if schema.default(k) != v}
    # params.yaml spells out each dataset's official source, which is what the default null means
    spelt = {f"data.{name}.source" for name, urls in OFFICIAL_SOURCES.items()
             if urls and shipped.get(f"data.{name}.source") in (urls, urls[0])}
    assert spelt and {k: v for k, v in differ.items() if k not in spelt} == {}


def test_a_key_left_out_takes_the_schema_default():
    assert get({}, "residual.recipes.fine.variance") == 0.9
    assert get({}, "data.vocalsound.limit") == 1200
    assert get({"residual": {"recipes": {"fine": {"lr": 0.1}}}}, "residual.recipes.fine") == {
        **schema.RECIPE_DEFAULTS["fine"], "lr": 0.1}
    assert get({"preprocess": {"crop": "center"}}, "preprocess")["batch_size"] == 16


def test_published_recipes_come_from_the_schema():
    """The hand-written published values (released configs): coarse has no basis, fine keeps 90 %."""
    assert RECIPES["coarse"].pca is False and RECIPES["coarse"].others == "remove"
    assert RECIPES["fine"].variance == 0.9 and RECIPES["fine"].beyond == "drop"
    assert RECIPES["full"].units == "heads+mlp" and RECIPES["full"].others == "keep"
    assert RECIPES["identity"].lr == 0.01 and RECIPES["fine"].lr == 0.8  # one value each: tuning.mode published


def test_no_module_re_defaults_a_key():
    """`get(params, key, default)` is gone: the call has two arguments everywhere in the package."""
    offenders = []
    for path in (ROOT / "residual_audio").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "get"
                    and (len(node.args) > 2 or node.keywords)):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_a_key_without_a_default_is_named():
    try:
        get({}, "no.such.key")
    except ParamError as exc:
        assert "no.such.key" in str(exc)
    else:
        raise AssertionError("a key the schema does not know returned a value")


def test_stage_help_shows_each_key_with_its_meaning():
    from residual_audio.core.pipeline import STAGES, stage_help

    text = stage_help(STAGES["geometry"], {"datasets": ["esc50"], "geometry": {"mle_k": 12}})
    assert "geometry.mle_k = 12   neighbours of the Levina-Bickel MLE" in text
    assert "geometry.twonn_discard = 0.1 (the default)   largest TwoNN ratios" in text
