"""Members' pages: the signed unsubscribe link and the preference centre.

``GET /u/<token>`` shows, in the member's locale, what they receive per channel and
category, with one button to stop the kind of message the link came in and one to stop
everything; it changes nothing (mail scanners prefetch links). ``POST /u/<token>``:

- ``List-Unsubscribe=One-Click`` (RFC 8058, what mail providers post for the
  ``List-Unsubscribe-Post`` header): unsubscribes at once, answers 200;
- ``action=this`` / ``all`` / ``resubscribe`` / ``save`` (the page's forms, ``keep``
  listing the ``channel:category`` boxes left ticked): records the choice and redirects
  back to the page (303) with a confirmation.

A token that does not verify gets a 400 page and changes nothing; repeating a POST
records the same choice again, which is harmless. The member is identified by the
token alone: these pages set no cookies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from babel.dates import format_date
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine, select
from starlette.concurrency import run_in_threadpool

from campaigns import metrics
from campaigns.config.links import UNSUBSCRIBE, LinkClaim
from campaigns.config.settings import Settings
from campaigns.config.values import ANY, is_marketing
from campaigns.errors import InvalidLink
from campaigns.store import contacts as linked_contacts
from campaigns.store.models import members
from campaigns.store.preferences import Choice, choose, deciding, member_choices
from campaigns.web.texts import Words
from channels.specs import CHANNELS, channel_spec

log = logging.getLogger(__name__)
PAGES = Path(__file__).parent / "pages"
ACTIONS = ("this", "all", "resubscribe", "save")
FORM_SCHEMA = {
    "requestBody": {
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "List-Unsubscribe": {"type": "string", "enum": ["One-Click"]},
                        "action": {"type": "string", "enum": list(ACTIONS)},
                        "keep": {"type": "array", "items": {"type": "string"}},
                    },
                }
            }
        }
    }
}


@dataclass(frozen=True)
class Cell:
    subscribed: bool
    since: str | None


class MemberPages:
    """The pages over one database; ``router`` mounts them."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings, self.engine = settings, engine
        self.pages = Environment(loader=FileSystemLoader(PAGES), autoescape=select_autoescape(["html"]), auto_reload=False)
        self.router = APIRouter(tags=["members"])
        self.router.add_api_route(
            "/u/{token}", self.show, methods=["GET"], response_class=HTMLResponse, summary="A member's unsubscribe page"
        )
        self.router.add_api_route(
            "/u/{token}",
            self.submit,
            methods=["POST"],
            response_class=HTMLResponse,
            summary="One-click unsubscribe (RFC 8058) or the page's choices",
            openapi_extra=FORM_SCHEMA,
            responses={303: {"description": "choice recorded; back to the page"}, 400: {"description": "invalid link or form"}},
        )

    # -- routes ----------------------------------------------------------------------

    def show(self, request: Request, token: str, done: str | None = None) -> Response:
        claim = self._claim(token)
        if isinstance(claim, Response):
            return claim
        with self.engine.connect() as conn:
            member = conn.execute(select(members).where(members.c.id == claim.member_id)).first()
            if member is None:
                return self._problem(Words(self.settings.program.default_locale), "gone", 410)
            choices = member_choices(conn, claim.member_id)
            linked = {row.channel for row in linked_contacts.linked(conn, claim.member_id)}
        words = Words(self._locale(member))
        return self._page(words, member, claim, choices, linked, self._done_text(words, claim, done))

    async def submit(self, request: Request, token: str) -> Response:
        claim = self._claim(token)
        if isinstance(claim, Response):
            return claim
        try:
            form = await request.form()
            one_click = form.get("List-Unsubscribe")
            action = form.get("action")
            keep = {str(value) for value in form.getlist("keep")}
        except Exception:  # a body the form parser cannot read (bad multipart, bad encoding)
            return self._problem(Words(self.settings.program.default_locale), "bad_form", 400)
        if one_click is not None:
            if one_click != "One-Click":
                return self._problem(Words(self.settings.program.default_locale), "bad_form", 400)
            action = "this"
        elif action not in ACTIONS:
            return self._problem(Words(self.settings.program.default_locale), "bad_form", 400)
        source = "one-click" if one_click else "link"
        member = await run_in_threadpool(self._record, claim, str(action), keep, source)
        if member is None:
            return self._problem(Words(self.settings.program.default_locale), "gone", 410)
        metrics.preference_changed(source if one_click else str(action))
        if one_click:
            words = Words(self._locale(member))
            return self._render("problem.html", words, 200, title=words("done_this", **self._names(words, claim)), body="")
        return RedirectResponse(f"{request.url.path}?done={action}", status_code=303)

    # -- the choice ----------------------------------------------------------------------

    def _record(self, claim: LinkClaim, action: str, keep: set[str], source: str) -> Any:
        """Record the choice in one transaction; the member's row (None: no such member)."""
        with self.engine.begin() as conn:
            member = conn.execute(select(members).where(members.c.id == claim.member_id)).first()
            if member is not None:
                self._choose(conn, member, claim, action, keep, source, datetime.now(UTC))
            return member

    def _choose(self, conn: Any, member: Any, claim: LinkClaim, action: str, keep: set[str], source: str, now: datetime) -> None:
        channel, category = claim.channel or ANY, claim.category or ANY
        if action == "this":
            choose(conn, claim.member_id, channel, category, subscribed=False, source=source, now=now)
        elif action == "resubscribe":
            choose(conn, claim.member_id, channel, category, subscribed=True, source=source, now=now)
        elif action == "all":
            choose(conn, claim.member_id, ANY, ANY, subscribed=False, source=source, now=now)
        else:
            linked = {row.channel for row in linked_contacts.linked(conn, claim.member_id)}
            for box_channel in self._channels(member, claim, linked):
                for box_category in self._categories(claim):
                    wanted = f"{box_channel}:{box_category}" in keep
                    choose(conn, claim.member_id, box_channel, box_category, subscribed=wanted, source="preferences", now=now)

    # -- what the page shows ---------------------------------------------------------------

    def _categories(self, claim: LinkClaim) -> list[str]:
        """The program's marketing categories (campaigns, caps, triggered default)."""
        found = {c.category for c in self.settings.campaigns.values()} | {r.category for r in self.settings.caps}
        found.add(self.settings.triggered.category)
        if claim.category and claim.category != ANY:
            found.add(claim.category)
        return sorted((c for c in found if is_marketing(c)), key=lambda c: (c != "marketing", c))

    @staticmethod
    def _channels(member: Any, claim: LinkClaim, linked: set[str]) -> list[str]:
        """Channels the member can be reached on (an address in the program's table or a
        linked one), and the link's own channel."""
        shown = []
        for name, spec in CHANNELS.items():
            address = getattr(member, spec.contact, None) if member is not None else None
            if (address not in (None, "")) or name in linked or name == claim.channel:
                shown.append(name)
        return shown

    def _page(
        self, words: Words, member: Any, claim: LinkClaim, choices: list[Choice], linked: set[str], done: str | None
    ) -> Response:
        channels = self._channels(member, claim, linked)
        categories = self._categories(claim)
        grid = {}
        for channel in channels:
            for category in categories:
                choice = deciding(choices, channel, category)
                since = format_date(choice.changed_at.date(), "medium", locale=words.locale) if choice else None
                grid[(channel, category)] = Cell(choice is None or choice.subscribed, since)
        this = None
        if claim.channel not in (None, ANY) and claim.category not in (None, ANY):
            choice = deciding(choices, claim.channel or "", claim.category or "")
            this = {"channel": claim.channel, "category": claim.category, "subscribed": choice is None or choice.subscribed}
        return self._render(
            "preferences.html",
            words,
            200,
            name=member.first_name or "",
            this=this,
            channels=channels,
            categories=categories,
            grid=grid,
            done=done,
        )

    def _done_text(self, words: Words, claim: LinkClaim, done: str | None) -> str | None:
        if done not in ACTIONS:
            return None
        if done in ("this", "resubscribe") and claim.channel in (None, ANY):
            done = "save"
        return words(f"done_{done}", **self._names(words, claim))

    @staticmethod
    def _names(words: Words, claim: LinkClaim) -> dict[str, str]:
        channel = claim.channel if claim.channel not in (None, ANY) else None
        category = claim.category if claim.category not in (None, ANY) else None
        return {
            "channel": words.channel(channel) if channel else "",
            "category": words.category(category) if category else "",
        }

    def _claim(self, token: str) -> LinkClaim | Response:
        try:
            claim = self.settings.link_signer().verify(token, UNSUBSCRIBE)
            if claim.channel not in (None, ANY):
                channel_spec(claim.channel or "")
        except (InvalidLink, KeyError):
            metrics.invalid_link()
            return self._problem(Words(self.settings.program.default_locale), "invalid", 400)
        return claim

    def _locale(self, member: Any) -> str:
        program = self.settings.program
        return member.locale if member.locale in program.locales else program.default_locale

    def _problem(self, words: Words, kind: str, status: int) -> Response:
        return self._render("problem.html", words, status, title=words(f"{kind}_title"), body=words(f"{kind}_body"))

    def _render(self, page: str, words: Words, status: int, **values: Any) -> Response:
        html = self.pages.get_template(page).render(words=words, program=self.settings.program.name, **values)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
