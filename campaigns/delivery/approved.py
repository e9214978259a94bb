"""Approved-template declarations: ``templates/<name>/[<locale>/]<channel>.toml``.

A channel whose provider sends only templates it approved beforehand (WhatsApp outside
the 24-hour window) keeps the wording at the provider; loyalcast sends the template's
name, language and parameters. The declaration says which approved template a
loyalcast template stands for, and how each parameter is filled from the message
context, as a Jinja expression in the same sandbox as every other text::

    name = "balance_reminder"            # as approved in WhatsApp Manager
    language = "ru"                      # the approved translation; default: this folder's locale
    header = ["{{ program.name }}"]      # text header parameters, if the template has them
    body = [                             # {{1}}, {{2}}, ... of the approved body, in order
      "{{ member.first_name or 'друг' }}",
      "{{ balance | points }}",
    ]
    buttons = [{ index = 0, url_suffix = "{{ unsubscribe_url | replace(program.site_url, '') }}" }]

A parameter renders to one line of plain text (runs of white space collapse to one
space: providers refuse new lines in parameters) and must not be empty. Every problem
is a ``TemplateError`` naming the file and the line of the declaration.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from jinja2 import Environment, Template, TemplateSyntaxError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from campaigns.errors import TemplateError
from channels.base import ApprovedTemplate

MAX_PARAMETER = 1024
"""Longest parameter a provider takes, in characters (WhatsApp's body text limit)."""

TemplateName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,512}$")]
LanguageCode = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$")]


class _Button(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int = Field(ge=0, le=9)
    url_suffix: str


class _Declaration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: TemplateName
    language: LanguageCode | None = None
    header: list[str] = Field(default_factory=list, max_length=1)
    body: list[str] = Field(default_factory=list, max_length=100)
    buttons: list[_Button] = Field(default_factory=list, max_length=10)


@dataclass(frozen=True)
class _Parameter:
    where: str
    """``body[2]``: the key in the declaration, for errors."""
    line: int | None
    template: Template


@dataclass(frozen=True)
class Declaration:
    """A parsed, compiled declaration; ``fill`` renders it for one member."""

    file: str
    name: str
    language: str
    header: tuple[_Parameter, ...]
    body: tuple[_Parameter, ...]
    buttons: tuple[tuple[int, _Parameter], ...]

    def fill(self, render: Callable[[Template, dict[str, Any]], str], context: dict[str, Any]) -> ApprovedTemplate:
        """The approved template with every parameter rendered by ``render`` (the
        renderer's budgeted call); TemplateError names the file and line."""
        return ApprovedTemplate(
            name=self.name,
            language=self.language,
            header=tuple(self._value(parameter, render, context) for parameter in self.header),
            body=tuple(self._value(parameter, render, context) for parameter in self.body),
            buttons=tuple((index, self._value(parameter, render, context)) for index, parameter in self.buttons),
        )

    def _value(self, parameter: _Parameter, render: Callable[[Template, dict[str, Any]], str], context: dict[str, Any]) -> str:
        try:
            value = " ".join(render(parameter.template, context).split())
        except TemplateError as exc:
            raise TemplateError(f"{parameter.where}: {exc.message}", file=self.file, line=parameter.line) from None
        if not value:
            raise TemplateError(
                f"{parameter.where} is empty for this member, and the provider refuses empty parameters "
                "(give it a default, e.g. {{ member.first_name or 'друг' }})",
                file=self.file,
                line=parameter.line,
            )
        if len(value) > MAX_PARAMETER:
            raise TemplateError(
                f"{parameter.where} is {len(value)} characters; the provider takes at most {MAX_PARAMETER}",
                file=self.file,
                line=parameter.line,
            )
        return value


def parse_declaration(source: str, file: str, default_language: str, env: Environment) -> Declaration:
    """Parse and compile the declaration ``file`` (its text ``source``); TemplateError
    names the file, the line and the key at fault."""
    try:
        raw = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        raise TemplateError(f"not valid TOML: {exc}", file=file, line=int(found.group(1)) if found else None) from None
    try:
        declared = _Declaration.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = _where(error["loc"])
        problem = (
            "unknown key (known: name, language, header, body, buttons)" if error["type"] == "extra_forbidden" else error["msg"]
        )
        top = str(error["loc"][0]) if error["loc"] else ""
        raise TemplateError(f"{where}: {problem}", file=file, line=_line_of(source, top)) from None

    def compiled(where: str, expression: str) -> _Parameter:
        line = _line_of(source, expression)
        try:
            # Named, so the renderer's budget counts each parameter's timeouts apart.
            code = env.compile(expression, name=f"{file}#{where}")
            return _Parameter(where, line, env.template_class.from_code(env, code, env.make_globals(None)))
        except TemplateSyntaxError as exc:
            raise TemplateError(f"{where}: syntax error: {exc.message}", file=file, line=line) from None

    return Declaration(
        file=file,
        name=declared.name,
        language=declared.language or default_language,
        header=tuple(compiled(f"header[{n}]", value) for n, value in enumerate(declared.header)),
        body=tuple(compiled(f"body[{n}]", value) for n, value in enumerate(declared.body)),
        buttons=tuple(
            (button.index, compiled(f"buttons[{n}].url_suffix", button.url_suffix)) for n, button in enumerate(declared.buttons)
        ),
    )


def _where(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(file)"


def _line_of(source: str, needle: str) -> int | None:
    """The first line of ``source`` that holds ``needle`` (a key or an expression)."""
    if not needle:
        return None
    for number, line in enumerate(source.splitlines(), 1):
        if needle in line:
            return number
    return None
