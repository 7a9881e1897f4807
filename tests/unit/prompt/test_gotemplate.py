"""Go text/template renderer (spec 7.2, 7.3): golden renders of Ollama templates and language details.

Goldens marked "ollama testdata" are the expected outputs from Ollama's own template tests; the others follow
from Go's template rules by hand.
"""

from __future__ import annotations

import datetime

import pytest

from herd.errors import InvalidRequest
from herd.prompt.gotemplate import (
    GoTemplate,
    render_chat,
    uses_messages,
    uses_response,
    uses_suffix,
    uses_thinking,
    uses_tools,
)
from herd.types import Message, ToolCallIn, ToolDef

# --------------------------------------------------------------------------------------------------------------
# Templates (as shipped by Ollama / the Ollama library)

CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)

LLAMA3_LEGACY = (
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>"
)

LLAMA31 = """{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

Cutting Knowledge Date: December 2023

When you receive a tool call response, use the output to format an answer to the orginal user question.

You are a helpful assistant with tool calling capabilities.
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

Given the following functions, please respond with a JSON for a function call with its proper arguments that \
best answers the given prompt.

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. \
Do not use variables.

{{ range $.Tools }}
{{- . }}
{{ end }}
{{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""

MISTRAL = """{{- if .Messages }}
{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}[INST] {{ if and $.System (eq (len (slice $.Messages $index)) 1) }}{{ $.System }}
{{ end }}{{ .Content }}
{{- else if eq .Role "assistant" }}[/INST] {{ .Content }}</s>
{{- end }}
{{- end }}[/INST]
{{- else -}}
[INST] {{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}[/INST] {{ .Response }}</s>
{{- end -}}"""

GEMMA3 = """{{- $system := .System }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<start_of_turn>user
{{- if and (eq $i 1) $system }}
{{ $system }}
{{- end }}
{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}
{{- if $last }}<start_of_turn>model
{{ end }}
{{- end }}
"""

PHI3 = "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"

ALPACA = """{{- $system := "" }}
{{- range .Messages }}
{{- if eq .Role "system" }}
{{- if not $system }}{{ $system = .Content }}
{{- else }}{{ $system = printf "%s\\n\\n%s" $system .Content }}
{{- end }}
{{- else if eq .Role "user" }}
{{- if $system }}{{ $system }}

{{ $system = "" }}
{{- end }}### Instruction:
{{ .Content }}

{{ else if eq .Role "assistant" }}### Response:
{{ .Content }}

{{ end }}
{{- end }}### Response:
"""

QWEN25 = """{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> \
XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""

THINKING = (
    "{{- range .Messages }}<|{{ .Role }}|>{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}"
    "{{ .Content }}\n{{ end }}<|assistant|>{{ if and .IsThinkSet (not .Think) }}<think></think>{{ end }}"
)

CODELLAMA_FIM = (
    "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>\n{{- else }}{{ .Prompt }}\n{{- end }}"
)

# --------------------------------------------------------------------------------------------------------------
# Conversations

SYSTEM = "You are a helpful assistant."
CONVERSATION = (
    Message("system", SYSTEM),
    Message("user", "Hello, how are you?"),
    Message("assistant", "I'm doing great. How can I help you today?"),
    Message("user", "I'd like to show off how chat templating works!"),
)

WEATHER_RAW = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string", "description": "The city"}},
        },
    },
}
WEATHER = ToolDef("get_weather", "Get the weather", WEATHER_RAW["function"]["parameters"], WEATHER_RAW)
WEATHER_JSON = (
    '{"name":"get_weather","description":"Get the weather","parameters":{"type":"object","required":["city"],'
    '"properties":{"city":{"type":"string","description":"The city"}}}}'
)
TOOL_CONVERSATION = (
    Message("system", SYSTEM),
    Message("user", "What is the weather in Paris?"),
    Message("assistant", "", tool_calls=(ToolCallIn("get_weather", {"city": "Paris"}, 0, "call_1"),)),
    Message("tool", '{"temperature": 22}', tool_name="get_weather"),
)


def chat(source: str, messages=CONVERSATION, tools=(), **kw: object) -> str:
    return render_chat(GoTemplate(source), messages, tools, **kw)  # type: ignore[arg-type]


def render(source: str, **data: object) -> str:
    return GoTemplate(source).render(data)


