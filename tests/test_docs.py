"""The manual cannot drift: it builds as a site in strict mode, its generated command reference equals the
commands, and every `fastlt ...` line in a fenced block of the README or docs/ names a real command and
real options."""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from fastlt.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_spec = importlib.util.spec_from_file_location("command_reference", ROOT / "tools" / "command_reference.py")
command_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(command_reference)


def build_site(project: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(project / "mkdocs.yml"), "--site-dir", str(site)],
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_manual_builds_in_strict_mode_and_a_broken_link_fails_it(tmp_path):
    built = build_site(ROOT, tmp_path / "site")
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "distributed" / "index.html").is_file()
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    with (copy / "docs" / "faults.md").open("a") as page:
        page.write("\nSee [the missing page](no-such-page.md).\n")
    broken = build_site(copy, tmp_path / "broken-site")
    assert broken.returncode != 0 and "no-such-page.md" in broken.stderr


def test_every_page_is_in_the_navigation_and_every_readme_link_resolves():
    navigation = (ROOT / "mkdocs.yml").read_text()
    assert all(re.search(rf":\s*{re.escape(page.name)}\s*$", navigation, re.M) for page in PAGES[1:])
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text()):
        assert target.startswith("http") or (ROOT / target).is_file(), f"README.md links to missing {target}"


def test_the_command_reference_is_generated_from_the_commands():
    page = (ROOT / "docs" / "commands.md").read_text()
    start = page.index(command_reference.BEGIN) + len(command_reference.BEGIN)
    assert page[start:page.index(command_reference.END)].strip() == command_reference.reference(), \
        "docs/commands.md: regenerate with `python tools/command_reference.py --write`"


def fenced_commands() -> list[tuple[str, str]]:
    """(page, command line) for every `fastlt ...` line (or `torchrun ... -m fastlt ...`) inside a fenced shell
    block (``` or ```bash; a drawing is a ```text block), continuations joined."""
    found = []
    for page in PAGES:
        fence, shell, lines = None, False, []
        for line in page.read_text().replace("\\\n", " ").splitlines():
            if fence is None and line.lstrip().startswith("```"):
                fence, shell = line.lstrip()[:3], line.lstrip()[3:].strip() in ("", "bash", "sh", "console")
            elif fence is not None and line.strip() == fence:
                fence = None
            elif fence is not None and shell:
                command = re.search(r"(?:^|\s-m )(fastlt .*)", line.strip().removeprefix("$ "))  # also torchrun's
                if command:
                    lines.append((page.name, command.group(1)))
        found += lines
    return found


def check_line(line: str) -> None:
    """The command path exists (each of `a|b` alternatives), and every --option is one of the command's."""
    words = [word.strip("[]") for word in shlex.split(line, comments=True)[1:]]
    command: click.Command = main
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        alternatives = words.pop(0).split("|")
        found = [command.commands.get(name) for name in alternatives]
        assert all(found), f"no command {alternatives} under {command.name}"
        command = found[0]
    known = {"--help"} | {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
    for word in words:
        if word.startswith("--"):
            assert word.split("=")[0] in known, f"{command.name} has no option {word.split('=')[0]}"


def test_every_fenced_fastlt_line_names_a_real_command_and_options():
    lines = fenced_commands()
    assert len(lines) > 10  # the tour, the manual's examples
    for page, line in lines:
        try:
            check_line(line)
        except AssertionError as error:
            pytest.fail(f"{page}: `{line}`: {error}")


@pytest.mark.parametrize("line", ["fastlt pretrian digits_lt/simclr", "fastlt linear-eval RUN --shot 100"])
def test_the_fenced_line_check_catches_a_wrong_command_or_option(line):
    with pytest.raises(AssertionError):
        check_line(line)


# A measured time (`12.5 s`, `3 min 58 s`, `21.2 ms`, `60-210 us`, `1.5 h`) or rate (`9,884 images/s`).
MEASURED = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:\s?-\s?\d[\d,]*(?:\.\d+)?)?\s?"
                      r"(?:ms|us|µs|s|min|h|seconds?|minutes?|hours?|(?:images|img|batches|views|steps|samples)/s)\b")
