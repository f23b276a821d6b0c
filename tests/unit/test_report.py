"""Reports: every section and figure from a synthetic run, tolerance of missing/broken files, escaping,
comparison, the CLI, and rendering in a real headless Chromium (``-m browser``)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from conftest import chromium_binary
from report_fixtures import (
    EVIL_CATEGORY,
    EVIL_PROMPT,
    EVIL_RESPONSE,
    PARTIAL_KINDS,
    make_partial_run,
    make_run,
)
from typer.testing import CliRunner

from safeneurons.errors import DataError
from safeneurons.report import build_report, compare_runs, load_run
from safeneurons.report.html import COMPARE_FIGURES, REPORT_FIGURES, FigureSet, draw_run_figures, render_report
from safeneurons.report.load import Missing, parse_asr_cell, wilson_interval
from safeneurons.report.views import COMPARE_SECTIONS, SECTIONS

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADINGS = ["Overview", "Run manifest", "Safety neurons", "Score distributions", "Attack success",
            "Attack success per category", "Brittleness", "Monitor evaluation", "Capability", "Example completions", "Training",
            "Multilingual", "Files read"]


# ---------------------------------------------------------------------------------------------- helpers


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def sections(html: str) -> dict[str, str]:
    """The shown sections (a section of another command's runs is rendered empty and ``hidden``)."""
    return dict(re.findall(r'<section id="([a-z]+)">(.*?)</section>', html, flags=re.S))


def hidden_sections(html: str) -> list[str]:
    return re.findall(r'<section id="([a-z]+)" hidden></section>', html)


#: sections an attack run never writes: left out of its report instead of marked missing
NOT_ATTACK = ["brittleness", "monitor", "training", "multilingual"]


def missing_boxes(section_html: str) -> list[str]:
    return re.findall(r'data-missing="([^"]*)"', section_html)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "full")


@pytest.fixture(scope="module")
def full_report(full_run) -> tuple[Path, str]:
    path = build_report(full_run)
    return path, path.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------- full run


def test_every_section_heading_and_figure(full_run, full_report):
    path, html = full_report
    assert path == full_run / "report.html"
    assert [s.title for s in SECTIONS] == HEADINGS
    for s in SECTIONS:
        assert f'<section id="{s.id}">' in html and f"<h2>{s.title}</h2>" in html, s.title
    secs = sections(html)
    for sid in ("run", "neurons", "scores", "attack", "categories", "brittleness", "monitor", "capability",
                "examples", "training", "multilingual"):
        assert missing_boxes(secs[sid]) == [], f"section {sid} unexpectedly marked missing"
    for name in REPORT_FIGURES:
        png = full_run / "figures" / f"{name}.png"
        w, h = png_size(png)
        assert w > 200 and h > 100, name
        assert f'data-file="figures/{name}.png"' in html and f'href="figures/{name}.png"' in html
    # the manifest table, the attack table and the per-category table carry the numbers
    assert "Qwen2ForCausalLM" in secs["run"] and "generate:FULL" in secs["run"]
    summary = json.loads((full_run / "asr.json").read_text())["summary"]
    for cond, s in summary.items():
        assert f"<th>{cond}</th>" in secs["attack"]
        assert f"{s['k']} / {s['n']}" in secs["attack"] and f"{100 * s['asr']:.1f}%" in secs["attack"]
    for cat in ("violence", "cybercrime", "disinformation"):
        assert f"<th>{cat}</th>" in secs["categories"]
    assert "arc_challenge" in secs["capability"] and "perplexity" in secs["capability"]
    assert "Frozen weights did not move" in secs["training"] and "T3" in secs["training"]
    assert "suppressed_SS" in secs["multilingual"] and "<th>bn</th>" in secs["multilingual"]
    curve = json.loads((full_run / "brittleness" / "curve.json").read_text())
    for p in curve["points"]:
        assert f"<td class=\"num\">{p['k']} / {p['n']}</td>" in secs["brittleness"]
    for b in curve["neurons_to_break"]:
        label = b["attacker"] if b["seed"] is None else f"{b['attacker']} seed {b['seed']}"
        at = "not reached" if b["fraction"] is None else f"{b['fraction']:g} %"
        assert f"<tr><th>{label}</th><td class=\"num\">{at}</td>" in secs["brittleness"]
    assert "Where the attacked curve leaves the random band" in secs["brittleness"]
    assert "2 re-identifications" in secs["brittleness"] and "stub-refusal" in secs["brittleness"]
    ev = json.loads((full_run / "monitor_eval.json").read_text())
    for title in ("ORI: xstest:unsafe vs xstest:safe", "PRUNED: all", "False alarms", "MultiJail AUROC", "Survival: all"):
        assert title in secs["monitor"], title
    full = next(r for r in ev["rows"] if r["readout"] == "FULL" and r["group"] == "all" and r["condition"] == "ORI")
    assert f"{full['auroc']:.3f} [{full['auroc_ci'][0]:.3f}" in secs["monitor"]
    assert "monitor AUROC" in secs["overview"] and "XS: 1 neuron(s)" in secs["monitor"]


