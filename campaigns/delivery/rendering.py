"""Rendering member messages from ``templates/`` with Jinja2.

Layout: ``templates/<name>/<part>``, the parts of each channel named by its spec
(``channels.specs``: ``<channel>.subject``, ``.txt`` and ``.html`` for a letter, one
``.txt`` or ``.html`` body, or an approved template's ``.toml`` declaration
(``campaigns.delivery.approved``) and an optional ``.txt``). A locale variant lives in
``templates/<name>/<locale>/<part>``; lookup tries the member's locale, then the
program's default locale, then the unlocalized file.

The environment is sandboxed (a template cannot reach Python internals) and uses
``StrictUndefined`` (a misspelt variable is an error, never an empty string). ``.html``
parts are autoescaped, so member data cannot inject markup into any message.

Every render has a budget (``[rendering]``): ``time_limit`` per part, enforced by
interrupting the thread (``campaigns.delivery.budget``), and ``max_output`` characters
per part, checked as the output grows and before a template builds a big string
(``*``, ``**``, ``%``, ``format``, ``center``, ``indent``, ``replace``). Runaway loops,
huge strings and recursion become a RenderBudgetExceeded naming the file and line.

Filters (the member's locale and time zone come from the render context):

- ``points``: ``1250|points`` -> ``1 250 баллов`` / ``1,250 points`` (CLDR plurals);
- ``number``: locale grouping and decimal sign;
- ``money``: an amount in the program's currency (``1 500,00 ₽``, ``RUB1,500.00``, as CLDR writes them);
- ``date``: a UTC timestamp or date shown in the member's zone as the locale writes a
  day and month ("30 ноября", "November 30"), or in a Babel ``pattern``;
- ``relative_date``: the day relative to the member's today ("завтра", "через 3 дня");
- ``short(n)``: at most ``n`` characters, cut at a word and ended with "…" (names in
  texts billed per segment).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from babel import Locale
from babel.dates import format_date, format_skeleton, format_timedelta
from babel.numbers import format_currency, format_decimal
from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplatesNotFound,
    TemplateSyntaxError,
    pass_context,
    select_autoescape,
)
from jinja2 import (
    TemplateError as JinjaTemplateError,
)
from jinja2.runtime import Context

from campaigns.config.sections import ProgramSettings, RenderingSettings
from campaigns.config.zones import zone_info
from campaigns.delivery.approved import Declaration, parse_declaration
from campaigns.delivery.budget import WATCHDOG, BudgetedSandbox, RenderTimeout
from campaigns.errors import RenderBudgetExceeded, TemplateError
from channels.base import ApprovedTemplate
from channels.specs import MessageKind, channel_spec


@dataclass(frozen=True)
class Rendered:
    """One member's message on one channel, ready for a transport."""

    channel: str
    subject: str | None
    text: str | None
    html: str | None
    files: tuple[str, ...]
    """Template files used, relative to the templates folder (for previews and errors)."""
    approved: ApprovedTemplate | None = None
    """The provider-approved template, filled (channels of kind ``approved``)."""

    @property
    def shown(self) -> str:
        """The message as people read it in a preview: the text, else the HTML, and an
        approved template with its parameters."""
        body = self.text or self.html or ""
        if self.approved is None:
            return body
        template = self.approved.describe()
        return f"{template}\n\nfree text, inside the member's session window:\n{body}" if body else template


