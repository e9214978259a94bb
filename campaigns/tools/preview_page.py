"""``loyalcast preview --html``: one page with a member's messages side by side."""

from __future__ import annotations

import html

from campaigns.tools.preview import ChannelPreview
from channels.specs import MessageKind, channel_spec


def preview_page(member_id: int, campaign: str, previews: list[ChannelPreview]) -> str:
    """One HTML page with every channel's message side by side: a letter as it renders
    (in a sandboxed frame), a text with its segments, a markup message as it shows."""
    e = html.escape
    cards = []
    for preview in previews:
        body: str
        kind = channel_spec(preview.channel).kind
        if preview.problem:
            body = f'<p class="error">{e(preview.problem)}</p>'
        elif kind is MessageKind.LETTER and preview.rendered:
            inner = preview.rendered.html or f"<pre>{e(preview.rendered.text or '')}</pre>"
            body = (
                f'<p class="subject">{e(preview.rendered.subject or "")}</p>'
                f'<iframe title="{e(preview.channel)}" sandbox="" srcdoc="{e(inner, quote=True)}"></iframe>'
            )
            if preview.rendered.text:
                body += f"<details><summary>text part</summary><pre>{e(preview.rendered.text)}</pre></details>"
        elif kind is MessageKind.TEXT and preview.rendered:
            body = f'<div class="bubble">{e(preview.rendered.text or "")}</div>'
            if preview.length:
                note = f"{preview.length.segments} segment(s), {preview.length.encoding}, {preview.length.characters} characters"
                body += f'<p class="meta">{e(note)}</p>'
            if preview.over_budget:
                body += f'<p class="error">{e(preview.over_budget)}</p>'
        elif kind is MessageKind.MARKUP and preview.rendered:
            # A markup message's HTML subset is already escaped where it holds member data.
            body = f'<div class="bubble markup">{preview.rendered.text or ""}</div>'
        elif preview.rendered:
            body = f'<div class="bubble">{e(preview.rendered.shown)}</div>'
        else:
            body = ""
        cards.append(
            f'<section class="channel" id="{e(preview.channel)}"><h2>{e(preview.channel)}</h2>'
            f'<p class="meta">reachable: {e(preview.reachable)}</p>{body}</section>'
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>loyalcast preview: {e(campaign)} for member {member_id}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #f4f4f4; }}
main {{ display: flex; gap: 1rem; align-items: flex-start; }}
.channel {{ background: #fff; border-radius: 8px; padding: 1rem; flex: 1; min-width: 0; }}
iframe {{ width: 100%; height: 420px; border: 1px solid #ddd; }}
.bubble {{ background: #e7f3ff; border-radius: 12px; padding: .75rem; white-space: pre-wrap; }}
.markup {{ background: #effdde; }}
.meta {{ color: #666; font-size: .85rem; }}
.error {{ color: #b00020; }}
.subject {{ font-weight: bold; }}
</style>
</head>
<body>
<h1>{e(campaign)} for member {member_id}</h1>
<main>
{"".join(cards)}
</main>
</body>
</html>
"""