# --------------------------------------------------------------------------------------------------------------
# Golden conversations


GOLDEN = {
    "chatml": (  # ollama testdata
        CHATML,
        (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHello, how are you?<|im_end|>\n"
            "<|im_start|>assistant\nI'm doing great. How can I help you today?<|im_end|>\n"
            "<|im_start|>user\nI'd like to show off how chat templating works!<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
    ),
    "llama3-legacy": (  # ollama testdata (llama3-instruct)
        LLAMA3_LEGACY,
        (
            "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHello, how are you?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nI'm doing great. How can I help you today?<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nI'd like to show off how chat templating works!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
    ),
    "llama3.1": (
        LLAMA31,
        (
            "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHello, how are you?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nI'm doing great. How can I help you today?<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nI'd like to show off how chat templating works!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        ),
    ),
    "mistral": (
        MISTRAL,
        (
            "[INST] Hello, how are you?[/INST] I'm doing great. How can I help you today?</s>"
            "[INST] You are a helpful assistant.\nI'd like to show off how chat templating works![/INST]"
        ),
    ),
    "gemma3": (
        GEMMA3,
        (
            "<start_of_turn>user\nYou are a helpful assistant.\nHello, how are you?<end_of_turn>\n"
            "<start_of_turn>model\nI'm doing great. How can I help you today?<end_of_turn>\n"
            "<start_of_turn>user\nI'd like to show off how chat templating works!<end_of_turn>\n"
            "<start_of_turn>model\n\n"
        ),
    ),
    "phi3": (
        PHI3,
        (
            "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHello, how are you?<|end|>\n"
            "<|assistant|>\nI'm doing great. How can I help you today?<|end|>\n"
            "<|user|>\nI'd like to show off how chat templating works!<|end|>\n<|assistant|>\n"
        ),
    ),
    "alpaca": (  # ollama testdata
        ALPACA,
        (
            "You are a helpful assistant.\n\n### Instruction:\nHello, how are you?\n\n"
            "### Response:\nI'm doing great. How can I help you today?\n\n"
            "### Instruction:\nI'd like to show off how chat templating works!\n\n### Response:\n"
        ),
    ),
    "qwen2.5": (
        QWEN25,
        (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHello, how are you?<|im_end|>\n"
            "<|im_start|>assistant\nI'm doing great. How can I help you today?<|im_end|>\n"
            "<|im_start|>user\nI'd like to show off how chat templating works!<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_conversation(name: str) -> None:
    source, expected = GOLDEN[name]
    assert chat(source) == expected


def test_qwen25_tools_conversation() -> None:
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": ' + WEATHER_JSON + "}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city":"Paris"}}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response>\n{"temperature": 22}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )
    assert chat(QWEN25, TOOL_CONVERSATION, (WEATHER,)) == expected


def test_llama31_tools_conversation() -> None:
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.\n\n"
        "Cutting Knowledge Date: December 2023\n\n"
        "When you receive a tool call response, use the output to format an answer to the orginal user "
        "question.\n\nYou are a helpful assistant with tool calling capabilities.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is the weather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city":"Paris"}}<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n{"temperature": 22}<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert chat(LLAMA31, TOOL_CONVERSATION, (WEATHER,)) == expected


def test_llama31_tools_listed_in_last_user_turn() -> None:
    msgs = (Message("user", "Weather in Paris?"),)
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\n\n"
        "When you receive a tool call response, use the output to format an answer to the orginal user "
        "question.\n\nYou are a helpful assistant with tool calling capabilities.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call with its proper "
        "arguments that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
        'value}. Do not use variables.\n\n'
        '{"type":"function","function":' + WEATHER_JSON + "}\n\n"
        "Weather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert chat(LLAMA31, msgs, (WEATHER,)) == expected


def test_tool_without_raw_is_built_from_its_fields() -> None:
    tool = ToolDef("f", "does <f>", {"type": "object", "properties": {}})
    assert chat("{{ range .Tools }}{{ . }}{{ end }}{{ .Messages }}", (), (tool,)).startswith(
        '{"type":"function","function":{"name":"f","description":"does \\u003cf\\u003e",'
        '"parameters":{"type":"object","properties":{}}}}'
    )


# --------------------------------------------------------------------------------------------------------------
# Cases from Ollama's TestExecuteWithMessages: legacy, legacy without .Response, and .Messages forms agree.

MISTRAL_FORMS = {
    "no response": "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] ",
    "response": "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] {{ .Response }}",
    "messages": (
        "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n"
        '{{- if eq .Role "user" }}{{ .Content }}[/INST] {{ else if eq .Role "assistant" }}'
        "{{ .Content }}[INST] {{ end }}\n{{- end }}"
    ),
}
FRIEND = (Message("user", "Hello friend!"), Message("assistant", "Hello human!"), Message("user", "What is your name?"))


@pytest.mark.parametrize("form", sorted(MISTRAL_FORMS))
def test_ollama_mistral_forms(form: str) -> None:
    src = MISTRAL_FORMS[form]
    assert chat(src, FRIEND) == "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
    with_system = (Message("system", "You are a helpful assistant!"), *FRIEND)
    assert chat(src, with_system) == (
        "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] What is your name?[/INST] "
    )


@pytest.mark.parametrize("form", ["no response", "response", "messages"])
def test_ollama_assistant_prefill(form: str) -> None:
    src = {
        "no response": "[INST] {{ .Prompt }}[/INST] ",
        "response": "[INST] {{ .Prompt }}[/INST] {{ .Response }}",
        "messages": (
            '\n{{- range $i, $m := .Messages }}\n{{- if eq .Role "user" }}[INST] {{ .Content }}[/INST] '
            '{{ else if eq .Role "assistant" }}{{ .Content }}{{ end }}\n{{- end }}'
        ),
    }[form]
    msgs = (*FRIEND, Message("assistant", "My name is Ollama and I"))
    assert chat(src, msgs) == (
        "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is Ollama and I"
    )


def test_ollama_chatml_legacy_response_form() -> None:
    src = (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n"
        "{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
    )
    msgs = (Message("system", "You are a helpful assistant!"), *FRIEND)
    assert chat(src, msgs) == (
        "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n<|im_start|>user\nHello friend!<|im_end|>\n"
        "<|im_start|>assistant\nHello human!<|im_end|>\n<|im_start|>user\nWhat is your name?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_legacy_cut_drops_conditionals_after_response() -> None:
    src = "{{ .Prompt }}=>{{ .Response }}{{ if .Response }}<eos>{{ end }}|"
    assert chat(src, FRIEND) == "Hello friend!=>Hello human!<eos>|What is your name?=>"


def test_legacy_prompt_only_template_gets_response_appended() -> None:
    t = GoTemplate("{{ .Prompt }}")
    assert not uses_response(t)
    assert t.render({"Prompt": "a", "Response": "b"}) == "ab"
    assert render_chat(t, FRIEND, ()) == "Hello friend!Hello human!What is your name?"


# --------------------------------------------------------------------------------------------------------------
# Data model


def test_collate_merges_consecutive_roles_but_not_tools() -> None:
    msgs = (
        Message("system", "s1"),
        Message("system", "s2"),
        Message("user", "Hello"),
        Message("user", "How are you?"),
        Message("tool", "sunny", tool_name="get_weather"),
        Message("tool", "72F", tool_name="get_temperature"),
    )
    src = "{{ .System }}|{{ range .Messages }}[{{ .Role }}:{{ .Content }}:{{ .ToolName }}]{{ end }}"
    assert chat(src, msgs) == (
        "s1\n\ns2|[system:s1\n\ns2:][user:Hello\n\nHow are you?:][tool:sunny:get_weather][tool:72F:get_temperature]"
    )


def test_tool_call_fields() -> None:
    msgs = (
        Message("assistant", "", tool_calls=(
            ToolCallIn("f", {"q": "a<b", "n": 1.5, "k": [1, True, None]}, 3, "call_9"),
        )),
    )
    src = (
        "{{ range .Messages }}{{ range .ToolCalls }}{{ .ID }} {{ .Function.Index }} {{ .Function.Name }} "
        "{{ .Function.Arguments }} {{ .Function.Arguments.q }} {{ .Function.Arguments.missing }}|"
        "{{ range $k, $v := .Function.Arguments }}{{ $k }}={{ $v }};{{ end }}{{ end }}{{ end }}"
    )
    assert chat(src, msgs) == (
        'call_9 3 f {"q":"a\\u003cb","n":1.5,"k":[1,true,null]} a<b |q=a<b;n=1.5;k=[1 true <nil>];'
    )


def test_tool_fields_and_functions() -> None:
    src = (
        "{{ .Messages | len }}{{ range .Tools }}{{ .Type }} {{ .Function.Name }}: {{ .Function.Description }} "
        "{{ .Function.Parameters.Type }} {{ .Function.Parameters.Required }} "
        "{{ range $k, $v := .Function.Parameters.Properties }}{{ $k }}:{{ toTypeScriptType $v }} "
        "({{ $v.Description }}){{ end }}{{ end }}|{{ json .Tools }}"
    )
    assert chat(src, (), (WEATHER,)) == (
        '0function get_weather: Get the weather object [city] city:string (The city)|[' + json_tool() + "]"
    )


def json_tool() -> str:
    return '{"type":"function","function":' + WEATHER_JSON + "}"


def test_no_tools_is_falsy_and_prints_empty() -> None:
    assert chat("{{ if .Tools }}T{{ else }}none{{ end }}[{{ .Tools }}]{{ .Messages | len }}", (), ()) == "none[]0"


def test_think_flags() -> None:
    msgs = (Message("user", "hi"), Message("assistant", "ok", thinking="hmm"), Message("user", "again"))
    assert chat(THINKING, msgs) == "<|user|>hi\n<|assistant|><think>hmm</think>ok\n<|user|>again\n<|assistant|>"
    assert chat(THINKING, msgs[:1], think=False).endswith("<|assistant|><think></think>")
    src = "{{ .Think }} {{ .IsThinkSet }} {{ .ThinkLevel }}{{ .Messages | len }}"
    assert chat(src, (), think=None) == "false false 0"
    assert chat(src, (), think=True, think_level="high") == "true true high0"


# --------------------------------------------------------------------------------------------------------------
# Capability detection


def test_uses_detection() -> None:
    chatml, qwen, think, fim, llama3 = (GoTemplate(s) for s in (CHATML, QWEN25, THINKING, CODELLAMA_FIM, LLAMA3_LEGACY))
    assert not uses_tools(chatml) and uses_messages(chatml) and not uses_thinking(chatml)
    assert uses_tools(qwen) and uses_response(qwen) and not uses_thinking(qwen)
    assert uses_tools(GoTemplate(LLAMA31))
    assert uses_thinking(think) and not uses_tools(think)
    assert uses_suffix(fim) and not uses_suffix(chatml) and not uses_messages(fim)
    assert not uses_messages(llama3) and uses_response(llama3)
    # .Thinking outside range .Messages is not thinking support
    assert not uses_thinking(GoTemplate("{{ .Thinking }}{{ range .Messages }}{{ .Content }}{{ end }}"))
    assert uses_thinking(GoTemplate("{{ range $m := .Messages }}{{ with $m.Thinking }}{{ . }}{{ end }}{{ end }}"))
    # Mentioned only in text, not as a field: no
    assert not uses_tools(GoTemplate("Tools: .Tools {{ .Prompt }}"))
    assert uses_tools(GoTemplate("{{ range $.Tools }}{{ end }}"))


def test_fim_template_renders_with_suffix() -> None:
    t = GoTemplate(CODELLAMA_FIM)
    assert t.render({"Prompt": "def add(", "Suffix": "return x", "Response": ""}) == (
        "<PRE> def add( <SUF>return x <MID>"
    )
    assert render_chat(t, (Message("user", "hello"),), ()) == "hello"


# --------------------------------------------------------------------------------------------------------------
# Language


def test_missing_keys_and_fields_render_empty() -> None:
    assert render("[{{ .Nope }}][{{ .A.B.C }}][{{ $.X.Y }}][{{ index .M \"k\" }}]", A={}, M={}) == "[][][][]"
    assert render("{{ if .Nope }}y{{ else }}n{{ end }}") == "n"


def test_trim_markers_and_comments() -> None:
    assert render("a  \n {{- .X -}} \n\t b", X="x") == "axb"
    assert render("a {{- /* note */ -}} b") == "ab"
    assert render("a {{/* c */}} b") == "a  b"
    assert render("{{-3}}") == "-3"
    assert render("x\n{{- \"y\" }}\n{{ \"z\" -}}\n") == "xy\nz"


def test_range_variants() -> None:
    assert render("{{ range .L }}<{{ . }}>{{ else }}empty{{ end }}", L=[1, 2]) == "<1><2>"
    assert render("{{ range .L }}<{{ . }}>{{ else }}empty{{ end }}", L=[]) == "empty"
    assert render("{{ range .Nope }}x{{ else }}none{{ end }}") == "none"
    assert render("{{ range $i, $v := .L }}{{ $i }}{{ $v }},{{ end }}", L=["a", "b"]) == "0a,1b,"
    assert render("{{ range $v := .L }}{{ $v }}{{ end }}", L=["a", "b"]) == "ab"
    assert render("{{ range $k, $v := .M }}{{ $k }}={{ $v }};{{ end }}", M={"b": 2, "a": 1}) == "a=1;b=2;"
    assert render("{{ range .M }}{{ . }}{{ end }}", M={"b": 2, "a": 1}) == "12"
    assert render("{{ range 3 }}{{ . }}{{ end }}") == "012"
    assert render(
        "{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}",
        L=[1, 2, 3, 4, 5],
    ) == "13"
    assert render("{{ range .L }}{{ $.Name }}{{ . }}{{ end }}", L=[1], Name="n") == "n1"


def test_nested_if_else_if() -> None:
    src = (
        '{{ if eq .R "a" }}A{{ else if eq .R "b" }}{{ if .X }}BX{{ else }}B{{ end }}'
        '{{ else if eq .R "c" "d" }}CD{{ else }}other{{ end }}'
    )
    assert [render(src, R=r, X=x) for r, x in [("a", 0), ("b", 1), ("b", 0), ("d", 0), ("z", 0)]] == [
        "A", "BX", "B", "CD", "other"
    ]


def test_with_and_else_with() -> None:
    src = "{{ with .A }}a={{ . }}{{ else with .B }}b={{ . }}{{ else }}none{{ end }}"
    assert render(src, A="1") == "a=1"
    assert render(src, B="2") == "b=2"
    assert render(src) == "none"
    assert render("{{ with $x := .A }}{{ $x }}{{ . }}{{ end }}", A="q") == "qq"


def test_variables_scope_and_assignment() -> None:
    src = "{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ $y := 3 }}{{ $y }}{{ end }}{{ $x }}"
    assert render(src) == "32"
    assert render("{{ $x := .A }}{{ range .L }}{{ $x = . }}{{ end }}{{ $x }}", A=0, L=[1, 2]) == "2"
    assert render("{{ $ := . }}") == ""


def test_functions() -> None:
    assert render("{{ and 1 0 2 }} {{ and 1 2 }} {{ or 0 \"\" }} {{ or 0 \"x\" }} {{ not .A }}") == "0 2  x true"
    assert render("{{ if and .A .A.B }}y{{ else }}n{{ end }}") == "n"  # short-circuit, no error
    assert render("{{ eq 1 2 3 1 }} {{ ne \"a\" \"b\" }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt \"b\" \"a\" }} {{ ge 1 2 }}") \
        == "true true true true true false"
    assert render("{{ len .L }} {{ len \"héllo\" }} {{ index .L 1 }} {{ index .M \"a\" \"b\" }}",
                  L=[1, 2], M={"a": {"b": "deep"}}) == "2 6 2 deep"
    assert render("{{ slice \"abcdef\" 1 3 }} {{ slice .L 1 }} {{ len (slice .L 0 1) }}", L=[1, 2, 3]) == "bc [2 3] 1"
    assert render('{{ print "a" 1 2 "b" }}|{{ println "x" 1 }}|{{ printf "%s-%d-%v-%q-%5.2f-%t-%x" '
                  '"s" 7 .L "q" 3.14159 true 255 }}', L=[1, "a"]) == 'a1 2b|x 1\n|s-7-[1 a]-"q"- 3.14-true-ff'
    assert render('{{ printf "%d %s" 1 }}|{{ printf "%d" "x" }}|{{ printf "%s" "a" 2 }}') == (
        "1 %!s(MISSING)|%!d(string=x)|a%!(EXTRA int=2)"
    )
    assert render('{{ html "<a href=\'x\'>&</a>" }}') == "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
    assert render('{{ js "it\'s <b>\\n" }}') == "it\\'s \\u003Cb\\u003E\\u000A"
    assert render('{{ urlquery "a b&c" }}') == "a+b%26c"
    assert render('{{ "x" | printf "%s-%s" "y" }}') == "y-x"


def test_call_function() -> None:
    assert render("{{ call .F 2 3 }}", F=lambda a, b: a * b) == "6"


def test_json_function() -> None:
    assert render("{{ json .V }}", V={"a": [1, 2.0, 0.5, None, True], "s": "<&>\u2028", "e": 1e-7}) == (
        '{"a":[1,2,0.5,null,true],"s":"\\u003c\\u0026\\u003e\\u2028","e":1e-7}'
    )
    assert render("{{ json .S }}", S="line\nq\"") == '"line\\nq\\""'


def test_dates() -> None:
    today = datetime.date.today()
    out = render("{{ currentDate }} {{ yesterdayDate }}")
    assert out in {
        f"{today.isoformat()} {(today - datetime.timedelta(days=1)).isoformat()}",
        # the day may roll over while rendering
        f"{(today + datetime.timedelta(days=1)).isoformat()} {today.isoformat()}",
    }


def test_literals_and_printing() -> None:
    assert render('{{ "a\\tb\\u00e9\\x41" }}|{{ `raw\\n` }}|{{ \'a\' }}|{{ 0x1F }}|{{ 1_000 }}|{{ 017 }}') == (
        "a\tbéA|raw\\n|97|31|1000|15"
    )
    assert render("{{ 1.5 }} {{ 2.0 }} {{ 1e6 }} {{ 123456.0 }} {{ 0.00001 }} {{ true }} {{ nil | print }}") == (
        "1.5 2 1e+06 123456 1e-05 true <nil>"
    )
    assert render("{{ .L }} {{ .M }} {{ .B }}", L=["a", 1], M={"y": 1, "x": [2]}, B=False) == "[a 1] map[x:[2] y:1] false"


def test_parentheses_and_chains() -> None:
    assert render("{{ (index .L 0).Name }} {{ (len .L) }} {{ eq (len .L) 1 }}", L=[{"Name": "n"}]) == "n 1 true"


def test_define_template_block() -> None:
    src = '{{ define "item" }}<{{ . }}>{{ end }}{{ range .L }}{{ template "item" . }}{{ end }}'
    assert render(src, L=[1, 2]) == "<1><2>"
    assert render('{{ block "b" .X }}[{{ . }}]{{ end }}', X="x") == "[x]"
    assert render('{{ define "t" }}{{ $ }}{{ end }}{{ template "t" "root" }}') == "root"
    with pytest.raises(InvalidRequest, match="template error:.*no such template"):
        render('{{ template "missing" }}')


def test_python_methods_are_not_reachable() -> None:
    class Obj:
        Name = "visible"

        def Method(self) -> str:
            return "called"

    assert render("{{ .O.Name }}|{{ .O.Method }}|{{ .O.__class__ }}|{{ .S.upper }}", O=Obj(), S="s") == "visible|||"


@pytest.mark.parametrize(
    "source",
    [
        "{{ if }}",
        "{{ foo }}",
        "{{ end }}",
        "{{ if .A }}open",
        "{{ range .L }}{{ else }}{{ else }}{{ end }}",
        "{{ $x }}",
        "{{ .A",
        "{{ break }}",
        '{{ "unterminated }}',
        "{{ .A | 3 }}",
        "{{ ( .A }}",
        "{{ /* c */ }}",
        "{{/* unclosed }}",
        "{{ 3x }}",
        "{{ $a, $b := .L }}",
        "{{ # }}",
        "{{ }}",
    ],
)
def test_syntax_errors(source: str) -> None:
    with pytest.raises(InvalidRequest, match="^template error: "):
        GoTemplate(source)


@pytest.mark.parametrize(
    "source",
    [
        "{{ index .L 5 }}",
        "{{ .A 1 }}",
        "{{ len 3 }}",
        "{{ lt 1 \"a\" }}",
        "{{ range true }}{{ end }}",
        "{{ not }}",
        "{{ call .A }}",
    ],
)
def test_execution_errors(source: str) -> None:
    with pytest.raises(InvalidRequest, match="^template error: "):
        render(source, L=[1], A="a")