# A time that is a setting or a limit, not a result: "within 5 seconds", "every 10 ms", "default 450 s",
# "timeout 30 minutes", "budget: 30 min", "its 200 s limit", "30 s by default".
SETTING = re.compile(r"\b(?:within|every|default|timeout|budget:?)\s+(?:its\s+)?~?$|^\s*(?:limit|by default)\b")
MACHINE = re.compile(r"\b(?:Xeon|EPYC|Zen ?\d|Sapphire Rapids|Ryzen|Threadripper|Core i[3579]|Apple M\d|"
                     r"[AHLV]100|H200|A10G?|L4|T4|RTX ?\w+|MI\d{3}X?)\b")
COMMIT = re.compile(r"\bcommits? [0-9a-f]{7,40}\b|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b")


def prose_units(text: str) -> list[str]:
    """The page's statements, each of which must carry its own provenance: fenced blocks and the generated
    command reference (the commands' help, checked against the code above) dropped; a paragraph; a
    Markdown table or a block of footnote definitions joined with the paragraph right before it; a list
    item joined with the lines that lead into its list, so "Measured on X at Y:" covers every item."""
    if command_reference.BEGIN in text:
        text = text[:text.index(command_reference.BEGIN)] + text[text.index(command_reference.END):]
    text = re.sub(r"^[ \t]*(```|~~~).*?^[ \t]*\1", "", text, flags=re.S | re.M)  # indented in a list too
    units: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        if block.lstrip().startswith(("|", "[^")) and units:
            units[-1] += "\n" + block
            continue
        lead, *items = re.split(r"^(?=[-*+] |\d+\. )", block, flags=re.M)
        units += [lead + item for item in items] if items else [lead]
    return units


def measured_numbers(unit: str) -> list[str]:
    """The measured times and rates a unit states. Not counted: inline code, "double-quoted" text and
    `[default: ...]` (commands, example output, options), and a time that the words around it make a setting
    or a limit (SETTING)."""
    prose = re.sub(r'`[^`]*`|"[^"\n]*"|\[default: [^]]*\]', " ", unit)
    return [found.group(0) for found in MEASURED.finditer(prose)
            if not SETTING.search(prose[:found.start()][-30:]) and not SETTING.search(prose[found.end():][:20])]


def unmeasured_claims(text: str) -> list[str]:
    """The units that state a measured number but name no machine (a CPU or GPU model) or no commit: a
    number the reader cannot place is one nobody can check again."""
    return [unit for unit in prose_units(text) if measured_numbers(unit)
            and not (MACHINE.search(unit) and COMMIT.search(unit))]


def test_every_measured_number_in_the_docs_names_its_machine_and_commit():
    """A measured time or rate in the README or docs/ (outside fenced blocks, inline code and option
    defaults; not a setting such as "within 5 seconds") stands in a unit (paragraph, table with its lead-in,
    list item with its lead-in) that names the CPU or GPU model and the 7-40 hex digit commit it came from."""
    failures = [f"{page.relative_to(ROOT)}: {measured_numbers(unit)[:3]} in: {' '.join(unit.split())[:160]}"
                for page in PAGES for unit in unmeasured_claims(page.read_text())]
    assert not failures, "\n".join(failures)


def test_the_provenance_check_catches_a_number_without_its_machine_or_commit():
    """The check is not vacuous: a timing without its commit, a table or list item without its machine, is
    caught; with both it passes, and a setting or an option default is no measurement."""
    assert unmeasured_claims("An epoch took 12.5 s on an AMD EPYC Zen 5.")
    assert unmeasured_claims("At commit 0433e66:\n\n| run | rate |\n|---|---:|\n| BCL-D | 9,884 images/s |")
    assert unmeasured_claims("Measured at commit 0433e66:\n- views: 21.2 ms\n- step: 3 min 58 s")
    assert not unmeasured_claims("An epoch took 12.5 s on an AMD EPYC Zen 5 at commit 0433e66.")
    assert not unmeasured_claims("On an H200 at 03b9ba6:\n\n| run | rate |\n|---|---:|\n| BCL-D | 9,884 images/s |")
    assert not unmeasured_claims("Measured on an Intel Xeon at commit cef2bf4:\n- views: 21.2 ms\n- step: 3 min 58 s")
    assert not unmeasured_claims("The same signal within 5 seconds is one request (`--grace 30s`, [default: 40 s]).")
