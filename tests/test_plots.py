"""DVC's plot definitions render: `dvc plots show --json` on tables with the pipeline's columns
gives one Vega-Lite spec per plot, and each renders to a PNG (vl-convert) without error,
faceted per method or dataset with the weights in every panel title."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tables(root: Path, weights: str = "random") -> None:
    import pandas as pd

    a, g = root / "plots/alignment/esc50", root / "plots/geometry"
    a.mkdir(parents=True)
    g.mkdir(parents=True)
    rows = [dict(method=m, fold=f, epoch=e, train_loss=1 / (e + 1), val_loss=1 / (e + 1), val_acc=0.5 + 0.05 * e,
                 panel=f"{m} ({weights} weights)") for m in ("residual_fine", "linear") for f in ("fold1", "fold2")
            for e in range(4)]
    pd.DataFrame(rows).to_csv(a / "learning.csv", index=False)
    pd.DataFrame([dict(method=m, fold=f, label=f"{m} · {f}", accuracy=0.5, top5=0.9, params=3,
                       panel=f"esc50 ({weights} weights)") for m in ("zeroshot", "linear") for f in ("fold1", "fold2")]
                 ).to_csv(a / "folds.csv", index=False)
    pd.DataFrame([dict(method=m, cls=c, recall=0.5, panel=f"{m} ({weights} weights)") for m in ("zeroshot", "linear")
                  for c in ("dog", "rain")]).to_csv(a / "recall.csv", index=False)
    pd.DataFrame([dict(dataset="esc50", regime=r, stage=s, d_PCA99_mean=10 + s, TwoNN_mean=5 + s,
                       panel=f"esc50 ({weights} weights)") for r in ("pre", "post") for s in range(4)]
                 ).to_csv(g / "layers.csv", index=False)
    pd.DataFrame([dict(dataset="esc50", regime=r, depth=d, linear_nonlinear_ratio=1 + d / 10,
                       panel=f"esc50 ({weights} weights)") for r in ("pre", "post") for d in range(12)]
                 ).to_csv(g / "blocks.csv", index=False)
    pd.DataFrame([dict(dataset="esc50", regime=r, stage=h % 4, block=0, head=h, pca99=h, fisher=h / 10,
                       panel=f"esc50 ({weights} weights)") for r in ("pre", "post") for h in range(8)]
                 ).to_csv(g / "heads.csv", index=False)


def test_every_data_plot_renders(tmp_path):
    vlc = pytest.importorskip("vl_convert")
    pytest.importorskip("dvc")
    shutil.copytree(REPO / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--force"], cwd=tmp_path, check=True)
    shutil.copytree(REPO / ".dvc" / "plots", tmp_path / ".dvc" / "plots", dirs_exist_ok=True)
    _tables(tmp_path)
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    specs = {name: item["content"] for name, items in shown["data"].items() for item in items if item["type"] == "vega"}
    expected = {"geometry_layers_d_pca99", "geometry_layers_twonn", "geometry_blocks_ratio", "geometry_heads_fisher",
                "plots/alignment/esc50/folds.csv", "plots/alignment/esc50/learning.csv", "plots/alignment/esc50/recall.csv"}
    assert expected <= set(specs)
    for name, spec in specs.items():
        text = json.dumps(spec)
        assert "(random weights)" in text, f"{name}: no panel names the weights"
        assert spec.get("facet"), f"{name}: not split into panels"
        png = vlc.vegalite_to_png(text, scale=1)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
    learning = specs["plots/alignment/esc50/learning.csv"]
    assert learning["facet"]["field"] == "panel" and learning["spec"]["encoding"]["color"]["field"] == "fold"
    layers = specs["geometry_layers_d_pca99"]
    assert layers["spec"]["encoding"]["x"]["type"] == "ordinal" and layers["spec"]["encoding"]["color"]["field"] == "regime"


def _project(tmp_path: Path) -> Path:
    """A DVC project with the repo's dvc.yaml, params, plot templates and DVC config, and tables."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--force"], cwd=tmp_path, check=True)
    shutil.copytree(REPO / ".dvc" / "plots", tmp_path / ".dvc" / "plots", dirs_exist_ok=True)
    shutil.copy(REPO / ".dvc" / "config", tmp_path / ".dvc" / "config")
    _tables(tmp_path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = tmp_path / "plots/geometry/figures"  # the geometry stage's PNGs, shown as images
    figures.mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(figures / "d_pca99.png")
    plt.close(fig)
    return tmp_path


def _x_axis_labels(svg: str) -> list[list[str]]:
    """The tick labels of every horizontal axis in a rendered SVG, left to right."""
    import re

    axes = []
    for group in re.findall(r'role-axis-label"[^>]*>(.*?)</g>', svg, flags=re.S):
        ticks = [(float(x), float(y), text) for x, y, text in
                 re.findall(r'translate\(([-\d.]+),([-\d.]+)\)[^>]*>([^<]*)</text>', group)]
        if len(ticks) > 1 and len({y for _, y, _ in ticks}) == 1:
            axes.append([text for _, _, text in sorted(ticks)])
    return axes


def test_ordinal_axes_sort_numerically(tmp_path):
    """DVC hands every CSV cell to Vega as text; the stage and depth axes must still run 0, 1, 2, ..., 10, 11
    (as text they sort 0, 1, 10, 11, 2, ... and draw a false spike)."""
    vlc = pytest.importorskip("vl_convert")
    root = _project(tmp_path)
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    specs = {name: item["content"] for name, items in json.loads(done.stdout)["data"].items() for item in items
             if item["type"] == "vega"}
    blocks = specs["geometry_blocks_ratio"]
    assert blocks["data"]["values"][0]["depth"] == "0", "DVC no longer passes CSV cells as text: revisit this test"
    for name in ("geometry_blocks_ratio", "geometry_layers_d_pca99", "geometry_layers_twonn"):
        axes = _x_axis_labels(vlc.vegalite_to_svg(json.dumps(specs[name])))
        assert axes, name
        for labels in axes:
            assert labels == sorted(labels, key=float), f"{name}: x axis runs {labels}"
    assert _x_axis_labels(vlc.vegalite_to_svg(json.dumps(blocks)))[0] == [str(d) for d in range(12)]
    # Every template's encodings: stages, depths and folds are never quantities, accuracies and dimensions are.
    for template in sorted((REPO / ".dvc" / "plots").glob("*.json")):
        spec = json.loads(template.read_text())
        for channel, enc in spec.get("spec", spec)["encoding"].items():
            if not isinstance(enc, dict) or "field" not in enc:
                continue
            if enc["field"] in ("stage", "depth", "fold", "rev", "regime", "method"):
                assert enc["type"] in ("ordinal", "nominal"), f"{template.name}: {channel} {enc}"
            if enc["type"] == "ordinal":  # ordinal fields that hold numbers are converted before sorting
                field = enc["field"]
                calc = [t for t in spec.get("transform", []) if t.get("as") == field]
                assert calc and "toNumber" in calc[0]["calculate"], f"{template.name}: {field} sorts as text"


PROBE = """<script>
(function () {
  var errors = [];
  window.addEventListener('error', function (e) { errors.push('error: ' + e.message); });
  window.addEventListener('unhandledrejection', function (e) { errors.push('rejection: ' + e.reason); });
  var log = console.error;
  console.error = function () { errors.push('console: ' + Array.from(arguments).join(' ')); log.apply(console, arguments); };
  function drawn(div) {
    var canvas = div.querySelector('canvas');
    if (canvas && canvas.width > 0 && canvas.height > 0) {
      var px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data, ink = 0;
      for (var i = 0; i < px.length; i += 4) { if (px[i + 3] > 0 && (px[i] < 200 || px[i + 1] < 200 || px[i + 2] < 200)) ink++; }
      return ink;
    }
    var svg = div.querySelector('svg');
    return svg ? svg.querySelectorAll('path, text').length : 0;
  }
  function report(charts) {
    var pre = document.createElement('pre');
    pre.id = 'probe';
    var images = Array.from(document.images).map(function (i) { return i.naturalWidth; });
    pre.textContent = JSON.stringify({charts: charts, images: images, errors: errors});
    document.body.appendChild(pre);
  }
  window.addEventListener('load', function () {
    var tries = 0;
    (function poll() {
      var charts = EXPECTED.map(function (id) { var d = document.getElementById(id); return {id: id, ink: d ? drawn(d) : 0}; });
      if (charts.every(function (c) { return c.ink > 0; }) || ++tries > 100) { report(charts); } else { setTimeout(poll, 200); }
    })();
  });
})();
</script>"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _open(page: Path, profile: Path) -> dict:
    """Open `page` in headless Chromium with every host unresolvable; the probe's report."""
    import re

    probe = page.with_name("probe.html")
    html = page.read_text(encoding="utf-8")
    expected = re.findall(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = ', html)
    script = PROBE.replace("EXPECTED", json.dumps(expected))
    probe.write_text(html.replace("<head>", "<head>\n" + script, 1), encoding="utf-8")
    done = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
                           "--virtual-time-budget=60000", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, flags=re.S)
    assert found, f"no report from the page: {done.stderr[-2000:]}"
    import html as htmllib

    return json.loads(htmllib.unescape(found.group(1)))


def test_plots_page_draws_every_chart_offline(tmp_path):
    """`dvc plots show` writes a page that carries Vega itself (.dvc/plots/page.html, named by .dvc/config): in
    headless Chromium with no network every chart draws and nothing logs an error. The same page made with DVC's
    own template (which loads Vega from a CDN) draws nothing, so the probe can tell."""
    if _chromium() is None:
        if os.environ.get("RESIDUAL_AUDIO_REQUIRE_BROWSER"):
            pytest.fail("RESIDUAL_AUDIO_REQUIRE_BROWSER is set but no chromium is on PATH")
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    assert subprocess.run([sys.executable, str(REPO / "scripts" / "plots_page.py"), "--check"]).returncode == 0
    root = _project(tmp_path / "project")
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", "page"], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    page = root / "page" / "index.html"
    html = page.read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in html and "<script src=" not in html
    shown = _open(page, tmp_path / "profile")
    charts = shown["charts"]
    assert len(charts) == 7, charts  # four geometry views, and folds, learning curves and recall
    assert all(c["ink"] > 0 for c in charts), f"charts that drew nothing: {[c['id'] for c in charts if not c['ink']]}"
    assert shown["errors"] == []
    assert shown["images"] and all(w > 0 for w in shown["images"]), shown["images"]  # the PNGs show too
    # control: DVC's default page (Vega from a CDN), with no network, draws no chart
    from dvc_render.html import PAGE_HTML

    (root / "cdn.html").write_text(PAGE_HTML, encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", "cdn", "--html-template", "cdn.html"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    control = _open(root / "cdn" / "index.html", tmp_path / "profile2")
    assert control["charts"] and not any(c["ink"] for c in control["charts"]) and control["errors"]


def test_dvclive_views_are_on_request_only(tmp_path):
    """The default page has one learning-curve chart per question (evaluate's learning.csv, a panel per method and a
    line per fold); DVCLive's per-file series are not on it, and `dvc plots show dvclive/<dataset>/plots/metrics`
    still draws them."""
    root = _project(tmp_path)
    series = root / "dvclive/esc50/plots/metrics/random-weights/linear/fold1"
    series.mkdir(parents=True)
    (series / "val_acc.tsv").write_text("step\tval_acc\n0\t0.5\n1\t0.6\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json", *a], cwd=root,
                                    capture_output=True, text=True, timeout=300)
    default = run()
    assert default.returncode == 0, default.stderr
    assert not [n for n in json.loads(default.stdout)["data"] if "dvclive" in n]
    asked = run("dvclive/esc50/plots/metrics")
    assert asked.returncode == 0, asked.stderr
    assert [n for n in json.loads(asked.stdout)["data"] if n.endswith("val_acc.tsv")]