class Renderer:
    """Renders templates for members. Thread-safe; compiled templates are cached.

    Templates are read once per process: which file serves a (template, part, locale)
    is looked up once and kept, with the compiled template (a running worker does not
    see edits; restart it, as after any settings change).
    """

    def __init__(self, templates_dir: Path, program: ProgramSettings, budget: RenderingSettings | None = None) -> None:
        self.templates_dir = templates_dir
        self.program = program
        self.budget = budget or RenderingSettings()
        # Filled as renders ask; two threads may compile the same template once each.
        self._found: dict[tuple[str, str, str], Template | None] = {}
        self._declared: dict[tuple[str, str, str], Declaration | None] = {}
        self._timeouts: dict[str, int] = {}
        self.env = BudgetedSandbox(
            self.budget.max_output,
            loader=FileSystemLoader(str(templates_dir)),
            undefined=StrictUndefined,
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            auto_reload=False,
        )
        self.env.filters.update(
            points=_points_filter(program),
            number=_number_filter,
            money=_money_filter(program),
            date=_date_filter,
            relative_date=_relative_date_filter,
            short=short,
        )
        self.env.guard_filters()

    def candidates(self, name: str, part: str, locale: str) -> list[str]:
        names = [f"{name}/{locale}/{part}", f"{name}/{self.program.default_locale}/{part}", f"{name}/{part}"]
        return list(dict.fromkeys(names))

    def render(self, name: str, channel: str, context: dict[str, Any]) -> Rendered:
        """Render every part of ``channel`` for one member.

        ``context`` must hold ``locale`` and ``timezone`` (used by the filters) besides
        whatever the templates use. Raises TemplateError naming file and line.
        """
        locale = context["locale"]
        spec = channel_spec(channel)
        rendered: list[str | None] = []
        files = []
        approved: ApprovedTemplate | None = None
        for part in spec.parts:
            if part.endswith(".toml"):
                declaration = self._declaration(name, part, locale)
                rendered.append(None if declaration is None else declaration.file)
                if declaration is not None:
                    approved = declaration.fill(self._render_template, context)
                    files.append(declaration.file)
                continue
            template = self._template(name, part, locale)
            if template is None:
                rendered.append(None)
                continue
            rendered.append(self._render_template(template, context))
            files.append(template.name or part)
        for group in spec.required_parts:
            if all(rendered[spec.parts.index(part)] is None for part in group):
                problem = f"no {group[0]} for locale {locale!r}" if len(group) == 1 else f"needs {' or '.join(group)}"
                raise TemplateError(problem, file=f"{name}/{group[0]}")
        if spec.kind is MessageKind.LETTER:
            subject, text, html = rendered
            return Rendered(channel, " ".join((subject or "").split()), text, html, tuple(files))
        if spec.kind is MessageKind.APPROVED:
            text = (rendered[1] or "").strip() or None
            return Rendered(channel, None, text, None, tuple(files), approved=approved)
        return Rendered(channel, None, (rendered[0] or "").strip(), None, tuple(files))

    def _template(self, name: str, part: str, locale: str) -> Template | None:
        """The compiled template serving ``part`` for ``locale`` (None when there is none).

        Cached per process: without it every render asked the file system about each
        missing locale variant and took Jinja's cache lock (a fifth of a worker's time).
        A syntax error is not cached, so it is reported on every render.
        """
        key = (name, part, locale)
        try:
            return self._found[key]
        except KeyError:
            pass
        try:
            template: Template | None = self.env.select_template(self.candidates(name, part, locale))
        except (TemplatesNotFound, TemplateNotFound):
            template = None
        except TemplateSyntaxError as exc:
            raise TemplateError(f"syntax error: {exc.message}", file=exc.name or exc.filename, line=exc.lineno) from None
        self._found[key] = template
        return template

    def _declaration(self, name: str, part: str, locale: str) -> Declaration | None:
        """The parsed declaration serving ``part`` for ``locale`` (None when there is
        none); cached per process like compiled templates. Its language defaults to the
        locale of the folder it was found in."""
        key = (name, part, locale)
        try:
            return self._declared[key]
        except KeyError:
            pass
        loader = self.env.loader
        assert loader is not None
        found: Declaration | None = None
        for candidate in self.candidates(name, part, locale):
            try:
                source, _, _ = loader.get_source(self.env, candidate)
            except TemplateNotFound:
                continue
            folder = candidate.split("/")[-2] if candidate.count("/") == 2 else self.program.default_locale
            found = parse_declaration(source, candidate, folder, self.env)
            break
        self._declared[key] = found
        return found

    TIMEOUTS_BEFORE_REFUSING = 3
    """A template that ran out of time this often in a process fails at once after that
    (a batch of a hanging template would otherwise spend the time limit on every row)."""

    def _render_template(self, template: Template, context: dict[str, Any]) -> str:
        limit_s = self.budget.time_limit.total_seconds()
        timeouts = self._timeouts.get(template.name or "", 0)
        if timeouts >= self.TIMEOUTS_BEFORE_REFUSING:
            raise RenderBudgetExceeded(
                f"ran out of time (rendering.time_limit {limit_s:g} s) {timeouts} times in this process; "
                "not rendered again until it restarts",
                file=template.name,
            )
        token = WATCHDOG.arm(limit_s)
        try:
            try:
                result = self._within_output(template, context)
            finally:
                fired = WATCHDOG.disarm(token)
            if fired:  # finished just as the deadline passed
                raise RenderTimeout
            return result
        except RenderTimeout as exc:
            WATCHDOG.disarm(token)  # in case the interrupt arrived before the finally ran
            self._timeouts[template.name or ""] = timeouts + 1
            raise RenderBudgetExceeded(
                f"still rendering after {limit_s:g} s (rendering.time_limit): a loop that does not end?",
                file=template.name,
                # Jinja rewrites the traceback of an Exception only: map the compiled line here.
                line=_compiled_line(exc, template),
            ) from None
        except RecursionError:
            raise RenderBudgetExceeded(
                "recursion too deep (a macro that calls itself without end?)", file=template.name
            ) from None
        except MemoryError:
            raise RenderBudgetExceeded("ran out of memory", file=template.name) from None
        except RenderBudgetExceeded as exc:
            raise RenderBudgetExceeded(
                exc.message, file=template.name, line=exc.line or _template_line(exc, template.filename)
            ) from None
        except JinjaTemplateError as exc:
            raise TemplateError(_describe(exc), file=template.name, line=_template_line(exc, template.filename)) from None
        except (ArithmeticError, TypeError, ValueError, LookupError) as exc:
            raise TemplateError(
                f"{type(exc).__name__}: {exc}", file=template.name, line=_template_line(exc, template.filename)
            ) from None

    def _within_output(self, template: Template, context: dict[str, Any]) -> str:
        limit = self.budget.max_output
        parts: list[str] = []
        size = 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > limit:
                raise RenderBudgetExceeded(f"writes more than {limit:,} characters (rendering.max_output)")
            parts.append(chunk)
        return "".join(parts)


