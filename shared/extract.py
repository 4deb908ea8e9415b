"""What trawl reads out of an HTML page: title, main text, markdown, absolute links and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urldefrag, urljoin

from markdownify import markdownify
from selectolax.lexbor import LexborHTMLParser

_NOISE = "script, style, noscript, template, svg, iframe"


@dataclass(slots=True)
class Extracted:
    title: str | None
    text: str
    links: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)


def _meta(tree: LexborHTMLParser, selector: str) -> str | None:
    node = tree.css_first(selector)
    if node is None:
        return None
    value = node.attributes.get("content") or node.attributes.get("href")
    return value.strip() if value else None


def extract(
    html: str | bytes, base_url: str, *, text: bool = True, links: bool = True, metadata: bool = True
) -> Extracted:
    """Read a page; only the parts asked for are computed (links cost a URL join each, on the hot path)."""
    tree = LexborHTMLParser(html)
    title_node = tree.css_first("title")
    title = title_node.text(strip=True) if title_node is not None else None
    found = Extracted(title=title, text="", links=[], metadata={"title": title})
    if links:
        found.links = _links(tree, base_url)
    if metadata:
        found.metadata = _metadata(tree, title)
    if text:
        found.text = _text(tree)
    return found


def _links(tree: LexborHTMLParser, base_url: str) -> list[str]:
    base_node = tree.css_first("base[href]")
    base = urljoin(base_url, base_node.attributes.get("href") or "") if base_node is not None else base_url
    found: dict[str, None] = {}
    for a in tree.css("a[href]"):
        href = (a.attributes.get("href") or "").strip()
        if not href or href.startswith(("javascript:", "mailto:", "tel:", "data:", "#")):
            continue
        absolute = urldefrag(urljoin(base, href)).url
        if absolute.startswith(("http://", "https://")):
            found[absolute] = None
    return list(found)


def _metadata(tree: LexborHTMLParser, title: str | None) -> dict[str, Any]:
    html_node = tree.css_first("html")
    return {
        "title": title,
        "description": _meta(tree, 'meta[name="description"]'),
        "canonical": _meta(tree, 'link[rel="canonical"]'),
        "language": (html_node.attributes.get("lang") if html_node is not None else None) or None,
        "og": {
            prop.removeprefix("og:"): node.attributes.get("content")
            for node in tree.css('meta[property^="og:"]')
            if (prop := node.attributes.get("property") or "")
        },
    }


def _text(tree: LexborHTMLParser) -> str:
    body = tree.body
    if body is None:
        return ""
    for node in body.css(_NOISE):
        node.decompose()
    return body.text(separator="\n", strip=True)


def to_markdown(html: str) -> str:
    return markdownify(html, heading_style="ATX", strip=["script", "style", "noscript"]).strip()