def test_figures_embedded_and_page_self_contained(full_run, full_report):
    _, html = full_report
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="[^"]*" data-file="([^"]+)"', html)
    assert {f for _, f in uris} == {f"figures/{n}.png" for n in REPORT_FIGURES}
    for b64, rel in uris:
        assert base64.b64decode(b64) == (full_run / rel).read_bytes()
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html), "external resource referenced"
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_model_text_is_escaped_and_examples_collapsed(full_report):
    _, html = full_report
    for raw in (EVIL_PROMPT, EVIL_RESPONSE, EVIL_CATEGORY, "<img src=x", "<b>cat</b>"):
        assert raw not in html
    assert "&lt;script&gt;alert(&#39;prompt&#39;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "weird $x^2$ &lt;b&gt;cat&lt;/b&gt;" in html
    groups = re.findall(r'<details class="examples" data-condition="([^"]+)"(.*?)>', html)
    assert [c for c, _ in groups] == ["ORI", "ES", "SAS", "FULL", "RANDOM0", "RANDOM1"]
    assert all("open" not in attrs for _, attrs in groups)
    assert html.count('<div class="example">') == 18


def test_png_eyeball_copy(full_run):
    """Keep one figure under test-artifacts/ for a person to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(full_run / "figures" / "attack_asr.png", ARTIFACTS / "report-attack_asr.png")
    assert png_size(ARTIFACTS / "report-attack_asr.png")[0] > 0


def test_rebuild_removes_stale_figures(tmp_path):
    run = make_run(tmp_path / "r", training=False, multilingual=False)
    build_report(run)
    assert (run / "figures" / "capability.png").exists()
    (run / "capability.json").unlink()
    html = build_report(run).read_text()
    assert not (run / "figures" / "capability.png").exists()
    assert missing_boxes(sections(html)["capability"]) == ["capability.json"]


def test_report_to_other_folder_and_missing_dir(tmp_path, full_run):
    out = build_report(full_run, tmp_path / "elsewhere")
    assert out == tmp_path / "elsewhere" / "report.html" and (tmp_path / "elsewhere" / "figures").is_dir()
    with pytest.raises(DataError, match="does not exist"):
        build_report(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------- partial runs


EXPECT_MISSING = {  # kind -> {section: files named in its missing boxes}
    "no_capability": {"capability": ["capability.json"]},
    "truncated_asr": {"attack": ["asr.json"], "categories": ["asr.json"]},
    "manifest_only": {"neurons": ["neurons/"], "scores": ["neurons/score_histograms.json"], "attack": ["asr.json"],
                      "capability": ["capability.json"], "examples": ["examples.json"]},
    "failed_midway": {"attack": ["asr.json"], "capability": ["capability.json"], "examples": ["examples.json"]},
    "corrupt_files": {"scores": ["neurons/score_histograms.json"], "capability": ["capability.json"],
                      "categories": ["asr.json"]},
    "empty_dir": {"run": ["manifest.json", "config.yaml"], "attack": ["asr.json"]},
}


@pytest.mark.parametrize("kind", PARTIAL_KINDS)
def test_partial_run_renders_and_marks_missing(tmp_path, kind):
    run = make_partial_run(tmp_path / kind, kind)
    html = build_report(run).read_text(encoding="utf-8")
    secs = sections(html)
    hidden = [] if kind == "empty_dir" else NOT_ATTACK  # without a manifest the command is unknown: all shown
    assert hidden_sections(html) == hidden
    assert list(secs) == [s.id for s in SECTIONS if s.id not in hidden]
    for sid, files in EXPECT_MISSING[kind].items():
        assert missing_boxes(secs[sid]) == files, (sid, missing_boxes(secs[sid]))
    for sid in NOT_ATTACK:
        assert sid in hidden or "Not in this run." in secs[sid]
        assert f'href="#{sid}"' not in html.split("</nav>")[0] or sid not in hidden
    files = secs["files"]
    if kind == "truncated_asr":
        assert "Could not be read." in secs["attack"] and "not valid JSON" in secs["attack"]
        assert "looks truncated" in secs["attack"]
        assert not (run / "figures" / "attack_asr.png").exists()
        assert "Example completions" in html and missing_boxes(secs["examples"]) == []
    if kind == "no_capability":
        assert "Not in this run." in secs["capability"] and missing_boxes(secs["attack"]) == []
    if kind == "manifest_only":
        assert "attack / done" in secs["overview"] and "generate:ORI" in secs["run"]
    if kind == "failed_midway":
        assert "This run failed at stage &#39;judge&#39;: JudgeError: &lt;b&gt;endpoint&lt;/b&gt; unreachable" in html
    if kind == "corrupt_files":
        assert re.search(r"<th>SAS</th><td colspan=\"9\" class=\"bad\">neurons/SAS.json is not (UTF-8|valid JSON)",
                         secs["neurons"])
        assert "from verdicts.json (examples.json missing)" in secs["examples"]
        assert "examples.json is empty" in files
        full_row = r"<tr><th>FULL</th>(<td class=\"num\">[^<]*</td>){2}<td class=\"num\">n/a</td>"
        assert re.search(full_row, secs["attack"])
    if kind == "empty_dir":
        assert 'class="banner warn"' in html and "manifest.json was not written by this run" in html
    assert "<script" not in html.lower()


# ---------------------------------------------------------------------------------------------- tolerant readers

FILES = ["manifest.json", "asr.json", "capability.json", "examples.json", "verdicts.json", "neurons/index.json",
         "neurons/FULL.json", "neurons/score_histograms.json", "safeneuron/round_1/train_log.json",
         "safeneuron/round_1/round.json", "robustness.json",
         "multilingual/asr.json", "multilingual/overlap.json", "multilingual/counts.json", "completions/ORI.json",
         "brittleness/curve.json", "brittleness/iterative/steps.json", "monitor_eval.json"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def _mutate(obj, data, depth=0):
    """Replace one nested value of ``obj`` by junk (explores the readers' inner paths)."""
    if depth > 6 or not isinstance(obj, (dict, list)) or not obj or data.draw(st.booleans()):
        return data.draw(json_values)
    if isinstance(obj, dict):
        key = data.draw(st.sampled_from(sorted(obj)))
        return {**obj, key: _mutate(obj[key], data, depth + 1)}
    i = data.draw(st.integers(0, len(obj) - 1))
    return obj[:i] + [_mutate(obj[i], data, depth + 1)] + obj[i + 1:]


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("fuzz") / "run", n_layers=4, width=16, n_eval=8)


def _write_mutations(run: Path, data, originals: dict[str, bytes]) -> None:
    """Overwrite 1-3 files with junk; ``originals`` records what to restore (filled before each write, so a
    draw that stops half-way still leaves everything restorable)."""
    for rel in data.draw(st.lists(st.sampled_from(FILES), min_size=1, max_size=3, unique=True)):
        p = run / rel
        originals[rel] = p.read_bytes()
        how = data.draw(st.sampled_from(["mutate", "replace", "truncate"]))
        if how == "truncate":
            p.write_bytes(originals[rel][: data.draw(st.integers(0, len(originals[rel])))])
        else:
            obj = json.loads(originals[rel])
            new = _mutate(obj, data) if how == "mutate" else data.draw(json_values)
            p.write_text(json.dumps(new, allow_nan=True))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_readers_never_raise_on_junk(fuzz_run, data):
    originals: dict[str, bytes] = {}
    try:
        _write_mutations(fuzz_run, data, originals)
        run = load_run(fuzz_run)
        html = render_report(run, {})
        assert html.count("<section id=") == len(SECTIONS)
    finally:
        for rel, raw in originals.items():
            (fuzz_run / rel).write_bytes(raw)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_figures_draw_from_any_readable_data(fuzz_run, tmp_path, data):
    originals: dict[str, bytes] = {}
    try:
        _write_mutations(fuzz_run, data, originals)
        figs = FigureSet(tmp_path)
        draw_run_figures(load_run(fuzz_run), figs)
        failed = {k: v.reason for k, v in figs.made.items() if isinstance(v, Missing)}
        assert not failed
    finally:
        for rel, raw in originals.items():
            (fuzz_run / rel).write_bytes(raw)


def test_asr_cells_are_checked():
    assert parse_asr_cell({"k": 3, "n": 10}).ci_lo == pytest.approx(wilson_interval(3, 10)[0])
    bad = parse_asr_cell({"k": 12, "n": 10, "asr": 1.2, "ci": [0.9, 0.1]})
    assert bad.asr is None and bad.k is None and bad.ci_lo is None
    c = parse_asr_cell({"k": 2, "n": 4, "asr": 0.9, "ci": [0.0, 0.1]})  # asr and ci recomputed from k/n
    assert c.asr == 0.5 and c.ci_lo < 0.5 < c.ci_hi
    assert parse_asr_cell({"asr": 0.25}).text == "(25.0%)"


def test_wilson_matches_evaluation_package():
    from safeneurons.evaluate.asr import wilson_interval as reference

    for n in (1, 7, 50, 313):
        for k in {0, 1, n // 2, n - 1, n}:
            assert wilson_interval(k, n) == pytest.approx(reference(k, n), abs=1e-12)


def test_report_package_imports_no_torch(full_run, tmp_path):
    code = ("import sys; from safeneurons.report import build_report; "
            f"build_report({str(full_run)!r}, {str(tmp_path)!r}); "
            "heavy = ('torch', 'transformers', 'safeneurons.models', 'safeneurons.stats'); "
            "bad = [m for m in heavy if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def compared(tmp_path_factory, full_run) -> tuple[Path, str, Path]:
    base = tmp_path_factory.mktemp("cmp")
    other = make_run(base / "other", seed=1, model_name="tiny-llama", n_layers=12)
    partial = make_partial_run(base / "partial", "truncated_asr")
    build_report(full_run)
    build_report(partial)
    path = compare_runs([full_run, other, partial], base / "out")
    return path, path.read_text(encoding="utf-8"), base


def test_compare_side_by_side_tables_and_overlaid_plots(compared, full_run):
    path, html, base = compared
    assert path == base / "out" / "compare.html"
    for s in COMPARE_SECTIONS:
        assert f'<section id="{s.id}">' in html and f"<h2>{s.title}</h2>" in html
    secs = sections(html)
    header = '<thead><tr><th></th><th>full</th><th>other</th><th>partial</th></tr></thead>'
    for sid in ("runs", "attack", "neurons", "capability", "training", "multilingual"):
        assert header in secs[sid], sid
    full = json.loads((full_run / "asr.json").read_text())["summary"]["FULL"]
    other = json.loads((base / "other" / "asr.json").read_text())["summary"]["FULL"]
    row = re.search(r"<tr><th>FULL</th>(.*?)</tr>", secs["attack"]).group(1)
    cells = re.findall(r'<td class="cell">(.*?)</td>', row)
    def text(s):
        return f"{s['k']} / 16 ({100 * s['asr']:.1f}%) [{100 * s['ci'][0]:.1f}–{100 * s['ci'][1]:.1f}]"

    assert cells == [text(full), text(other), "unreadable"]
    assert "tiny-qwen" in secs["runs"] and "tiny-llama" in secs["runs"]
    links = re.findall(r'<a href="([^"]+)">report.html</a>', secs["runs"])
    assert [Path(base / "out" / link).resolve() for link in links] == [(full_run / "report.html").resolve(),
                                                                       (base / "partial" / "report.html").resolve()]
    for name in COMPARE_FIGURES:
        assert png_size(base / "out" / "figures" / f"{name}.png")[0] > 200, name
        assert f'data-file="figures/{name}.png"' in html
    assert "<script" not in html.lower() and "Content-Security-Policy" in html


def test_compare_needs_two_existing_runs(tmp_path, full_run):
    with pytest.raises(DataError, match="at least two"):
        compare_runs([full_run], tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        compare_runs([full_run, tmp_path / "missing"], tmp_path / "out")


def test_compare_with_only_partial_runs(tmp_path):
    a = make_partial_run(tmp_path / "a", "manifest_only")
    b = make_partial_run(tmp_path / "b", "empty_dir")
    html = compare_runs([a, b], tmp_path / "out").read_text()
    assert html.count("Not in these runs.") >= 5
    assert not list((tmp_path / "out").glob("figures/*.png"))  # nothing to draw, and nothing drawn


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli() -> typer.Typer:
    from safeneurons.cli.report import register

    app = typer.Typer()
    register(app)
    return app


def test_cli_report_and_compare(cli, full_run, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["report", str(full_run), "--out", str(tmp_path / "rep"), "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep" / "report.html").exists() and "report.html" in res.output
    other = make_partial_run(tmp_path / "other", "no_capability")
    res = runner.invoke(cli, ["compare", str(full_run), str(other), "--out", str(tmp_path / "cmp"), "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cmp" / "compare.html").exists()


def test_cli_errors_are_one_line(cli, tmp_path, full_run):
    runner = CliRunner()
    res = runner.invoke(cli, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["compare", str(full_run), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "at least two" in res.output
    res = runner.invoke(cli, ["compare", "--help"])
    assert res.exit_code == 0 and "--out" in res.output


# ---------------------------------------------------------------------------------------------- browser

PROBE = """<script>
window.__errors = [];
addEventListener('error', function (e) {
  var t = e.target;
  __errors.push(t && t !== window && (t.src || t.href) ? 'resource failed: ' + (t.src || t.href).slice(0, 80)
                                                       : 'error: ' + e.message);
}, true);
addEventListener('unhandledrejection', function (e) { __errors.push('rejection: ' + e.reason); });
document.addEventListener('securitypolicyviolation', function (e) {
  __errors.push('csp: ' + e.violatedDirective + ' ' + e.blockedURI);
});
(function () { var o = console.error, w = console.warn;
  console.error = function () {
    __errors.push('console.error: ' + [].join.call(arguments, ' ')); return o.apply(console, arguments); };
  console.warn = function () {
    __errors.push('console.warn: ' + [].join.call(arguments, ' ')); return w.apply(console, arguments); };
})();
addEventListener('load', function () {
  var imgs = [].slice.call(document.images), bad = imgs.filter(function (i) { return !i.complete || !i.naturalWidth; });
  bad.forEach(function (i) { __errors.push('image not rendered: ' + i.alt); });
  var de = document.documentElement;
  de.setAttribute('data-errors', JSON.stringify(__errors));
  de.setAttribute('data-images', String(imgs.length));
  de.setAttribute('data-scripts', String(document.scripts.length));
  var h2 = [].map.call(document.querySelectorAll('h2'), function (h) { return h.textContent; });
  de.setAttribute('data-headings', JSON.stringify(h2));
  de.setAttribute('data-open-details', String(document.querySelectorAll('details[open]').length));
});
</script>"""




def run_chromium(args: list[str], url: str, profile: Path) -> subprocess.CompletedProcess:
    binary = chromium_binary()
    assert binary is not None
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def check_in_browser(page: Path, tmp: Path, screenshot: Path, expected_images: int) -> dict:
    """Load ``page`` twice: a copy with an error probe (via --dump-dom) and the page itself (screenshot;
    Chromium's console log on stderr must be empty)."""
    html = page.read_text(encoding="utf-8")
    probe = page.with_name("probe-" + page.name)
    probe.write_text(html.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    res = run_chromium(["--dump-dom"], probe.as_uri(), tmp / "profile-probe")
    probe.unlink()
    m = re.search(r"<html[^>]*>", res.stdout)
    assert m, f"no DOM dumped (rc {res.returncode}): {res.stderr[-2000:]}"
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', m.group(0)))
    import html as _html

    errors = json.loads(_html.unescape(attrs.get("data-errors", "null")))
    assert errors == [], errors
    assert int(attrs["data-images"]) == expected_images
    assert attrs["data-scripts"] == "1"  # only the probe: the page itself runs no script
    assert attrs["data-open-details"] == "0"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    shot = run_chromium([f"--screenshot={screenshot}", "--window-size=1280,2000"], page.as_uri(), tmp / "profile-shot")
    console = [ln for ln in shot.stderr.splitlines() if ":CONSOLE" in ln]
    assert console == [], console
    assert png_size(screenshot) == (1280, 2000)
    return {"headings": json.loads(_html.unescape(attrs["data-headings"]))}




@pytest.mark.browser
def test_report_renders_in_headless_chromium(full_run, full_report, tmp_path):
    path, _ = full_report
    got = check_in_browser(path, tmp_path, ARTIFACTS / "report.png", expected_images=len(REPORT_FIGURES))
    assert got["headings"] == HEADINGS


@pytest.mark.browser
def test_partial_report_and_comparison_render_in_headless_chromium(compared, tmp_path):
    path, _, base = compared
    got = check_in_browser(path, tmp_path, ARTIFACTS / "compare.png", expected_images=len(COMPARE_FIGURES))
    assert got["headings"] == [s.title for s in COMPARE_SECTIONS]
    report = base / "partial" / "report.html"
    got = check_in_browser(report, tmp_path, ARTIFACTS / "report-partial.png",
                           expected_images=len(list((base / "partial" / "figures").glob("*.png"))))
    assert got["headings"] == [h for h in HEADINGS if h not in ("Brittleness", "Monitor evaluation", "Training",
                                                                "Multilingual")]


def test_capability_figure_ignores_an_impossible_stderr(tmp_path):
    """A negative stderr (the fuzz test's find) is no stderr: the capability figure draws without error bars
    instead of failing."""
    run = make_run(tmp_path / "r", training=False, multilingual=False)
    cap = json.loads((run / "capability.json").read_text())
    for row in cap.values():
        for score in row["tasks"].values():
            score["stderr"] = -0.1
    (run / "capability.json").write_text(json.dumps(cap))
    data = load_run(run)
    assert all(s.stderr is None for row in data.capability.values() for s in row.tasks.values())
    figs = FigureSet(tmp_path / "figs")
    draw_run_figures(data, figs)
    assert not isinstance(figs.made["capability"], Missing)
