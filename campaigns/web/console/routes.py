"""The console's routes. Every page needs a signed-in operator (else a redirect to the
login page); every form is a POST carrying a CSRF token (else 403, nothing done).

Pages: ``/console/campaigns``, ``/console/runs/{id}``, ``/console/members/{id}``,
``/console/preview``, ``/console/plan``, ``/console/lift/{campaign}``,
``/console/control``; ``/console/login`` and ``/console/logout``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from babel.numbers import format_decimal
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from campaigns.config.settings import Settings
from campaigns.config.values import format_duration, parse_duration
from campaigns.config.zones import zone_info
from campaigns.delivery.message import MessageBuilder
from campaigns.delivery.rendering import Renderer
from campaigns.errors import ConfigError, LoyalcastError
from campaigns.planning import control
from campaigns.planning.dry_run import dry_run
from campaigns.tools.lift import WINDOW, Lift, campaign_lift, global_lift, occasions
from campaigns.tools.preview import member_by_id, plan_estimates, preview_member
from campaigns.tools.report import member_choices_and_links, member_history
from campaigns.web.console import queries
from campaigns.web.console.auth import LOGIN_COOKIE, SESSION_COOKIE, Guard, load_operators
from campaigns.web.console.charts import Interval, intervals, stacked_bars
from campaigns.web.console.texts import ConsoleWords
from channels.specs import MessageKind, channel_spec

log = logging.getLogger(__name__)
PAGES = Path(__file__).parent.parent / "pages" / "console"
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    # Inline styles only; no script at all; a preview's email renders in a sandboxed frame.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}
Page = Callable[..., Awaitable[Response]]


class Console:
    """The console over one database; ``router`` mounts it."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings, self.engine = settings, engine
        web = settings.web
        try:
            operators = load_operators(web.console_users_env)
        except ValueError as exc:
            raise ConfigError([f"web.console_users_env: {exc}"]) from None
        self.guard = Guard(settings.link_signer().key, operators, int(web.console_session.total_seconds()))
        self.secure = web.public_url.startswith("https://")
        self.zone = zone_info(settings.program.timezone)
        self.words = ConsoleWords(settings.program.default_locale)
        self.messages = MessageBuilder(settings, Renderer(settings.templates_path, settings.program, settings.rendering))
        self.summaries = queries.RunSummaries(engine, settings, self.messages, web.console_refresh)
        self.pages = Environment(loader=FileSystemLoader(PAGES), autoescape=select_autoescape(["html"]), auto_reload=False)
        self.pages.filters["local"] = self._local
        self.pages.filters["number"] = lambda n: format_decimal(n, locale=self.words.locale)
        router = self.router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)
        router.add_api_route("", self.home, methods=["GET"])
        router.add_api_route("/login", self.login_page, methods=["GET"])
        router.add_api_route("/login", self.login, methods=["POST"])
        router.add_api_route("/logout", self.signed(self.logout, form=True), methods=["POST"])
        router.add_api_route("/campaigns", self.signed(self.campaigns), methods=["GET"])
        router.add_api_route("/runs/{run_id}", self.signed(self.run), methods=["GET"])
        router.add_api_route("/members", self.signed(self.member_lookup), methods=["GET"])
        router.add_api_route("/members", self.signed(self.member_find, form=True), methods=["POST"])
        router.add_api_route("/members/{member_id}", self.signed(self.member), methods=["GET"])
        router.add_api_route("/preview", self.signed(self.preview_form), methods=["GET"])
        router.add_api_route("/preview", self.signed(self.preview, form=True), methods=["POST"])
        router.add_api_route("/plan", self.signed(self.plan_form), methods=["GET"])
        router.add_api_route("/plan", self.signed(self.plan, form=True), methods=["POST"])
        router.add_api_route("/lift/{campaign}", self.signed(self.lift), methods=["GET"])
        router.add_api_route("/lift/{campaign}", self.signed(self.lift, form=True), methods=["POST"])
        router.add_api_route("/control", self.signed(self.control), methods=["GET"])

    # -- signing in --------------------------------------------------------------------

    def signed(self, page: Page, *, form: bool = False) -> Page:
        """``page`` for a signed-in operator only; a form also needs its CSRF token."""

        async def guarded(request: Request) -> Response:
            cookie = request.cookies.get(SESSION_COOKIE)
            session = self.guard.session(cookie)
            if session is None or cookie is None:
                target = request.url.path if request.method == "GET" else "/console/campaigns"
                return RedirectResponse(f"/console/login?next={quote(target)}", status_code=303)
            values: dict[str, Any] = {}
            if form:
                data = await request.form()
                values = {key: str(value) for key, value in data.items()}
                if not self.guard.check_session_csrf(cookie, values.get("csrf")):
                    return self._render(request, "problem.html", 403, title="403", body=self.words("forbidden"))
            request.state.operator = session.operator
            request.state.csrf = self.guard.csrf_for_session(cookie)
            return await page(request, values, **request.path_params)

        guarded.__name__ = page.__name__
        return guarded

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/console/campaigns", status_code=303)

    async def login_page(
        self, request: Request, problem: str | None = None, status: int = 200, target: str | None = None
    ) -> Response:
        nonce, token = self.guard.login_nonce()
        target = request.query_params.get("next", "") if target is None else target
        if not self.guard.operators:
            problem = self.words("no_operators", variable=self.settings.web.console_users_env)
        response = self._render(request, "login.html", status, csrf=token, next=_local_path(target), problem=problem)
        response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict", secure=self.secure, path="/console")
        return response

    async def login(self, request: Request) -> Response:
        form = {key: str(value) for key, value in (await request.form()).items()}
        if not self.guard.check_login_csrf(request.cookies.get(LOGIN_COOKIE), form.get("csrf")):
            return self._render(request, "problem.html", 403, title="403", body=self.words("forbidden"))
        name = form.get("name", "")
        cookie = await run_in_threadpool(self.guard.login, name, form.get("password", ""))
        if cookie is None:
            log.warning("console: failed sign-in", extra={"operator": name[:64]})
            return await self.login_page(request, self.words("wrong_login"), 401, form.get("next", ""))
        log.info("console: %s signed in", name, extra={"operator": name})
        response = RedirectResponse(_local_path(form.get("next", "")) or "/console/campaigns", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=self.guard.lifetime,
            httponly=True,
            samesite="lax",
            secure=self.secure,
            path="/console",
        )
        response.delete_cookie(LOGIN_COOKIE, path="/console")
        return response

    async def logout(self, request: Request, form: dict[str, str]) -> Response:
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/console")
        return response

    # -- pages -------------------------------------------------------------------------

    async def campaigns(self, request: Request, form: dict[str, str]) -> Response:
        views = await run_in_threadpool(queries.campaigns, self.engine, self.settings, datetime.now(UTC))
        return self._render(request, "campaigns.html", 200, campaigns=views, segments=self.settings.segments)

    async def run(self, request: Request, form: dict[str, str], run_id: str) -> Response:
        number = _int(run_id)
        view = None if number is None else await run_in_threadpool(self.summaries.view, number)
        if view is None:
            return self._not_found(request)
        chart = (
            stacked_bars(
                view.sends,
                title=self.words("sends_over_time", bucket=self.words(view.bucket), zone=self.settings.program.timezone),
            )
            if view.sends
            else None
        )
        return self._render(request, "run.html", 200, run=view, chart=chart)

    async def member_lookup(self, request: Request, form: dict[str, str]) -> Response:
        return self._render(request, "member.html", 200, member=None, member_id=None)

    async def member_find(self, request: Request, form: dict[str, str]) -> Response:
        member_id = _int(form.get("member_id", ""))
        if member_id is None:
            return self._render(request, "member.html", 400, member=None, member_id=None, problem="member_id")
        return RedirectResponse(f"/console/members/{member_id}", status_code=303)

    async def member(self, request: Request, form: dict[str, str], member_id: str) -> Response:
        number = _int(member_id)
        if number is None:
            return self._not_found(request)
        found = await run_in_threadpool(self._member, number)
        if found is None:
            return self._not_found(request)
        return self._render(request, "member.html", 200, member_id=number, **found)

    def _member(self, member_id: int) -> dict[str, Any] | None:
        try:
            member = member_by_id(self.engine, member_id, None, datetime.now(UTC))
        except LoyalcastError:
            return None
        addresses = {channel: str(address) for channel, address in member.contacts.items() if address}
        return {
            "member": member,
            "history": member_history(self.engine, member_id),
            "choices": member_choices_and_links(self.engine, member_id),
            "suppressed": queries.member_suppressions(self.engine, addresses),
        }

    async def preview_form(self, request: Request, form: dict[str, str]) -> Response:
        return self._render(request, "preview.html", 200, form={}, previews=None)

    async def preview(self, request: Request, form: dict[str, str]) -> Response:
        campaign, member_id = form.get("campaign", ""), _int(form.get("member_id", ""))
        if campaign not in self.settings.campaigns:
            return self._render(request, "preview.html", 400, form=form, previews=None, problem="campaign")
        if member_id is None:
            return self._render(request, "preview.html", 400, form=form, previews=None, problem="member_id")
        try:
            previews = await run_in_threadpool(preview_member, self.engine, self.messages, campaign, member_id, datetime.now(UTC))
        except LoyalcastError as exc:
            return self._render(request, "preview.html", 404, form=form, previews=None, problem=str(exc))
        cards = [
            {"preview": p, "kind": channel_spec(p.channel).kind.value, "label": channel_spec(p.channel).label} for p in previews
        ]
        kinds = {"letter": MessageKind.LETTER.value, "markup": MessageKind.MARKUP.value}
        return self._render(request, "preview.html", 200, form=form, previews=cards, **kinds)

    async def plan_form(self, request: Request, form: dict[str, str]) -> Response:
        now = datetime.now(self.zone).strftime("%Y-%m-%dT%H:%M")
        return self._render(request, "plan.html", 200, form={"as_of": now}, plan=None)

    async def plan(self, request: Request, form: dict[str, str]) -> Response:
        campaign = form.get("campaign", "")
        if campaign not in self.settings.campaigns:
            return self._render(request, "plan.html", 400, form=form, plan=None, problem="campaign")
        try:
            as_of = datetime.fromisoformat(form.get("as_of", "")).replace(tzinfo=self.zone).astimezone(UTC)
        except ValueError:
            return self._render(request, "plan.html", 400, form=form, plan=None, problem="as_of")
        result, estimates = await run_in_threadpool(self._plan, campaign, as_of)
        return self._render(request, "plan.html", 200, form=form, plan=result, estimates=estimates)

    def _plan(self, campaign: str, as_of: datetime) -> tuple[Any, Any]:
        result = dry_run(self.engine, self.settings, campaign, as_of=as_of)
        return result, list(plan_estimates(self.engine, self.messages, result, as_of).values())

    async def lift(self, request: Request, form: dict[str, str], campaign: str) -> Response:
        if campaign not in self.settings.campaigns:
            return self._not_found(request)
        occasion = form.get("occasion") or None
        try:
            window = parse_duration(form.get("window") or format_duration(WINDOW))
        except ValueError:
            window = None
        if window is None or window <= timedelta(0):
            return self._render(request, "lift.html", 400, campaign=campaign, result=None, form=form, problem="window")
        result, known = await run_in_threadpool(self._lift, campaign, occasion, window)
        chart = self._lift_chart(result)
        return self._render(request, "lift.html", 200, campaign=campaign, result=result, chart=chart, occasions=known, form=form)

    def _lift(self, campaign: str, occasion: str | None, window: timedelta) -> tuple[Lift, list[str]]:
        result = campaign_lift(self.engine, self.settings, campaign, occasion=occasion, window=window)
        return result, [o.occasion for o in occasions(self.engine, campaign)]

    def _lift_chart(self, result: Lift) -> str | None:
        if not result.metrics:
            return None
        rows = [
            Interval(
                self.words(f"metric.{m.name}"),
                m.difference,
                m.low,
                m.high,
                f"{m.signed(m.difference)} ({m.signed(m.low)} .. {m.signed(m.high)})",
                m.verdict,
            )
            for m in result.metrics
        ]
        return intervals(rows, title=f"{result.subject}: {self.words('difference')}, {self.words('ci')}")

    async def control(self, request: Request, form: dict[str, str]) -> Response:
        found = await run_in_threadpool(self._control)
        return self._render(request, "control.html", 200, **found)

    def _control(self) -> dict[str, Any]:
        settings, now = self.settings, datetime.now(UTC)
        with self.engine.connect() as conn:
            report = control.group_report(conn, settings, now)
        if report is None:
            return {"draw": None}
        result = global_lift(self.engine, settings, now=now)
        return {
            "draw": report.draw,
            "period": report.period,
            "strata": report.strata,
            "turnover": report.turnover,
            "result": result,
            "chart": self._lift_chart(result),
        }

    # -- rendering ---------------------------------------------------------------------

    def _local(self, value: datetime | None, pattern: str = "%Y-%m-%d %H:%M") -> str:
        return value.astimezone(self.zone).strftime(pattern) if value else ""

    def _not_found(self, request: Request) -> Response:
        return self._render(request, "problem.html", 404, title="404", body=self.words("not_found"))

    def _render(self, request: Request, page: str, status: int, **values: Any) -> Response:
        html = self.pages.get_template(page).render(
            t=self.words,
            program=self.settings.program,
            campaign_names=list(self.settings.campaigns),
            operator=getattr(request.state, "operator", None),
            csrf=values.pop("csrf", getattr(request.state, "csrf", "")),
            format_duration=format_duration,
            **values,
        )
        return HTMLResponse(html, status_code=status, headers=HEADERS)


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) <= 18 else None


def _local_path(target: str) -> str:
    """``target`` if it is a path of the console (never another site), else ``""``."""
    return target if target.startswith("/console/") and "//" not in target and "\\" not in target else ""
