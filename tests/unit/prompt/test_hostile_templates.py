"""Known template-injection and resource-exhaustion payloads fail cleanly and quickly, in both template engines.

A chat template comes with a downloaded model or a Modelfile: it is untrusted input. Each payload must end in
InvalidRequest("template error: ..."), well within the render budget, without reaching Python internals and
without building a huge value first.
"""

from __future__ import annotations

import time

import pytest

from herd.errors import InvalidRequest
from herd.prompt.gotemplate import GoTemplate
from herd.prompt.jinja import check_template, render_jinja

BUDGET_S = 4.0  # the engines stop at 2 s of rendering; anything slower than this is a hang

JINJA_PAYLOADS = {
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals_of_method": "{{ messages.__class__.__init__.__globals__ }}",
    "cycler_globals_os": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "lipsum_globals_os": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "joiner_builtins_open": "{{ joiner.__init__.__globals__.__builtins__.open('/etc/passwd').read() }}",
    "namespace_globals": "{{ namespace.__init__.__globals__ }}",
    "raise_exception_globals": "{{ raise_exception.__globals__ }}",
    "template_reference_context": "{{ self._TemplateReference__context }}",
    "bare_class_probe": "{{ messages.__class__ }}",
    "format_attribute_walk": "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "huge_range_loop": "{% for i in range(10**9) %}x{% endfor %}",
    "string_times_huge": "{{ 'a' * 10**9 }}",
    "list_times_huge": "{{ [0] * 10**9 }}",
    "huge_power": "{{ 10 ** (10 ** 10) }}",
    "nested_loops_time": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "center_huge": "{{ 'x'|center(10**9) }}",
    "percent_format_width": "{{ '%999999999d'|format(1) }}",
    "percent_operator_width": "{{ '%999999999d' % 1 }}",
    "str_format_width": "{{ '{:>999999999}'.format(1) }}",
    "namespace_doubling": ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                           "{% endfor %}{{ ns.s }}"),
    "lipsum_huge": "{{ lipsum(n=10**6) }}",
    "macro_recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "replace_growth": "{{ ('a' * 1000000)|replace('a', 'a' * 1000) }}",
    "indent_growth": "{{ ('x\\n' * 100000)|indent(99999) }}",
    "join_growth": "{{ range(99999)|join('a' * 99999) }}",
    "str_join_growth": "{{ ('a' * 99999).join(range(99999)|map('string')) }}",
    "wordwrap_growth": "{{ ('a' * 99999)|wordwrap(1, true, 'b' * 99999) }}",
    "expandtabs_growth": "{{ ('\\t' * 1000000).expandtabs(99999) }}",
    "tojson_indent": "{{ messages|tojson(indent=99999) }}",
    "output_flood": "{% for i in range(99999) %}{% for j in range(99999) %}xxxxxxxxxx{% endfor %}{% endfor %}",
}

GO_PAYLOADS = {
    "range_billion": "{{ range 1000000000 }}x{{ end }}",
    "range_billion_empty": "{{ range 1000000000 }}{{ end }}",
    "nested_ranges": "{{ range 100000 }}{{ range 100000 }}{{ end }}{{ end }}",
    "string_doubling": '{{ $x := "ab" }}{{ range 100 }}{{ $x = print $x $x }}{{ end }}{{ $x }}',
    "printf_width": '{{ printf "%999999999d" 1 }}',
    "printf_precision": '{{ printf "%.999999999f" 1.5 }}',
    "template_recursion": '{{ define "a" }}{{ template "a" . }}{{ end }}{{ template "a" . }}',
}

VARIABLES = {"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": True}


def _fails_fast(render: object) -> InvalidRequest:
    t0 = time.monotonic()
    with pytest.raises(InvalidRequest) as info:
        render()  # type: ignore[operator]
    assert time.monotonic() - t0 < BUDGET_S
    assert info.value.message.startswith("template error: ")
    return info.value


@pytest.mark.parametrize("payload", JINJA_PAYLOADS.values(), ids=JINJA_PAYLOADS.keys())
def test_jinja_payload_fails_cleanly(payload: str) -> None:
    check_template(payload)  # it parses: the attack is in the rendering
    _fails_fast(lambda: render_jinja(payload, VARIABLES))


def test_jinja_refuses_huge_and_deep_templates() -> None:
    _fails_fast(lambda: check_template("x" * (2 * 1024 * 1024)))
    _fails_fast(lambda: check_template("{{ " + "(" * 50000 + "1" + ")" * 50000 + " }}"))


def test_jinja_ordinary_templates_still_work() -> None:
    source = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}{{ '%s'|format('!') }}"
              "{{ ' '.join(['a', 'b']) }}{{ 'x' * 3 }}{{ 2 ** 10 }}{{ [m.role] | tojson(indent=2) }}{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>{% endif %}{{ range(3)|join(',') }}")
    out = render_jinja(source, VARIABLES)
    assert out.startswith("<|user|>hi!a bxxx1024[\n  \"user\"\n]<|assistant|>0,1,2")


@pytest.mark.parametrize("payload", GO_PAYLOADS.values(), ids=GO_PAYLOADS.keys())
def test_go_payload_fails_cleanly(payload: str) -> None:
    template = GoTemplate(payload)
    _fails_fast(lambda: template.render({"Messages": [{"Role": "user", "Content": "hi"}]}))


def test_go_ordinary_ranges_still_work() -> None:
    out = GoTemplate("{{ range $i := 3 }}{{ $i }}{{ end }}|{{ range 0 }}x{{ else }}none{{ end }}").render({})
    assert out == "012|none"


def test_go_private_names_read_as_nothing() -> None:
    # Go templates reach only data fields: Python internals are never looked up, a probe prints nothing.
    out = GoTemplate("{{ .__class__ }}{{ .Messages.__len__ }}{{ .Messages._x }}").render({"Messages": []})
    assert out == ""


def test_go_refuses_huge_templates() -> None:
    _fails_fast(lambda: GoTemplate("x" * (2 * 1024 * 1024)))
