#!/usr/bin/env python3
"""Check the relative links of Markdown documentation: the build job's docs step (there is no Sphinx;
the documentation is README.md and docs/*.md, read on the repository host).

    python jenkins/scripts/check_doc_links.py README.md docs

Every inline link or image `[text](target)` whose target is not a URL must name a file or directory that
exists, relative to the file it is in; a `#fragment` into a Markdown file must be one of its headings'
anchors (GitHub's rule: lowercase, punctuation dropped, spaces made hyphens, duplicates numbered). Links
in code (fenced blocks, `inline code`) are not links. External URLs are not fetched: a build must not
depend on other sites being up.

Exit status 0 when every link resolves, 1 otherwise (each broken link printed as FILE:LINE: message), 2
for bad arguments.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote

# [text](target "title") and ![alt](target): the target up to whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def prose_lines(text: str):
    """(line number, line) of the lines outside fenced code blocks, with inline code blanked."""
    in_fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(line)
        if fence:
            if in_fence is None:
                in_fence = fence.group(1)
            elif fence.group(1) == in_fence:
                in_fence = None
            continue
        if in_fence is None:
            yield number, INLINE_CODE.sub("", line)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading's text."""
    text = re.sub(r"`|\*\*|__|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            base = anchor(match.group(1))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def broken_links(path: Path) -> list[str]:
    """FILE:LINE: message for every relative link of the Markdown file that does not resolve."""
    problems = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(line):
            target = match.group(1)
            if not target or EXTERNAL.match(target):
                continue
            file_part, _, fragment = target.partition("#")
            resolved = (path.parent / unquote(file_part)).resolve() if file_part else path.resolve()
            where = f"{path}:{number}"
            if not resolved.exists():
                problems.append(f"{where}: {target}: no such file or directory")
            elif fragment and resolved.suffix == ".md" and unquote(fragment) not in anchors(resolved):
                problems.append(
                    f"{where}: {target}: no heading with the anchor #{fragment} in {resolved.name}"
                )
    return problems


def markdown_files(arguments: list[str]) -> list[Path]:
    files = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            files += sorted(path.rglob("*.md"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{argument}: no such file or directory")
    return files


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        files = markdown_files(argv)
    except FileNotFoundError as error:
        print(f"check_doc_links: {error}", file=sys.stderr)
        return 2
    problems = [problem for path in files for problem in broken_links(path)]
    for problem in problems:
        print(problem)
    print(f"{len(files)} Markdown files, {len(problems)} broken links", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
