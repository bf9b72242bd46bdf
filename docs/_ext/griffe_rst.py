"""A griffe extension: jaxrnn's docstrings, written in Sphinx's reStructuredText habits, as Markdown.

mkdocstrings renders docstrings as Markdown. jaxrnn's docstrings use a few reST forms; this
rewrites each docstring's text once the package is loaded:

* roles (``:func:`rnn```, ``:class:`~jaxrnn.backends.Backend```, ``:mod:`._linear```) become
  cross-references. A name that resolves in the code becomes an optional reference: a link
  where the site renders the object, plain code where it does not (private helpers). A name
  that does not resolve becomes a required reference, which a ``--strict`` build reports.
* a paragraph ending in ``::`` and the indented block after it become a fenced code block;
* ``.. math::`` becomes a display-math block (``pymdownx.arithmatex``);
* reST simple tables (``===`` borders) become Markdown tables (with a header row) or lists
  (without one).

A class whose fields carry comments (the configs: ``maxlen: int = 250  # tokens kept per
review``) and whose docstring has no ``Attributes:`` section gets one made of those comments.
"""

from __future__ import annotations

import ast
import html
import re

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):`(~?)([^`]+)`")
_BORDER = re.compile(r"^\s*=+(?: +=+)+\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _find(obj: griffe.Object, path: str) -> griffe.Object | None:
    """The object at the absolute dotted ``path`` (following aliases), or ``None``."""
    head, *parts = path.split(".")
    found = obj.modules_collection.members.get(head)
    for part in parts:
        try:
            found = None if found is None else found.members.get(part)
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return found


def _resolve(obj: griffe.Object, name: str) -> str | None:
    """The full path of ``name`` as written in a docstring of ``obj``, or ``None``."""
    if name.startswith("."):  # relative to the package that holds the docstring
        module = obj if obj.is_module else obj.module
        is_init = module.filepath is not None and module.filepath.name == "__init__.py"
        package = module if is_init else module.parent
        path = f"{package.path}{name}"
    elif name.partition(".")[0] in obj.modules_collection.members:  # absolute
        path = name
    else:  # a name in the scope of the docstring's object
        head, _, rest = name.partition(".")
        try:
            path = obj.resolve(head) + (f".{rest}" if rest else "")
        except griffe.NameResolutionError:
            return None
    return path if _find(obj, path) is not None else None


def _canonical(obj: griffe.Object, path: str) -> str:
    """Where the object at ``path`` is defined (``jaxrnn.rnn`` -> ``jaxrnn._rnn.rnn``): the
    site registers every object it shows under that path too."""
    try:
        return _find(obj, path).canonical_path
    except (AttributeError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return path


def _roles(text: str, obj: griffe.Object) -> str:
    def replace(match: re.Match) -> str:
        short, name = match.groups()
        title = name.rsplit(".", 1)[-1] if short else name
        path = _resolve(obj, name)
        if path is None:  # reported by autorefs when this docstring is rendered
            return f"[`{title}`][{name.lstrip('.')}]"
        code = html.escape(title)
        return (
            f'<autoref identifier="{_canonical(obj, path)}" optional><code>{code}</code></autoref>'
        )

    return _ROLE.sub(replace, text)


def _table(rows: list[str]) -> list[str]:
    """A reST simple table (its lines, borders included) as Markdown."""
    indent = " " * _indent(rows[0])
    border = rows[0]
    starts = [m.start() for m in re.finditer(r"=+", border)]
    borders = [i for i, line in enumerate(rows) if _BORDER.match(line)]
    header_end = borders[1] if len(borders) == 3 else None

    def cells(line: str) -> list[str]:
        # a cell may run past its column into the gap: it ends at the first space from there
        cuts = [0]
        for start in starts[1:]:
            cut = max(start, cuts[-1])
            while cut < len(line) and line[cut - 1] != " ":
                cut += 1
            cuts.append(cut)
        cuts.append(len(line))
        return [line[a:b].strip() for a, b in zip(cuts, cuts[1:], strict=False)]

    records: list[tuple[bool, list[str]]] = []  # (is header, cells)
    for i, line in enumerate(rows):
        if i in borders or not line.strip():
            continue
        parts = cells(line)
        header = header_end is not None and i < header_end
        if records and not parts[0] and records[-1][0] == header:  # a continuation line
            records[-1] = (
                header,
                [f"{a} {b}".strip() for a, b in zip(records[-1][1], parts, strict=True)],
            )
        else:
            records.append((header, parts))
    out = []
    if header_end is None:  # no header: a list, one item per row
        for _, parts in records:
            out.append(f"{indent}- {parts[0]}: {' '.join(parts[1:])}")
        return out
    for n, (header, parts) in enumerate(records):
        out.append(indent + "| " + " | ".join(p.replace("|", "\\|") for p in parts) + " |")
        if header and (n + 1 == len(records) or not records[n + 1][0]):
            out.append(indent + "|" + "---|" * len(parts))
    return out


def _blocks(text: str) -> str:
    """Literal blocks, math blocks and simple tables as Markdown."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if _BORDER.match(line):  # a table ends at a border followed by a blank line or the end
            j = i + 1
            while j < len(lines) and not (
                _BORDER.match(lines[j]) and (j + 1 == len(lines) or not lines[j + 1].strip())
            ):
                j += 1
            out.extend(_table(lines[i : j + 1]))
            i = j + 1
            continue
        math = stripped.startswith(".. math::")
        if math or stripped.endswith("::"):
            base = _indent(line)
            if math:
                first = stripped[len(".. math::") :].strip()
                body = [first] if first else []
            else:
                head = line.rstrip()[:-2].rstrip()
                if head.strip():
                    out.append(head if line.rstrip().endswith(" ::") else head + ":")
                body = []
            j = i + 1
            block: list[str] = []
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            depth = min((_indent(b) for b in block if b.strip()), default=base)
            body += [b[depth:] for b in block if b.strip() or body]
            pad = " " * base
            out.append("")
            if math:
                content = "\n".join(body).strip()
                if "\\\\" in content or "&" in content:
                    content = "\\begin{aligned}\n" + content + "\n\\end{aligned}"
                out += [pad + "$$", *(pad + c for c in content.split("\n")), pad + "$$"]
            else:
                lang = "python" if _parses("\n".join(body)) else "text"
                out += [pad + "```" + lang, *(pad + b if b else "" for b in body), pad + "```"]
            out.append("")
            i = j
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _parses(code: str) -> bool:
    """Whether ``code`` is Python (highlighted as such; pseudo-code is shown as text)."""
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def convert(text: str, obj: griffe.Object) -> str:
    """One docstring's text as Markdown."""
    return _roles(_blocks(text), obj)


def _field_comment(lines: list[str], field: griffe.Object) -> str:
    """The comment lines right above ``field`` and the comment after it, as one text."""
    above = []
    i = field.lineno - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        above.insert(0, lines[i].strip().lstrip("#").strip())
        i -= 1
    last = lines[field.endlineno - 1]
    after = last.split("  # ", 1)[1].strip() if "  # " in last else ""
    if after.startswith(("fmt:", "noqa", "type:")):  # directives to tools, not documentation
        after = ""
    return html.escape(" ".join(filter(None, [*above, after])), quote=False)


def _field_docs(cls: griffe.Object) -> None:
    """Adds an ``Attributes:`` section made of the fields' comments to ``cls``'s docstring."""
    if cls.docstring is not None and "Attributes:" in cls.docstring.value:
        return
    lines = cls.lines_collection[cls.filepath]
    fields = [
        (name, _field_comment(lines, m))
        for name, m in cls.members.items()
        if not m.is_alias and m.is_attribute and m.lineno and not name.startswith("_")
    ]
    items = [f"    {name}: {comment}" for name, comment in fields if comment]
    if not items:
        return
    section = "\n".join(["Attributes:", *items])
    if cls.docstring is None:
        cls.docstring = griffe.Docstring("", parent=cls)
        cls.docstring.value = section  # as written: the constructor would dedent the items
    else:
        cls.docstring.value = f"{cls.docstring.value}\n\n{section}"


class RstDocstrings(griffe.Extension):
    """Rewrites every docstring of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        seen: set[str] = set()

        def visit(obj: griffe.Object) -> None:
            if obj.path in seen:
                return
            seen.add(obj.path)
            if obj.is_class:
                _field_docs(obj)
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value, obj)
            for member in obj.members.values():
                if not member.is_alias:
                    visit(member)

        visit(pkg)
