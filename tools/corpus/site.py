"""Render pages to HTML with deliberately varied markup.

Real pages reference images in many ways; the miner must cope with all of them, so each
page picks (by a hash of its id) one of: plain relative ``src``, ``srcset`` with a
thumbnail, ``<picture>`` with a WebP/PNG alternative, lazy ``data-src`` with a
placeholder, or a ``<base href>`` with base-relative URLs.
"""

from __future__ import annotations

import html
import posixpath
from dataclasses import dataclass
from urllib.parse import urlparse

from tools.corpus.model import Page, stable_hash

MODES = ("plain", "srcset", "picture", "lazy", "base")
PLACEHOLDER = "data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw=="
CSS = ("body{font-family:Georgia,serif;max-width:60rem;margin:auto;padding:1rem}"
       "figure{display:inline-block;margin:.5rem;max-width:16rem;vertical-align:top}"
       "figure img{max-width:100%;height:auto}figcaption{font-size:.9rem}")


@dataclass
class ImgRef:
    """Where a rendered asset and its optional alternatives live in the site."""

    path: str  # site-relative, e.g. img/emoji/noto/1F600.png
    width: int
    height: int
    thumb: str | None = None  # small JPEG for srcset
    alt_format: str | None = None  # same picture in another format for <picture>


def page_mode(page: Page) -> str:
    return MODES[stable_hash("mode:" + page.id) % len(MODES)]


def _esc(s: str) -> str:
    return html.escape(s, quote=True)


def _rel(from_page: str, target: str) -> str:
    return posixpath.relpath(target, posixpath.dirname(from_page))


def render_page(page: Page, refs: dict[str, ImgRef], alts: dict[str, str], base_url: str,
                nav: list[tuple[str, str]]) -> str:
    mode = page_mode(page)
    root = urlparse(base_url).path or "/"  # the site may live below a path prefix

    def url(target: str) -> str:
        if mode == "base":
            return target  # resolved against <base href="/">
        if stable_hash("abs:" + page.id) % 4 == 0:
            return root + target  # root-relative
        return _rel(page.path, target)

    def figure(aid: str, caption: str, text: str) -> str:
        r = refs[aid]
        alt = _esc(alts[aid])
        size = f'width="{r.width}" height="{r.height}"'
        if mode == "srcset" and r.thumb:
            img = (f'<img src="{url(r.thumb)}" srcset="{url(r.thumb)} 128w, {url(r.path)} '
                   f'{r.width}w" sizes="(max-width: 600px) 128px, {r.width}px" alt="{alt}" '
                   f"{size}>")
        elif mode == "picture" and r.alt_format:
            mime = "image/webp" if r.alt_format.endswith(".webp") else "image/png"
            img = (f'<picture><source srcset="{url(r.alt_format)}" type="{mime}">'
                   f'<img src="{url(r.path)}" alt="{alt}" {size}></picture>')
        elif mode == "lazy":
            img = (f'<img src="{PLACEHOLDER}" data-src="{url(r.path)}" class="lazyload" '
                   f'loading="lazy" alt="{alt}" {size}>')
        else:
            img = f'<img src="{url(r.path)}" alt="{alt}" {size}>'
        para = f"\n  <p>{_esc(text)}</p>" if text else ""
        return f"<figure>\n  {img}\n  <figcaption>{_esc(caption)}</figcaption>{para}\n</figure>"

    head = [f"<title>{_esc(page.title)}</title>",
            '<meta charset="utf-8">',
            f'<link rel="canonical" href="{_esc(base_url + page.path)}">',
            f"<style>{CSS}</style>"]
    if mode == "base":
        head.insert(0, f'<base href="{_esc(root)}">')
    body = [f"<h1>{_esc(page.title)}</h1>"]
    body += [f"<p>{_esc(p)}</p>" for p in page.intro]
    body += [figure(f.asset_id, f.caption, f.text) for f in page.figures]
    for heading, figs in page.sections:
        if figs:
            body.append(f"<h2>{_esc(heading)}</h2>")
            body += [figure(f.asset_id, f.caption, f.text) for f in figs]
    links = "".join(
        f'<li><a href="{_esc(url(p) if mode == "base" else _rel(page.path, p))}">{_esc(t)}</a></li>'
        for p, t in nav)
    home, credits = (("index.html", "credits.html") if mode == "base" else
                     (_rel(page.path, "index.html"), _rel(page.path, "credits.html")))
    body.append(f'<nav><h2>See also</h2><ul>{links}</ul><p><a href="{home}">Home</a> · '
                f'<a href="{credits}">Credits and licences</a></p></nav>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n" + "\n".join(head) +
            "\n</head>\n<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


def render_index(pages: list[Page]) -> str:
    groups: dict[str, list[Page]] = {}
    for p in pages:
        groups.setdefault(p.kind, []).append(p)
    parts = ["<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             "<title>Open picture atlas</title></head><body><h1>Open picture atlas</h1>",
             "<p>Landmarks, animals, flags, emoji and clip art from openly licensed "
             "collections. See <a href=\"credits.html\">credits and licences</a>.</p>"]
    for kind in sorted(groups):
        parts.append(f"<h2>{_esc(kind)}</h2><ul>")
        parts += [f'<li><a href="{_esc(p.path)}">{_esc(p.title)}</a></li>'
                  for p in sorted(groups[kind], key=lambda p: p.id)]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_credits(sources: dict[str, dict[str, str]], rows: list[tuple[str, str, str, str]],
                   failed: dict[str, str]) -> str:
    parts = ["<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             "<title>Credits and licences</title></head><body><h1>Credits and licences</h1>",
             "<h2>Sources</h2><ul>"]
    for key in sorted(sources):
        s = sources[key]
        parts.append(f"<li><b>{_esc(s['name'])}</b> — licence: {_esc(s['license'])}"
                     + (f" — {_esc(s['url'])}" if s.get("url") else "") + "</li>")
    parts.append("</ul>")
    if failed:
        parts.append("<h2>Sources not included in this build</h2><ul>")
        parts += [f"<li>{_esc(k)}: {_esc(v)}</li>" for k, v in sorted(failed.items())]
        parts.append("</ul>")
    parts.append("<h2>Per-image credits</h2><table><tr><th>Image</th><th>Source</th>"
                 "<th>Credit</th><th>Licence</th></tr>")
    parts += [f'<tr><td><a href="{_esc(path)}">{_esc(path)}</a></td><td>{_esc(src)}</td>'
              f"<td>{_esc(credit)}</td><td>{_esc(lic)}</td></tr>"
              for path, src, credit, lic in rows]
    parts.append("</table></body></html>\n")
    return "\n".join(parts)


def render_sitemap(base_url: str, paths: list[str]) -> str:
    urls = "".join(f"<url><loc>{_esc(base_url + p)}</loc></url>\n" for p in sorted(paths))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n' + urls + "</urlset>\n")
