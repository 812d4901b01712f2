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