def _describe(exc: JinjaTemplateError) -> str:
    name = type(exc).__name__
    if name == "UndefinedError":
        return f"undefined variable: {exc.message}"
    return f"{name}: {exc.message}"


def _template_line(exc: BaseException, filename: str | None) -> int | None:
    """The line of ``filename`` where rendering failed, from the (Jinja-rewritten) traceback."""
    if filename is None:
        return None
    wanted = os.path.abspath(filename)
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if os.path.abspath(frame.f_code.co_filename) == wanted:
            line = lineno
    return line


def _compiled_line(exc: BaseException, template: Template) -> int | None:
    """The template line of the innermost frame of ``template``'s compiled code."""
    line = _template_line(exc, template.filename)
    return template.get_corresponding_lineno(line) if line is not None else None


@lru_cache(maxsize=64)
def babel_locale(identifier: str) -> Locale:
    """A parsed Babel locale, one per identifier and process: Babel's formatting
    functions parse the identifier and reload its data under a global lock on every
    call when given a string."""
    return Locale.parse(identifier)


def _number(value: Any) -> float | int:
    number = float(value)
    return int(number) if number.is_integer() else number


@lru_cache(maxsize=16_384)
def _decimal(amount: float | int, locale: str) -> str:
    # Balances repeat a lot across members (a few thousand distinct values per 100,000
    # in the demo data), and Babel's formatting is a good part of a render.
    return format_decimal(amount, locale=babel_locale(locale))


def _points_filter(program: ProgramSettings) -> Callable[[Context, Any], str]:
    @lru_cache(maxsize=16_384)
    def spelled(amount: float | int, locale: str) -> str:
        words = program.points_word.get(locale) or program.points_word[program.default_locale]
        return f"{_decimal(amount, locale)} {words.form(babel_locale(locale).plural_form(amount))}"

    @pass_context
    def points(context: Context, value: Any) -> str:
        return spelled(_number(value), context["locale"])

    return points


@pass_context
def _number_filter(context: Context, value: Any) -> str:
    return _decimal(_number(value), context["locale"])


def _money_filter(program: ProgramSettings) -> Callable[[Context, Any, str | None], str]:
    @pass_context
    def money(context: Context, value: Any, currency: str | None = None) -> str:
        return format_currency(float(value), currency or program.currency, locale=babel_locale(context["locale"]))

    return money


# CLDR's "day" relative fields, which Babel does not expose; other days use
# Babel's "in N days" / "N days ago" with correct plurals.
RELATIVE_DAYS = {
    "ru": {-2: "позавчера", -1: "вчера", 0: "сегодня", 1: "завтра", 2: "послезавтра"},
    "en": {-1: "yesterday", 0: "today", 1: "tomorrow"},
}


def _local_date(value: date | datetime, zone: str) -> date:
    return value.astimezone(zone_info(zone)).date() if isinstance(value, datetime) else value


@pass_context
def _relative_date_filter(context: Context, value: date | datetime) -> str:
    """ "завтра", "через 3 дня", "tomorrow", "in 3 days": the day relative to the
    member's today (both in the member's time zone)."""
    zone, locale = context["timezone"], context["locale"]
    days = (_local_date(value, zone) - _local_date(context["now"], zone)).days
    parsed = babel_locale(locale)
    word = RELATIVE_DAYS.get(parsed.language, {}).get(days)
    if word is not None:
        return word
    return format_timedelta(timedelta(days=days), granularity="day", threshold=10_000, add_direction=True, locale=parsed)


@pass_context
def _date_filter(context: Context, value: date | datetime, pattern: str | None = None) -> str:
    """Day and month as the locale writes them ("30 ноября", "November 30"), or ``pattern``."""
    if isinstance(value, datetime):
        value = value.astimezone(zone_info(context["timezone"])).date()
    return _formatted_date(value, context["locale"], pattern)


@lru_cache(maxsize=4096)
def _formatted_date(value: date, locale: str, pattern: str | None) -> str:
    if pattern is None:
        return format_skeleton("MMMMd", value, locale=babel_locale(locale))
    return format_date(value, format=pattern, locale=babel_locale(locale))


def short(value: Any, length: int = 20) -> str:
    """``value`` in at most ``length`` characters: cut at the last space that leaves at
    least half, else mid-word, and ended with "…". Collapses runs of white space."""
    text = " ".join(str(value).split())
    if len(text) <= length:
        return text
    cut = text[: max(length - 1, 0)]
    space = cut.rfind(" ")
    if space >= length // 2:
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + "…"
