"""MkDocs hooks: publish ``benchmarks/RESULTS.md`` (and the plots it shows) as a page of the site.

The benchmark suite owns that file; the site shows it as written, at ``benchmarks/RESULTS/``.
Its links into the repository (scripts, JSON results) lead outside the site, so on that page
alone links the site cannot resolve are reported at info level instead of as warnings.
"""

from __future__ import annotations

import logging
import pathlib
import re

from mkdocs.structure.files import File, Files

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SRC_URI = "benchmarks/RESULTS.md"
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)")
_saved: dict[str, int] = {}


def on_files(files: Files, config) -> Files:
    if not RESULTS.is_file():  # the pages that link to it then fail the --strict build
        return files
    files.append(File.generated(config, SRC_URI, abs_src_path=str(RESULTS)))
    for name in sorted(set(_IMAGE.findall(RESULTS.read_text(encoding="utf-8")))):
        image = (RESULTS.parent / name).resolve()
        if "://" not in name and image.is_file() and RESULTS.parent in image.parents:
            uri = f"benchmarks/{image.relative_to(RESULTS.parent).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(image)))
    return files


_CHECKS = ("not_found", "unrecognized_links", "anchors")


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == SRC_URI:
        links = config.validation.links
        _saved.update({name: getattr(links, name) for name in _CHECKS})
        for name in _CHECKS:
            setattr(links, name, logging.INFO)
    return markdown


def on_page_content(html: str, page, config, files) -> str:
    if page.file.src_uri == SRC_URI and _saved:
        for name in _CHECKS:
            setattr(config.validation.links, name, _saved.pop(name))
        page.links_to_anchors = None  # its anchor links are not checked after the build either
    return html
