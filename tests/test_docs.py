"""The README and docs/ pages: the two commands CI relies on, links that resolve, and numbers that
are what the code computes (each parsed from the text, so a drift on either side fails)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import atrous
from atrous.models import create

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _readme() -> str:
    return README.read_text()


def _code_blocks(text: str) -> list[str]:
    return [block.rstrip("\n") for block in FENCE.findall(text)]


def _paragraph(text: str, start: str) -> str:
    """The README paragraph that contains ``start``, joined into one line."""
    for paragraph in re.split(r"\n\s*\n", text):
        if start in paragraph:
            return " ".join(paragraph.split())
    raise AssertionError(f"README.md has no paragraph with {start!r}")


# The two commands


def test_readme_starts_with_the_main_job_then_the_tests():
    text = _readme()
    body = text.split("\n", 1)[1] if text.startswith("# ") else text  # after the title
    first_two = re.match(r"\s*```bash\n([^\n]*)\n```\s*```bash\n([^\n]*)\n```", body)
    assert first_two, "README.md must open (after its title) with two one-line bash blocks"
    setup = "python3 -m venv .venv && .venv/bin/pip install torch=="
    main_job, tests = first_two.groups()
    assert main_job.startswith(setup)
    assert main_job.endswith(' && .venv/bin/pip install -e ".[train]" && .venv/bin/atrous train')
    assert tests.startswith(setup)
    assert tests.endswith(' && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest -n 2')
    assert main_job.split(" && ")[:2] == tests.split(" && ")[:2]  # the same venv and torch


def test_ci_runs_exactly_the_readmes_test_command():
    readme_command = _code_blocks(_readme())[1]
    printed = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print"], capture_output=True, text=True, check=True)
    assert printed.stdout == readme_command + "\n"
    assert "pytest -n 2" in printed.stdout


# Links


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    heading = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(heading) for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def _links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in _links(README)}
    assert [page.name for page in PAGES[1:] if page.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z][a-z+.-]*:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link} (no such heading in {target.name})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


# Numbers the README states


def test_context_net_parameters_and_receptive_field():
    stated = re.search(r"`context_net` \(([\d,]+) parameters, a (\d+)-pixel receptive field\)", _readme())
    assert stated, "README.md no longer states context_net's parameters and field in the expected form"
    params, field = int(stated[1].replace(",", "")), int(stated[2])
    model = create("context_net", num_classes=11)  # the main job's model: digits has 11 classes
    assert params == sum(p.numel() for p in model.parameters())
    assert (field, field) == atrous.receptive_field(model, (3, 128, 128)).size


def test_wavenet_and_tcn_receptive_fields():
    wavenet = _paragraph(_readme(), '`create("wavenet")`')
    assert (field := re.search(r"receptive field (\d+)", wavenet)), wavenet
    assert (int(field[1]),) == atrous.receptive_field(create("wavenet"), (256, 4096)).size

    tcn = _paragraph(_readme(), '`create("tcn")`')
    stated = re.search(r"k=(\d+), (\d+) levels, (\d+) hidden: ([\d,]+) parameters, receptive field (\d+)", tcn)
    assert stated, tcn
    model = create("tcn")
    assert (model.config.kernel_size, model.config.levels, model.config.hidden) == tuple(map(int, stated.groups()[:3]))
    assert int(stated[4].replace(",", "")) == sum(p.numel() for p in model.parameters())
    assert (int(stated[5]),) == atrous.receptive_field(model, (model.config.in_channels, 4096)).size


def test_the_rf_example_is_what_the_command_prints():
    example = next(block for block in _code_blocks(_readme()) if block.startswith("$ atrous rf "))
    command, expected = example.split("\n", 1)
    printed = subprocess.run([sys.executable, "-m", "atrous", *command.split()[2:]], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    assert printed.strip() == expected.strip()

