"""The R4 narrative rules (`Narrative.div`, invariants txt-1 and txt-2, `htmlChecks()`).

txt-1: the narrative is well-formed XHTML whose root is a `div` in the XHTML namespace, and
holds only the basic HTML formatting elements and attributes of HTML 4.0 chapters 7-11
and 15, `a` (name or href), `img` and style attributes: no scripts, forms, frames, event
handlers (`onclick`), `javascript:` links, DTDs or entities beyond XML's five.
txt-2: it has some non-whitespace content (text or an image).

Why the standard library's parser (expat through ElementTree): the narrative must be
well-formed XML, which is exactly what it checks; a DTD is refused before parsing, so no
entity expansion happens.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree

XHTML_NS = "http://www.w3.org/1999/xhtml"
_NS_PREFIX = "{" + XHTML_NS + "}"

ELEMENTS = frozenset({
    "p", "br", "div", "h1", "h2", "h3", "h4", "h5", "h6", "a", "span", "b", "em", "i",
    "strong", "small", "big", "tt", "dfn", "q", "var", "abbr", "acronym", "cite",
    "blockquote", "hr", "address", "bdo", "kbd", "sub", "sup", "ul", "ol", "li", "dl", "dt",
    "dd", "pre", "table", "caption", "colgroup", "col", "thead", "tr", "tfoot", "tbody", "th",
    "td", "code", "samp", "img", "map", "area", "ins", "del", "s", "u", "strike", "font",
    "center",
})
COMMON_ATTRIBUTES = frozenset({
    "title", "style", "class", "id", "lang", "xml:lang", "dir", "accesskey", "tabindex",
    "{http://www.w3.org/XML/1998/namespace}lang",
})
ELEMENT_ATTRIBUTES = {
    "a": {"href", "name", "rel", "rev", "shape", "coords", "charset", "type", "hreflang"},
    "img": {"src", "alt", "height", "width", "longdesc", "usemap", "ismap", "align",
            "border", "hspace", "vspace"},
    "table": {"summary", "width", "border", "frame", "rules", "cellspacing", "cellpadding",
              "align", "bgcolor"},
    "th": {"abbr", "axis", "headers", "scope", "rowspan", "colspan", "align", "valign",
           "char", "charoff", "nowrap", "bgcolor", "width", "height"},
    "col": {"span", "width", "align", "valign", "char", "charoff"},
    "ol": {"start", "type", "compact"},
    "ul": {"type", "compact"},
    "li": {"value", "type"},
    "q": {"cite"},
    "blockquote": {"cite"},
    "ins": {"cite", "datetime"},
    "del": {"cite", "datetime"},
    "area": {"shape", "coords", "href", "nohref", "alt"},
    "map": {"name"},
    "font": {"size", "color", "face"},
    "p": {"align"},
    "div": {"align"},
    "hr": {"align", "noshade", "size", "width"},
    "br": {"clear"},
    "pre": {"width"},
}
for _cell in ("td",):
    ELEMENT_ATTRIBUTES[_cell] = ELEMENT_ATTRIBUTES["th"]
for _group in ("colgroup", "thead", "tbody", "tfoot", "tr"):
    ELEMENT_ATTRIBUTES[_group] = {"align", "valign", "char", "charoff", "span", "width",
                                  "bgcolor"}
for _heading in ("h1", "h2", "h3", "h4", "h5", "h6", "caption"):
    ELEMENT_ATTRIBUTES[_heading] = {"align"}

_SCRIPT_URL = re.compile(r"^\s*(javascript|vbscript|data:text/html)", re.IGNORECASE)


def narrative_problems(div: str) -> list[tuple[str, str]]:
    """(invariant key, message) for each problem of a narrative's `div` (empty: fine)."""
    if "<!DOCTYPE" in div or "<!ENTITY" in div:
        return [("txt-1", "The narrative must not hold a DTD or entity declarations")]
    try:
        root = ElementTree.fromstring(div)
    except ElementTree.ParseError as exc:
        return [("txt-1", f"The narrative is not well-formed XHTML: {exc}")]
    problems: list[tuple[str, str]] = []
    if root.tag != _NS_PREFIX + "div":
        problems.append(
            ("txt-1", f"The narrative's root must be a div in the namespace {XHTML_NS} "
                      f"(found {root.tag})")
        )
    has_content = False
    for node in root.iter():
        tag = node.tag if isinstance(node.tag, str) else ""
        name = tag[len(_NS_PREFIX):] if tag.startswith(_NS_PREFIX) else tag
        if not tag.startswith(_NS_PREFIX) or name not in ELEMENTS:
            problems.append(("txt-1", f"The element <{name}> is not allowed in a narrative"))
        allowed = ELEMENT_ATTRIBUTES.get(name, set())
        for attribute, value in node.attrib.items():
            if attribute not in COMMON_ATTRIBUTES and attribute not in allowed:
                problems.append(
                    ("txt-1", f"The attribute {attribute} is not allowed on <{name}> in a "
                              "narrative")
                )
            elif attribute in ("href", "src") and _SCRIPT_URL.match(value):
                problems.append(("txt-1", f"A script URL is not allowed in a narrative "
                                          f"(<{name} {attribute}>)"))
        if name == "img" or (node.text and node.text.strip()) or (
            node is not root and node.tail and node.tail.strip()
        ):
            has_content = True
    if not has_content:
        problems.append(("txt-2", "The narrative has no content (text or image)"))
    return problems
