# ruff: noqa: E501  (a table of cases: one case per line reads best)
"""Hostile templates: each is one ``sms.txt`` and the one line rendering it must give
(``{name}`` stands for the case's folder, ``{dir}`` for the templates folder). Rendered
with ``[rendering] time_limit = "1s"`` and the default ``max_output``."""

CASES: list[tuple[str, str, str]] = [
    (
        "nested-range",
        "Hi\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{name}/sms.txt:2: still rendering after 1 s (rendering.time_limit): a loop that does not end?",
    ),
    (
        "nested-string-loop",
        "{% for i in 'x'*50000 %}{% for j in 'y'*50000 %}{% endfor %}{% endfor %}",
        "{name}/sms.txt:1: still rendering after 1 s (rendering.time_limit): a loop that does not end?",
    ),
    (
        "namespace-counter",
        "{% set ns = namespace(i=0) %}\n{% for i in range(100000) %}{% for j in range(100000) %}{% set ns.i = ns.i + 1 %}{% endfor %}{% endfor %}",
        "{name}/sms.txt:2: still rendering after 1 s (rendering.time_limit): a loop that does not end?",
    ),
    (
        "dict-loop",
        "{% for i in range(100000) %}{% for k in {'a': 1}|dictsort * 50000 %}{% endfor %}{% endfor %}",
        "{name}/sms.txt:1: still rendering after 1 s (rendering.time_limit): a loop that does not end?",
    ),
    (
        "big-mult",
        "{{ 'x' * 10**8 }}",
        "{name}/sms.txt:1: '*' would make 100,000,000 characters (rendering.max_output is 100,000)",
    ),
    (
        "big-mult-reversed",
        "{{ 10**8 * 'x' }}",
        "{name}/sms.txt:1: '*' would make 100,000,000 characters (rendering.max_output is 100,000)",
    ),
    (
        "list-mult",
        "{{ ([1]*50000)*50000 }}",
        "{name}/sms.txt:1: '*' would make 2,500,000,000 characters (rendering.max_output is 100,000)",
    ),
    ("big-pow", "{{ 2 ** 100000 }}", "{name}/sms.txt:1: 2 ** 100000 is too big a number"),
    (
        "recursive-macro",
        "{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}",
        "{name}/sms.txt: recursion too deep (a macro that calls itself without end?)",
    ),
    (
        "mutual-recursion",
        "{% macro a() %}{{ b() }}{% endmacro %}{% macro b() %}{{ a() }}{% endmacro %}{{ a() }}",
        "{name}/sms.txt: recursion too deep (a macro that calls itself without end?)",
    ),
    (
        "center",
        "{{ 'x'|center(1000000000) }}",
        "{name}/sms.txt:1: center would make 1,000,000,000 characters (rendering.max_output is 100,000)",
    ),
    (
        "indent",
        "{{ 'a\nb'|indent(999999999) }}",
        "{name}/sms.txt:2: indent would make 2,000,000,001 characters (rendering.max_output is 100,000)",
    ),
    (
        "format-filter-width",
        "{{ '%0999999999d'|format(1) }}",
        "{name}/sms.txt:1: a format width would make 999,999,999 characters (rendering.max_output is 100,000)",
    ),
    (
        "percent-width",
        "{{ '%0999999999d' % 1 }}",
        "{name}/sms.txt:1: a format width would make 999,999,999 characters (rendering.max_output is 100,000)",
    ),
    (
        "str-format-width",
        "{{ '{:>999999999}'.format(1) }}",
        "{name}/sms.txt:1: a format width would make 999,999,999 characters (rendering.max_output is 100,000)",
    ),
    (
        "replace-blowup",
        "{% set a = 'x' * 50000 %}{{ a|replace('', a) }}",
        "{name}/sms.txt:1: replace would make 2,500,100,000 characters (rendering.max_output is 100,000)",
    ),
    (
        "output-loop",
        "{% for i in range(100000) %}{{ 'abcdefghij' }}{% endfor %}",
        "{name}/sms.txt: writes more than 100,000 characters (rendering.max_output)",
    ),
    (
        "dunder-class",
        "{{ ''.__class__.__mro__ }}",
        "{name}/sms.txt:1: SecurityError: access to attribute '__class__' of 'str' object is unsafe.",
    ),
    (
        "dunder-globals",
        "{{ cycler.__init__.__globals__ }}",
        "{name}/sms.txt:1: SecurityError: access to attribute '__init__' of 'type' object is unsafe.",
    ),
    (
        "dunder-subclasses",
        "{{ ().__class__.__base__.__subclasses__() }}",
        "{name}/sms.txt:1: SecurityError: access to attribute '__class__' of 'tuple' object is unsafe.",
    ),
    (
        "dunder-via-attr-filter",
        "{{ ''|attr('__class__') }}",
        "{name}/sms.txt:1: SecurityError: access to attribute '__class__' of 'str' object is unsafe.",
    ),
    (
        "format-attribute",
        "{{ '{0.__class__}'.format('') }}",
        "{name}/sms.txt:1: SecurityError: access to attribute '__class__' of 'str' object is unsafe.",
    ),
    ("include-outside", "{% include '../../../etc/passwd' %}", "{name}/sms.txt:1: TemplateNotFound: ../../../etc/passwd"),
    (
        "extends-absolute",
        "{% extends '/etc/passwd' %}",
        "{name}/sms.txt:1: TemplateNotFound: '/etc/passwd' not found in search path: '{dir}'",
    ),
    (
        "syntax-unclosed",
        "Hello {% if member %}",
        "{name}/sms.txt:1: syntax error: Unexpected end of template. Jinja was looking for the following tags: 'elif' or 'else' or 'endif'. The innermost block that needs to be closed is 'if'.",
    ),
    ("syntax-bad-tag", "{% sendmail %}", "{name}/sms.txt:1: syntax error: Encountered unknown tag 'sendmail'."),
    ("unknown-filter", "{{ balance|explode }}", "{name}/sms.txt:1: syntax error: No filter named 'explode'."),
    ("undefined-variable", "Hi {{ membr.first_name }}", "{name}/sms.txt:1: undefined variable: 'membr' is undefined"),
    (
        "undefined-attribute",
        "Hi {{ member.middle_name }}",
        "{name}/sms.txt:1: undefined variable: 'dict object' has no attribute 'middle_name'",
    ),
    ("zero-division", "{{ balance / 0 }}", "{name}/sms.txt:1: ZeroDivisionError: division by zero"),
    ("type-error", "{{ balance + 'x' }}", "{name}/sms.txt:1: TypeError: unsupported operand type(s) for +: 'int' and 'str'"),
    ("bad-points-value", "{{ 'lots'|points }}", "{name}/sms.txt:1: ValueError: could not convert string to float: 'lots'"),
    (
        "none-attribute",
        "{{ expiring.nearest_date.year }}",
        "{name}/sms.txt:1: undefined variable: 'None' has no attribute 'year'",
    ),
]
